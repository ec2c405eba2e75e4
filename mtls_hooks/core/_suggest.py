"""The "did you mean" hint every refusal of a misspelt name ends with.

Settings, endpoint options, identity-rule kinds and endpoint names are all refused by name
rather than silently ignored (a misspelt TLS option must not fall back to a weaker default);
this one helper keeps the wording and the matching the same for all of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

__all__ = ["did_you_mean"]


def did_you_mean(
    name: str,
    valid: Iterable[str],
    *,
    spell: Callable[[str], str] = lambda key: key,
    cutoff: float = 0.6,
) -> str:
    """Return ``" (did you mean 'X'?)"`` for the valid name closest to ``name``, or ``""``.

    Args:
        name: the name that was not recognised, as it is compared with ``valid``.
        valid: the names that would have been accepted.
        spell: how to show the match to the user, e.g. as an environment variable.
        cutoff: the :func:`difflib.get_close_matches` similarity a match needs (0 to 1).

    Returns:
        The hint, with a leading space, ready to append to an error message.
    """
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=cutoff)
    return f" (did you mean {spell(close[0])!r}?)" if close else ""
