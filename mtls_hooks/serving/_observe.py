"""What the serving layer exposes to operators: the metrics listener and the expiry alarm.

* One process (``workers = 1``): metrics are recorded in memory and the listener runs in a
  thread of that process.
* Several workers: the supervisor makes a fresh directory, exports it as
  ``PROMETHEUS_MULTIPROC_DIR`` before spawning (prometheus_client's multiprocess mode), and
  serves the sum of the workers' files; each worker records into its own file. The directory
  is removed at shutdown, so a restart never adds yesterday's counts.
* The expiry alarm (:class:`~mtls_hooks.metrics._expiry.ExpiryAlarm`) runs in one process
  only (the single process, or worker 0), so each warning is logged once. It reads the
  configuration in force at each check, so a reload that renewed a certificate silences it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

from mtls_hooks.metrics._expiry import DAY_S, Expiry, ExpiryAlarm, server_expiries
from mtls_hooks.metrics._listener import MetricsListener, multiprocess_registry
from mtls_hooks.metrics._registry import MULTIPROC_ENV, enable_metrics
from mtls_hooks.serving._config import ServerConfig, parse_bind

__all__ = ["expiry_alarm_task", "metrics_listener", "worker_metrics"]


@contextlib.contextmanager
def metrics_listener(config: ServerConfig) -> Iterator[MetricsListener | None]:
    """Serve ``/metrics`` on ``config.metrics_bind`` for the ``with`` block (if set).

    With ``config.workers > 1`` the block's spawned workers inherit
    ``PROMETHEUS_MULTIPROC_DIR`` and the listener sums their files.

    Raises:
        ConfigurationError: the metrics address cannot be bound.
    """
    if config.metrics_bind is None:
        yield None
        return
    host, port = parse_bind(config.metrics_bind)
    if config.workers == 1:
        listener = MetricsListener(host, port, enable_metrics().registry).start()
        try:
            yield listener
        finally:
            listener.stop()
        return
    directory = tempfile.mkdtemp(prefix="mtls-hooks-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = directory  # inherited by every worker spawned from here
    try:
        listener = MetricsListener(host, port, multiprocess_registry(directory)).start()
        try:
            yield listener
        finally:
            listener.stop()
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


def worker_metrics(config: ServerConfig) -> None:
    """In a spawned worker: record into the supervisor's directory when metrics are on.

    Raises:
        ConfigurationError: prometheus_client was imported in memory mode before this.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if config.metrics_bind is not None and directory:
        enable_metrics(multiprocess_dir=directory)


def _expiries(current: Callable[[], ServerConfig]) -> Callable[[], list[Expiry]]:
    def source() -> list[Expiry]:
        config = current()
        found = server_expiries(
            config.certfile if config.serves_tls else None, config.client_ca, config.crl
        )()
        if config.proxy_ca:
            found += server_expiries(None, config.proxy_ca, (), ca_role="proxy_ca")()
        return found

    return source


def expiry_alarm_task(current: Callable[[], ServerConfig]) -> asyncio.Task[None]:
    """Start the daily expiry check of the configuration ``current()`` returns."""
    config = current()
    alarm = ExpiryAlarm(
        _expiries(current),
        warn_within_s=config.expiry_warn_days * DAY_S,
        error_within_s=config.expiry_error_days * DAY_S,
    )
    return asyncio.get_running_loop().create_task(alarm.run(), name="mtls-hooks-expiry")
