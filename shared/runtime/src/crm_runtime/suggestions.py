""" "Did you mean ...": the known values closest to one a row names, for rejections that say
what the row could have meant (a product spelled differently, an unknown stage)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

_QUOTED = re.compile(r"'([^']*)'")


def closest(value: str, known: Iterable[str], *, limit: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``limit`` known values most like ``value``, best first; case and surrounding
    blanks do not count against a match, but the known values are returned as spelled."""
    spelled: dict[str, str] = {}
    for candidate in known:
        spelled.setdefault(candidate.strip().casefold(), candidate)
    matches = difflib.get_close_matches(value.strip().casefold(), list(spelled), n=limit, cutoff=cutoff)
    return [spelled[match] for match in matches]


def did_you_mean(value: str, known: Iterable[str]) -> str:
    """``"; did you mean 'a' or 'b'?"`` or ``""`` when nothing is close."""
    matches = closest(value, known)
    if not matches:
        return ""
    quoted = [f"'{match}'" for match in matches]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"; did you mean {listed}?"


def unknown_reason(what: str, value: str, known: Iterable[str]) -> str:
    """The reason of a rejected reference: ``unknown account 'Acme Ltd'; did you mean 'Acme Ltd.'?``"""
    return f"unknown {what} {value!r}{did_you_mean(value, known)}"


def expected_values(expected: str) -> list[str]:
    """The choices pydantic lists in a literal or enum error (``"'a', 'b' or 'c'"``)."""
    return _QUOTED.findall(expected)
