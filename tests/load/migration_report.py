"""The migration benchmark's figures: what each phase measured, the end-to-end sum, and how
they are printed beside the baselines and the figures issue 11 sets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from migration_data import MigrationShape
from migration_probe import RSS_SAMPLE_SECONDS, Longest, Usage

IMPORTS = ("leads", "accounts", "contacts", "opportunities")
# Issue 11's figures to reach.
TARGET_RATE = 500  # records/s end to end
TARGET_RATIO = 0.3  # of the insert_many baseline
TARGET_HELD_SECONDS = 1.0  # longest HTTP request
TARGET_PROGRESS_SECONDS = 1.0  # to an import's first visible progress
TARGET_RSS_MB = 250  # any service's peak
NOT_SERVICES = ("secantusdb", "kafka")


@dataclass
class Phase:
    name: str
    records: int = 0
    rejected: int = 0
    seconds: float = 0.0
    events: int = 0
    usage: Usage = field(default_factory=Usage)
    longest: Longest = field(default_factory=Longest)
    first_progress: float | None = None  # seconds from the upload's start
    mode: str = ""
    rejected_ids: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Baselines:
    stored_docs: int
    insert_seconds: float
    events: int
    event_bytes: float
    kafka_seconds: float

    @property
    def insert_rate(self) -> float:
        return self.stored_docs / self.insert_seconds if self.insert_seconds else 0.0


def end_to_end(phases: list[Phase]) -> Phase:
    """The imports and reporting's catch-up together: first upload to reporting done."""
    total = Phase("end to end")
    for part in (phase for phase in phases if phase.name != "setup"):
        total.records += part.records if part.name in IMPORTS else 0
        total.rejected += part.rejected
        total.seconds += part.seconds
        total.events += part.events
        for name, cpu in part.usage.cpu.items():
            total.usage.cpu[name] = total.usage.cpu.get(name, 0.0) + cpu
        for name, mb in part.usage.peak_rss.items():
            total.usage.peak_rss[name] = max(total.usage.peak_rss.get(name, 0.0), mb)
        if part.longest.seconds > total.longest.seconds:
            total.longest = part.longest
    return total


def _per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds else 0.0


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _phases_table(shown: list[Phase]) -> None:
    print(
        f"\n  {'phase':<14} {'records':>8} {'rejected':>8} {'seconds':>8} {'records/s':>10} "
        f"{'events':>8} {'events/s':>9} {'longest request':<38} {'1st progress':>12}  how"
    )
    for phase in shown:
        longest = f"{phase.longest.seconds:.2f} s {phase.longest.request}" if phase.longest.request else "-"
        progress = f"{phase.first_progress:.2f} s" if phase.first_progress is not None else "-"
        print(
            f"  {phase.name:<14} {phase.records:>8,} {phase.rejected:>8,} {phase.seconds:>8.1f} "
            f"{_per_second(phase.records, phase.seconds):>10,.0f} {phase.events:>8,} "
            f"{_per_second(phase.events, phase.seconds):>9,.0f} {longest[:38]:<38} {progress:>12}  "
            f"{phase.mode}"
        )


def _process_tables(shown: list[Phase], total: Phase, whole_run_peaks: dict[str, float | None]) -> None:
    processes = list(whole_run_peaks)
    header = f"  {'phase':<14} " + " ".join(f"{name:>13}" for name in processes)
    print("\n  CPU seconds (user + system) per 1,000 records of the phase (reporting: of all imported)")
    print(header)
    for phase in shown:
        records = phase.records or total.records
        per = 1000 / records if records else 0.0
        cells = " ".join(f"{phase.usage.cpu.get(name, 0) * per:>13.2f}" for name in processes)
        print(f"  {phase.name:<14} {cells}")
    print(f"\n  peak RSS in MB (VmRSS sampled every {RSS_SAMPLE_SECONDS} s; whole run: VmHWM)")
    print(header)
    for phase in shown:
        print(
            f"  {phase.name:<14} " + " ".join(f"{phase.usage.peak_rss.get(n, 0):>13.0f}" for n in processes)
        )
    print(f"  {'whole run':<14} " + " ".join(f"{whole_run_peaks[n] or 0:>13.0f}" for n in processes))


