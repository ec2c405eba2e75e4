"""``make bench``: run every ``bench/bench_*.py`` module in one go and print ONE table.

Each module exposes ``main(argv) -> list[row]`` where a row is a dict with ``bench``,
``case``, ``value``, ``unit`` and optionally ``note``, ``target`` and ``ok``; ratio rows
compare against baselines measured in the same run by that module. A module may define
``QUICK_ARGV`` (the arguments of a short smoke run, used by ``--quick``).

Every module bounds its own run (request counts and wall time); the defaults keep the whole
run within about five minutes on two cores.

Run: ``.venv/bin/python -m bench.run_all [--quick] [--only serving] [--verbose]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

__all__ = ["discover", "format_table", "main"]

Row = dict[str, object]
_COLUMNS = ("bench", "case", "value", "unit", "target", "verdict", "note")


def discover() -> list[str]:
    """The benchmark modules, ``bench.bench_*``, sorted by name."""
    here = Path(__file__).resolve().parent
    return sorted(f"bench.{path.stem}" for path in here.glob("bench_*.py"))


@contextlib.contextmanager
def _kept_affinity() -> Iterator[None]:
    # A module may pin this process to a core; the next module must start unpinned.
    before = os.sched_getaffinity(0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, before)


def _cell(row: Row, column: str) -> str:
    if column == "verdict":
        return "" if "ok" not in row else ("ok" if row["ok"] else "MISSED")
    value = row.get(column, "")
    return "" if value is None else str(value)


def format_table(rows: list[Row]) -> str:
    """Render rows as one aligned text table (notes last, unpadded)."""
    cells = [[_cell(row, column) for column in _COLUMNS] for row in rows]
    header = list(_COLUMNS)
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header) - 1)]

    def line(values: list[str]) -> str:
        padded = [
            value.rjust(width) if index == 2 else value.ljust(width)
            for index, (value, width) in enumerate(zip(values, widths, strict=False))
        ]
        return "  ".join([*padded, values[-1]]).rstrip()

    rule = "  ".join("-" * width for width in widths) + "  ----"
    return "\n".join([line(header), rule, *(line(values) for values in cells)])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print the combined table.

    Returns:
        0 when every module ran (a missed target is reported, not an error), 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny, measures nothing")
    parser.add_argument("--only", action="append", default=[], help="e.g. serving, sender")
    parser.add_argument("--verbose", action="store_true", help="also show each module's output")
    args = parser.parse_args(argv)
    modules = [
        name
        for name in discover()
        if not args.only or any(name.endswith(f"bench_{only}") for only in args.only)
    ]
    rows: list[Row] = []
    failed: list[str] = []
    started = time.monotonic()
    for name in modules:
        module = importlib.import_module(name)
        run = cast("Callable[[list[str]], list[Row]]", module.main)
        quick: list[str] = getattr(module, "QUICK_ARGV", ["--quick"])
        print(f"== {name} {' '.join(quick) if args.quick else ''}".rstrip(), flush=True)
        module_started = time.monotonic()
        # Each module prints its own table too; the combined one below is what counts.
        output = io.StringIO()
        try:
            with _kept_affinity(), contextlib.redirect_stdout(output):
                result: Any = run(list(quick) if args.quick else [])
        except Exception as exc:  # one broken bench must not hide the others' figures
            failed.append(name)
            print(output.getvalue(), end="")
            print(f"!! {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        if args.verbose:
            print(output.getvalue(), end="")
        rows.extend(result)
        print(f"== {name}: {time.monotonic() - module_started:.0f} s", flush=True)
    print()
    print(
        f"mtls-hooks benchmarks{' (--quick: smoke run, not a measurement)' if args.quick else ''}"
    )
    print(format_table(rows))
    print(f"total {time.monotonic() - started:.0f} s; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
