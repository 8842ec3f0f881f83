"""How the migration benchmark sums its phases and what it waits for reporting to show."""

from __future__ import annotations

from bench_migration import expected_figures
from migration_data import MigrationShape, opportunity_rows, outcome_of
from migration_probe import Longest, Usage
from migration_report import Phase, end_to_end


def test_end_to_end_counts_import_rows_from_first_upload_to_reporting_done_without_setup() -> None:
    phases = [
        Phase(
            "setup",
            records=47,
            seconds=5.0,
            events=1,
            usage=Usage({"opportunities": 9.0}, {"opportunities": 300}),
        ),
        Phase("leads", records=500, seconds=1.0, events=500, usage=Usage({"leads": 1.0}, {"leads": 90})),
        Phase(
            "accounts",
            records=100,
            rejected=3,
            seconds=2.0,
            events=97,
            usage=Usage({"leads": 0.5, "opportunities": 2.0}, {"leads": 80, "opportunities": 85}),
            longest=Longest(1.5, "POST /imports/accounts"),
        ),
        Phase("reporting", seconds=4.0, usage=Usage({"reporting": 3.0}, {"reporting": 120})),
    ]
    total = end_to_end(phases)
    assert (total.records, total.rejected, total.seconds, total.events) == (600, 3, 7.0, 597)
    assert total.usage.cpu == {"leads": 1.5, "opportunities": 2.0, "reporting": 3.0}
    assert total.usage.peak_rss == {"leads": 90, "opportunities": 85, "reporting": 120}
    assert total.longest == Longest(1.5, "POST /imports/accounts")


def test_reporting_must_show_the_imported_rows_and_not_the_rejected_ones() -> None:
    shape = MigrationShape.of(leads=40, opportunities=60)
    rows = list(opportunity_rows(shape))
    rejected = {row["external_id"] for row in rows[:7]}
    done = {
        "leads": Phase("leads", records=40, rejected=2),
        "opportunities": Phase("opportunities", records=60, rejected=7, rejected_ids=rejected),
    }
    kept = [outcome_of(row) for row in rows[7:]]
    assert expected_figures(shape, done) == {
        "funnel: leads captured": 38,
        "win/loss: opportunities created": 53,
        "win/loss: won": kept.count("won"),
        "win/loss: lost": kept.count("lost"),
        "pipeline: open opportunities": kept.count("open"),
    }
    assert expected_figures(shape, {"leads": done["leads"]}) == {"funnel: leads captured": 38}
