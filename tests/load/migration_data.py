"""A CRM export to migrate, generated deterministically from a seed: the catalogue (products,
sales teams, a second pipeline) as request bodies, and leads, accounts, contacts and
opportunities as import rows (``POST /imports/<object>``), with the shapes real exports have:
parent accounts sometimes listed after their subsidiaries, contacts with roles at their
account, deals with no account, line items naming a product by id or by name, and full stage
histories, many closed won or lost (with a reason) over the past years.

Rows are produced one at a time and ``write_ndjson`` streams them to a file, so a file of
100,000 rows never sits whole in memory; each object kind has its own random stream, so the
same seed gives the same rows whatever else is generated.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import orjson
from crm_opportunities.domain import DEFAULT_LOSS_REASONS, DEFAULT_PIPELINE_ID

Row = dict[str, Any]
Outcome = Literal["open", "won", "lost"]

# Histories end before this fixed day, so the rows do not depend on when they are generated.
AS_OF = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
HISTORY_DAYS = 4 * 365
SOURCE_SYSTEM = "legacy-crm"

# (stage id, kind) in pipeline order: the default pipeline the opportunities service seeds,
# and the renewals pipeline the setup phase defines.
DEFAULT_STAGES: tuple[tuple[str, str], ...] = (
    ("prospecting", "open"),
    ("qualification", "open"),
    ("proposal", "open"),
    ("negotiation", "open"),
    ("closed_won", "closed_won"),
    ("closed_lost", "closed_lost"),
)
RENEWALS_PIPELINE_ID = "renewals"
RENEWALS_PIPELINE: Row = {
    "id": RENEWALS_PIPELINE_ID,
    "name": "Renewals",
    "stages": [
        {
            "id": "renewal_due",
            "name": "Renewal due",
            "kind": "open",
            "probability": 60,
            "forecast_category": "pipeline",
        },
        {
            "id": "renewal_quoted",
            "name": "Quoted",
            "kind": "open",
            "probability": 80,
            "forecast_category": "commit",
        },
        {
            "id": "renewed",
            "name": "Renewed",
            "kind": "closed_won",
            "probability": 100,
            "forecast_category": "closed",
        },
        {
            "id": "churned",
            "name": "Churned",
            "kind": "closed_lost",
            "probability": 0,
            "forecast_category": "omitted",
        },
    ],
}
STAGES_OF: dict[str, tuple[tuple[str, str], ...]] = {
    DEFAULT_PIPELINE_ID: DEFAULT_STAGES,
    RENEWALS_PIPELINE_ID: tuple((stage["id"], stage["kind"]) for stage in RENEWALS_PIPELINE["stages"]),
}
OUTCOME_OF_KIND: dict[str, Outcome] = {"open": "open", "closed_won": "won", "closed_lost": "lost"}

INDUSTRIES = ("Software", "Manufacturing", "Retail", "Logistics", "Finance", "Healthcare", "Energy")
COUNTRIES = ("DE", "GB", "FR", "NL", "HU", "US", "ES", "IT", "PL", "SE")
REGIONS = ("DACH", "UK & Ireland", "France", "Benelux", "CEE", "North America")
LEAD_SOURCES = ("web", "organic_search", "paid_search", "social", "referral", "partner", "event", "email")
ROLES = ("Economic Buyer", "Technical Evaluator", "Champion", "Procurement", "End User")
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances", "Tim")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Allen")
CURRENCIES = (("EUR", 70), ("USD", 20), ("GBP", 10))


@dataclass(frozen=True)
class MigrationShape:
    """How much of each object the export holds, and which row fields it uses."""

    leads: int
    opportunities: int
    accounts: int
    contacts: int
    products: int = 40
    sales_teams: int = 6
    owners: int = 30
    seed: int = 11
    line_items: bool = True  # line items and sales teams on opportunity rows
    accountless_share: float = 0.05  # deals with no account, as real exports hold

    @classmethod
    def of(cls, leads: int, opportunities: int, **options: Any) -> MigrationShape:
        """An export with an account per four deals (at least 10) and two contacts per account."""
        accounts = options.pop("accounts", None) or max(10, opportunities // 4)
        contacts = options.pop("contacts", None) or 2 * accounts
        return cls(leads=leads, opportunities=opportunities, accounts=accounts, contacts=contacts, **options)

    def random(self, kind: str) -> random.Random:
        return random.Random(f"{self.seed}:{kind}")


def product_id(n: int) -> str:
    return f"prod-{n:03d}"


def product_name(n: int) -> str:
    family = ("Core", "Analytics", "Connect", "Vault", "Flow")[n % 5]
    edition = ("Starter", "Team", "Business", "Enterprise")[n // 5 % 4]
    return f"{family} {edition} {n}"


def products(shape: MigrationShape) -> list[Row]:
    """``POST /products`` bodies: the catalogue the opportunities' line items name."""
    rng = shape.random("products")
    return [
        {
            "id": product_id(n),
            "sku": f"SKU-{n:04d}",
            "name": product_name(n),
            "list_price": f"{rng.randrange(50, 20_000)}.00",
            "currency": "EUR",
        }
        for n in range(1, shape.products + 1)
    ]


