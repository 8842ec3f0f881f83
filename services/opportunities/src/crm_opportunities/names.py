"""How a name another CRM wrote (a product, a stage, a sales team, a loss reason) finds the
record it means here: its id or its name, exactly, or else with case, accents, underscores and
runs of blanks not counting ("  ÉQUIPE  nord " is "Equipe Nord", "No Budget" is "no_budget").
Anything else is unknown, and the rejection says which known values come closest; a name that
two records share is ambiguous."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from crm_runtime.suggestions import did_you_mean

T = TypeVar("T")


def name_key(text: str) -> str:
    """``text`` with case, accents (any combining mark), underscores and runs of blanks
    folded away."""
    decomposed = unicodedata.normalize("NFKD", text.replace("_", " "))
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(bare.casefold().split())


class UnknownName(Exception):
    """The reason a name does not resolve, with what it could have meant."""


class Names(Generic[T]):
    """Records of one kind (``what``: "product") by each of their spellings (id, name)."""

    def __init__(self, what: str, records: Iterable[tuple[T, Sequence[str]]]) -> None:
        self.what = what
        self._exact: dict[str, T] = {}
        self._folded: dict[str, list[T]] = {}
        self._spellings: list[str] = []
        for record, spellings in records:
            for spelling in spellings:
                self._exact.setdefault(spelling, record)
                matches = self._folded.setdefault(name_key(spelling), [])
                if not any(match is record for match in matches):
                    matches.append(record)
                self._spellings.append(spelling)

    def __contains__(self, name: str) -> bool:
        return name in self._exact or len(self._folded.get(name_key(name), ())) == 1

    def resolve(self, name: str) -> T:
        """The record ``name`` means; raises UnknownName saying why not."""
        if name in self._exact:
            return self._exact[name]
        matches = self._folded.get(name_key(name), [])
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise UnknownName(
                f"{self.what} {name!r} matches several; name it by id{did_you_mean(name, self._spellings)}"
            )
        raise UnknownName(f"unknown {self.what} {name!r}{did_you_mean(name, self._spellings)}")
