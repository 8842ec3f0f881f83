"""Counter differences as stored: delta documents, how a merge adds them up, and the ``$inc``
fields it writes. No I/O.

Counters are int64 fields (fast to add up and to decode; Decimal128 decoding dominated read
time). Any sum of amounts the contracts accept must still be exact, and such sums pass int64
quickly: one opportunity of 9,999,999,999,999,999.99 at 100 % weighs about 10^20
ten-thousandths. So:

- a delta value that does not fit int64 travels as its decimal string (``encode_value``);
- the merger writes an increment ``v`` with ``|v| >= HIGH_BASE`` as ``v = q * HIGH_BASE + r``
  (``q`` truncated toward zero): ``$inc`` of ``r`` on the field and of ``q`` on its high part
  ``<field>~hi``. Smaller increments, the common case, touch the field alone, as they always
  did. Readers add the high part back in (``aggregates.flatten``, ``aggregates.joined``).

One merge adds less than ``HIGH_BASE`` to a field, so a field could only overflow after some
9 billion merges, each adding nearly 10^9 to it in the same direction; the high part holds
sums up to about 9.2 x 10^27 (10^23 in a currency, in ten-thousandths).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from bson import Decimal128
from crm_runtime.mongo import Document, from_bson

from .aggregates import HIGH, HIGH_BASE, Number, Tally

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# A delta document stays far below MongoDB's 16 MB limit.
MAX_CHANGES_PER_DELTA = 1000


def encode_value(value: Number) -> Any:
    """A counter difference as BSON carries it: int64 if it fits, else its decimal string."""
    if isinstance(value, Decimal):
        return Decimal128(value)
    return value if INT64_MIN <= value <= INT64_MAX else str(value)


def decode_value(value: Any) -> Number:
    if type(value) is int:  # nearly all of them
        return value
    if isinstance(value, str):
        return int(value)
    decoded: Number = from_bson(value)
    return decoded


def delta_documents(tally: Tally, as_of: dict[str, datetime]) -> list[Document]:
    """The tally as delta documents (split when large): ``[view, counter id, [[path, value],
    ...]]`` per counter document; paths travel as pairs because field names with dots do not
    belong in stored documents. (Deltas written before labels were dropped hold them as a
    third element; the merger reads both.)"""
    entries: list[tuple[str, list[Any]]] = [
        ("counts", [key.view, key.doc_id, [[p, encode_value(v)] for p, v in sorted(fields.items())]])
        for key, fields in tally.counts.items()
    ]
    entries += [
        ("names", [key.view, key.doc_id, sorted([n, t] for n, t in names.items())])
        for key, names in tally.names.items()
    ]
    documents: list[Document] = []
    for start in range(0, max(len(entries), 1), MAX_CHANGES_PER_DELTA):
        chunk = entries[start : start + MAX_CHANGES_PER_DELTA]
        document: Document = {
            "counts": [entry for kind, entry in chunk if kind == "counts"],
            "names": [entry for kind, entry in chunk if kind == "names"],
        }
        # Counter documents it changes: the merger sizes its transactions by them unread.
        document["keys"] = len(chunk)
        if start == 0 and as_of:
            document["as_of"] = as_of
        documents.append(document)
    return documents


@dataclass
class DeltaSum:
    """Deltas added up per counter document: what one merge writes."""

    ids: list[Any] = field(default_factory=list)
    events: int = 0
    counts: dict[tuple[str, str], dict[str, Number]] = field(default_factory=dict)
    names: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    newest: dict[str, datetime] = field(default_factory=dict)

    @property
    def keys(self) -> int:
        return len(self.counts) + len(self.names)

    def add(self, delta: Document) -> None:
        self.ids.append(delta.get("_id"))
        self.events += int(delta.get("events", 0))
        for view, doc_id, *_, pairs in delta.get("counts", ()):
            held = self.counts.setdefault((view, doc_id), {})
            for path, value in pairs:
                held[path] = held.get(path, 0) + decode_value(value)
        for view, doc_id, *_, pairs in delta.get("names", ()):
            kept = self.names.setdefault((view, doc_id), {})
            for name, seen in pairs:
                kept[name] = max(kept.get(name, ""), seen)
        for kind, moment in delta.get("as_of", {}).items():
            self.newest[kind] = max(self.newest.get(kind, moment), moment)


def split(value: int) -> tuple[int, int]:
    """``value`` as ``(high, low)`` with ``value == high * HIGH_BASE + low``, both of its sign
    and ``|low| < HIGH_BASE``."""
    high = abs(value) // HIGH_BASE
    if value < 0:
        high = -high
    return high, value - high * HIGH_BASE


def increments(fields: Mapping[str, Number]) -> dict[str, Any]:
    """The ``$inc`` fields of one counter document's differences (zeros left out): small
    ones on the field itself, large ones split into the field and its high part."""
    result: dict[str, Any] = {}
    for path, value in fields.items():
        if not value:
            continue
        if -HIGH_BASE < value < HIGH_BASE and type(value) is int:  # nearly all of them
            result[path] = value
            continue
        if isinstance(value, Decimal):
            result[path] = Decimal128(value)  # counters of an older version; a rebuild ends them
            continue
        high, low = split(value)
        if low:
            result[path] = low
        if high:
            result[path + HIGH] = high
    return result