def _baselines(baselines: Baselines) -> None:
    print("\n  baselines, same run, same servers:")
    print(
        f"  {'insert_many of the stored documents, 1,000 per call':<58} {baselines.insert_rate:>9,.0f} "
        f"docs/s ({baselines.stored_docs:,} in {baselines.insert_seconds:.2f} s)"
    )
    if baselines.kafka_seconds:
        size = f"{baselines.event_bytes:,.0f} bytes avg"
        what = f"the run's {baselines.events:,} events ({size}) produced + consumed"
        rate = _per_second(baselines.events, baselines.kafka_seconds)
        print(f"  {what:<58} {rate:>9,.0f} events/s ({baselines.kafka_seconds:.2f} s)")


def _targets(phases: list[Phase], total: Phase, peaks: dict[str, float | None], baselines: Baselines) -> None:
    rate = _per_second(total.records, total.seconds)
    imports = [phase for phase in phases if phase.name in IMPORTS]
    print("\n  figures to reach (issue 11):")
    print(
        f"  {'end to end, records/s':<58} {rate:>9,.0f}  (>= {TARGET_RATE}: {_verdict(rate >= TARGET_RATE)})"
    )
    if baselines.insert_rate:
        ratio = rate / baselines.insert_rate
        print(
            f"  {'end to end / insert_many baseline':<58} {ratio:>9.3f}x "
            f"(>= {TARGET_RATIO}x: {_verdict(ratio >= TARGET_RATIO)})"
        )
    held = max((phase.longest for phase in imports), key=lambda one: one.seconds, default=Longest())
    print(
        f"  {'longest HTTP request during the imports':<58} {held.seconds:>9.2f}s "
        f"(< {TARGET_HELD_SECONDS} s: {_verdict(held.seconds < TARGET_HELD_SECONDS)}; {held.request})"
    )
    first = [phase.first_progress for phase in imports if phase.first_progress is not None]
    if first:
        print(
            f"  {'slowest first visible progress of an import':<58} {max(first):>9.2f}s "
            f"(< {TARGET_PROGRESS_SECONDS} s: {_verdict(max(first) < TARGET_PROGRESS_SECONDS)})"
        )
    else:
        print(f"  {'first visible progress':<58} {'-':>9}  (no import job showed progress)")
    services = [name for name in peaks if name not in NOT_SERVICES]
    peak = max((peaks[name] or 0.0 for name in services), default=0.0)
    print(
        f"  {'largest service peak RSS':<58} {peak:>9.0f} MB "
        f"(< {TARGET_RSS_MB} MB: {_verdict(peak < TARGET_RSS_MB)})"
    )


def report(
    shape: MigrationShape, phases: list[Phase], whole_run_peaks: dict[str, float | None], baselines: Baselines
) -> None:
    total = end_to_end(phases)
    shown = [*phases, total] if any(phase.name in IMPORTS for phase in phases) else phases
    ran = {phase.name for phase in phases}
    counts = {"leads": shape.leads, "accounts": shape.accounts, "contacts": shape.contacts}
    counts["opportunities"] = shape.opportunities
    imported = ", ".join(f"{counts[kind]:,} {kind}" for kind in IMPORTS if kind in ran) or "nothing imported"
    details = [f"seed {shape.seed}"]
    if "opportunities" in ran:
        items = "with line items and sales teams" if shape.line_items else "no line items or sales teams"
        details.insert(0, f"opportunities {items}, {shape.accountless_share:.0%} without account")
    if "setup" in ran:
        details.insert(0, f"{shape.products} products, {shape.sales_teams} sales teams, 2 pipelines")
    print(f"\nmigration: {imported} ({'; '.join(details)})")
    print(f"services as real processes on Kafka and SecantusDB on loopback; {os.cpu_count()} cores")
    _phases_table(shown)
    _process_tables(shown, total, whole_run_peaks)
    for phase in phases:
        if phase.reasons:
            distinct = list(dict.fromkeys(phase.reasons))
            print(f"\n  {phase.name}: {phase.rejected:,} rejected, e.g. " + " | ".join(distinct[:3]))
    if baselines.stored_docs:
        _baselines(baselines)
    if total.seconds and total.records:
        _targets(phases, total, whole_run_peaks, baselines)