def team_id(n: int) -> str:
    return f"team-{n:02d}"


def owner_id(n: int) -> str:
    return f"user-{n:03d}"


def sales_teams(shape: MigrationShape) -> list[Row]:
    """``POST /sales-teams`` bodies; owner k sells in team k mod teams."""
    return [
        {
            "id": team_id(n),
            "name": f"{REGIONS[n % len(REGIONS)]} sales {n}",
            "manager_id": owner_id(n),
            "region": REGIONS[n % len(REGIONS)],
        }
        for n in range(shape.sales_teams)
    ]


def _moment(rng: random.Random, days_back: int) -> datetime:
    return AS_OF - timedelta(days=rng.uniform(0, days_back))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def lead_external_id(n: int) -> str:
    return f"LEAD-{n:07d}"


def lead_rows(shape: MigrationShape) -> Iterator[Row]:
    """``lead.captured`` payloads as import rows: each a different person; about ten leads per
    company (colleagues, not duplicates)."""
    rng = shape.random("leads")
    for n in range(1, shape.leads + 1):
        company = n // 10
        first, last = FIRST_NAMES[n % len(FIRST_NAMES)], LAST_NAMES[n // 10 % len(LAST_NAMES)]
        yield {
            "external_id": lead_external_id(n),
            "captured_at": _iso(_moment(rng, HISTORY_DAYS)),
            "lead_source": rng.choice(LEAD_SOURCES),
            "person": {
                "first_name": first,
                "last_name": f"{last}{n}",
                "email": f"{first.lower()}.{last.lower()}{n}@lead-company{company}.example",
                "job_title": rng.choice(("CTO", "Head of Sales", "Analyst", "Office Manager", "CFO")),
            },
            "company": {
                "name": f"Lead Company {company}",
                "website": f"https://lead-company{company}.example",
                "industry": rng.choice(INDUSTRIES),
                "size": rng.randrange(5, 5000),
                "country": rng.choice(COUNTRIES),
            },
        }


def account_external_id(n: int) -> str:
    return f"ACC-{n:06d}"


def account_rows(shape: MigrationShape) -> Iterator[Row]:
    """Accounts; every tenth heads a group, and a third of the others belong to a group whose
    head may come later in the file (exports are not sorted parents first)."""
    rng = shape.random("accounts")
    heads = list(range(1, shape.accounts + 1, 10))
    for n in range(1, shape.accounts + 1):
        row: Row = {
            "external_id": account_external_id(n),
            "name": f"Account {n} {rng.choice(('GmbH', 'Ltd', 'SA', 'BV', 'Kft', 'Inc'))}",
            "industry": rng.choice(INDUSTRIES),
            "employees": rng.randrange(5, 50_000),
            "annual_revenue": f"{rng.randrange(100_000, 900_000_000)}.00",
            "website": f"https://www.account{n}.example",
            "country": rng.choice(COUNTRIES),
            "owner_id": owner_id(rng.randrange(shape.owners)),
            "created_at": _iso(_moment(rng, HISTORY_DAYS + 365)),
        }
        if n % 10 != 1 and rng.random() < 1 / 3:
            row["parent_external_id"] = account_external_id(rng.choice(heads))
        yield row


def contact_rows(shape: MigrationShape) -> Iterator[Row]:
    """Contacts spread over the accounts, each with a role there; economic buyers decide."""
    rng = shape.random("contacts")
    for n in range(1, shape.contacts + 1):
        account = 1 + (n - 1) % shape.accounts
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        role = rng.choice(ROLES)
        yield {
            "external_id": f"CON-{n:07d}",
            "first_name": first,
            "last_name": last,
            "email": f"{first.lower()}.{last.lower()}.{n}@account{account}.example",
            "job_title": rng.choice(("CEO", "CTO", "Head of IT", "Buyer", "Engineer")),
            "account_external_id": account_external_id(account),
            "role": role,
            "decision_maker": role == "Economic Buyer",
            "created_at": _iso(_moment(rng, HISTORY_DAYS)),
        }


def _history(
    rng: random.Random, stages: tuple[tuple[str, str], ...], outcome: Outcome
) -> list[tuple[str, timedelta]]:
    """The stages a deal went through, with the time spent before entering each."""
    opens = [stage for stage, kind in stages if kind == "open"]
    won = next(stage for stage, kind in stages if kind == "closed_won")
    lost = next(stage for stage, kind in stages if kind == "closed_lost")
    reached = len(opens) if outcome == "won" else rng.randrange(1, len(opens) + 1)
    path = opens[:reached] + ([won] if outcome == "won" else [lost] if outcome == "lost" else [])
    return [(stage, timedelta(days=0 if i == 0 else rng.uniform(1, 45))) for i, stage in enumerate(path)]


def opportunity_rows(shape: MigrationShape) -> Iterator[Row]:
    """Deals with their whole stage history: about 35 % won, 30 % lost (with a reason), the
    rest open; one in seven in the renewals pipeline; amounts are their line items' total."""
    rng = shape.random("opportunities")
    for n in range(1, shape.opportunities + 1):
        pipeline = RENEWALS_PIPELINE_ID if rng.random() < 1 / 7 else DEFAULT_PIPELINE_ID
        draw = rng.random()
        outcome: Outcome = "won" if draw < 0.35 else "lost" if draw < 0.65 else "open"
        steps = _history(rng, STAGES_OF[pipeline], outcome)
        span = sum((wait for _, wait in steps), timedelta())
        # Open deals are recent; closed ones anywhere in the past years.
        back = timedelta(days=rng.uniform(1, 120 if outcome == "open" else HISTORY_DAYS)) + span
        created = AS_OF - back
        history, at = [], created
        for stage, wait in steps:
            at += wait
            history.append({"stage_id": stage, "entered_at": _iso(at)})
        lines = [
            {
                "n": rng.randrange(1, shape.products + 1),
                "quantity": rng.randrange(1, 50),
                "price": rng.randrange(20, 5000),
            }
            for _ in range(rng.randrange(1, 4))
        ]
        owner = rng.randrange(shape.owners)
        currency = _currency(rng)
        account = rng.randrange(1, shape.accounts + 1)
        accountless = rng.random() < shape.accountless_share
        row: Row = {
            "external_id": f"OPP-{n:07d}",
            "name": f"Deal {n}",
            "owner_id": owner_id(owner),
            "pipeline_id": pipeline,
            "stage_id": history[-1]["stage_id"],
            "amount": str(sum(Decimal(line["quantity"] * line["price"]) for line in lines)) + ".00",
            "currency": currency,
            "lead_source": rng.choice(LEAD_SOURCES),
            "created_at": history[0]["entered_at"],
            "stage_history": history,
        }
        if not accountless:
            row["account_external_id"] = account_external_id(account)
        if outcome == "open":
            row["expected_close_date"] = (AS_OF.date() + timedelta(days=rng.randrange(7, 180))).isoformat()
        else:
            row["closed_at"] = history[-1]["entered_at"]
            row["expected_close_date"] = date.fromisoformat(history[-1]["entered_at"][:10]).isoformat()
        if outcome == "lost":
            row["loss_reason"] = rng.choice(DEFAULT_LOSS_REASONS)
        if shape.line_items:
            row["sales_team_id"] = team_id(owner % shape.sales_teams)
        # The catalogue is priced in EUR: deals in other currencies carry their amount alone
        # (an export whose line items disagree with the catalogue's currency is rejected).
        if shape.line_items and currency == "EUR":
            row["line_items"] = [
                {
                    # Exports name products by id or by name; both resolve to the catalogue.
                    "product": product_id(line["n"]) if line["n"] % 2 else product_name(line["n"]),
                    "quantity": line["quantity"],
                    "unit_price": f"{line['price']}.00",
                }
                for line in lines
            ]
        yield row


def _currency(rng: random.Random) -> str:
    return rng.choices([code for code, _ in CURRENCIES], weights=[w for _, w in CURRENCIES])[0]


def outcome_of(row: Row) -> Outcome:
    """Open, won or lost, as the opportunity row's current stage says."""
    kinds = dict(STAGES_OF[row.get("pipeline_id", DEFAULT_PIPELINE_ID)])
    return OUTCOME_OF_KIND[kinds[row["stage_id"]]]


def write_ndjson(path: Path, rows: Iterable[Row]) -> int:
    """Stream ``rows`` to ``path`` as NDJSON, one line each; the number of rows written."""
    count = 0
    with path.open("wb") as out:
        for row in rows:
            out.write(orjson.dumps(row) + b"\n")
            count += 1
    return count
