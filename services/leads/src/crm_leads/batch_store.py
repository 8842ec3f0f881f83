"""The leads a batch of captures can touch, loaded with a few set-based queries and held in
memory while the batch's captures are applied one by one, in order, by the same use case as a
single capture; then stored with one insert and one bulk write.

It answers the use case's reads exactly as the database would inside a transaction that had
already applied the batch's earlier captures: what it holds is each lead as stored (times at
millisecond precision), and a duplicate key is looked up only once every stored lead with that
key is held (loaded up front for the batch's own keys, or on first use for a key found later,
e.g. a survivor's). The version guards stay: each changed lead is written only if it still has
the version it was read at, else the whole batch fails and the consumer applies its events one
at a time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from crm_contracts.events.leads import LeadStatus
from pymongo.asynchronous.client_session import AsyncClientSession

from .domain import MAX_DUPLICATE_LINKS, Lead, MatchKeys, TimedCapture
from .picklists import Picklists
from .repository import ConcurrentModification, LeadRepository, stored_form
from .scoring import ScoringRules

_MATCH_LIMIT = MAX_DUPLICATE_LINKS * 2  # as LeadRepository.find_matches, per key


class BatchLeads:
    """A ``LeadStore`` over one batch's leads (see the module docstring)."""

    def __init__(
        self, repo: LeadRepository, session: AsyncClientSession, rules: ScoringRules, picklists: Picklists
    ) -> None:
        self._repo = repo
        self._session = session
        self._rules = rules
        self._picklists = picklists
        self._held: dict[str, Lead] = {}
        self._missing: set[str] = set()  # ids known not to be stored
        self._read_version: dict[str, int] = {}  # the stored version of each lead read
        self._added: dict[str, None] = {}  # in insertion order
        self._changed: set[str] = set()
        # Which keys every stored lead is held for, and the held leads by key.
        self._emails: set[str] = set()
        self._phones: set[str] = set()
        self._names: set[tuple[str, str]] = set()
        self._by_email: defaultdict[str, set[str]] = defaultdict(set)
        self._by_phone: defaultdict[str, set[str]] = defaultdict(set)
        self._by_name: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        self.queries = 0

    @classmethod
    async def load(
        cls, repo: LeadRepository, session: AsyncClientSession, captures: Sequence[TimedCapture]
    ) -> BatchLeads:
        """Hold what ``captures`` will read: their leads and every lead sharing a key with
        them; then, for the stored ones among them, their survivors and linked duplicates and
        the leads sharing their stored keys. At most two rounds of four queries."""
        rules = await repo.scoring_rules(session)
        picklists = await repo.picklists(session)
        store = cls(repo, session, rules, picklists)
        candidates = [
            Lead.capture(captured, rules, now=captured.captured_at, by="", picklists=picklists)
            for captured in captures
        ]
        await store._hold_ids({candidate.id for candidate in candidates})
        await store._hold_keys(candidate.match_keys for candidate in candidates)
        stored = [store._held[c.id] for c in candidates if c.id in store._held]
        await store._hold_ids(
            {lead.merged_into for lead in stored if lead.merged_into}
            | {link.lead_id for lead in stored for link in lead.possible_duplicates}
        )
        survivors = [store._held[lead.merged_into] for lead in stored if lead.merged_into in store._held]
        await store._hold_keys(lead.match_keys for lead in [*stored, *survivors])
        return store

    @classmethod
    async def holding(
        cls, repo: LeadRepository, session: AsyncClientSession, lead_ids: Iterable[str]
    ) -> BatchLeads:
        """Hold the leads ``lead_ids`` name (one ``$in`` query), for a bulk action on them:
        qualifying, converting or assigning reads and writes only the lead itself. The rules
        are read fresh (not the replica's cached copy) so a request's round trips are constant."""
        rules = await repo.scoring_rules(session, fresh=True)
        store = cls(repo, session, rules, await repo.picklists(session))
        await store._hold_ids(set(lead_ids))
        return store

    # -- the LeadStore protocol ---------------------------------------------------------------
    async def get(self, lead_id: str, session: AsyncClientSession | None = None) -> Lead | None:
        await self._hold_ids({lead_id})
        held = self._held.get(lead_id)
        return held.model_copy(deep=True) if held is not None else None

    async def add(self, lead: Lead, session: AsyncClientSession) -> None:
        if lead.id in self._held:
            raise ConcurrentModification(f"lead {lead.id} was stored concurrently")
        self._missing.discard(lead.id)
        self._hold(stored_form(lead))
        self._added[lead.id] = None

    async def update(self, lead: Lead, expected_version: int, session: AsyncClientSession) -> None:
        held = self._held.get(lead.id)
        if held is None or held.version != expected_version:
            raise ConcurrentModification(f"lead {lead.id} changed since version {expected_version}")
        self._hold(stored_form(lead))
        if lead.id not in self._added:
            self._changed.add(lead.id)

    async def find_matches(self, lead: Lead, session: AsyncClientSession) -> list[Lead]:
        """As ``LeadRepository.find_matches``: per key the first leads by capture time (merged
        ones and ``lead`` itself count towards the limit), then those two left out."""
        keys = lead.match_keys
        await self._hold_keys([keys])
        found: dict[str, Lead] = {}
        for ids in self._ids_by_key(keys):
            first = sorted((self._held[i] for i in ids), key=lambda held: (held.captured_at, held.id))
            for match in first[:_MATCH_LIMIT]:
                if match.id != lead.id and match.id not in found and match.status is not LeadStatus.MERGED:
                    found[match.id] = match.model_copy(deep=True)
        return sorted(found.values(), key=lambda match: (match.captured_at, match.id))[:_MATCH_LIMIT]

    async def scoring_rules(self, session: AsyncClientSession | None = None) -> ScoringRules:
        return self._rules

    async def picklists(self, session: AsyncClientSession | None = None) -> Picklists:
        return self._picklists

    # -- storing ------------------------------------------------------------------------------
    async def save(self) -> None:
        """The batch's new leads in one insert, its changed ones in one guarded bulk write."""
        await self._repo.save_captured(
            [self._held[lead_id] for lead_id in self._added],
            [(self._held[lead_id], self._read_version[lead_id]) for lead_id in sorted(self._changed)],
            self._session,
        )

    # -- holding ------------------------------------------------------------------------------
    def _ids_by_key(self, keys: MatchKeys) -> list[set[str]]:
        # The same key kinds, in the same order, as the repository's lookups.
        found = []
        if keys.email is not None:
            found.append(self._by_email[keys.email])
        if keys.phone is not None:
            found.append(self._by_phone[keys.phone])
        if keys.company_domain is not None and keys.name is not None:
            found.append(self._by_name[(keys.company_domain, keys.name)])
        return found

    def _hold(self, lead: Lead) -> None:
        previous = self._held.get(lead.id)
        if previous is not None:
            self._index(previous, remove=True)
        self._held[lead.id] = lead
        self._index(lead)

    def _index(self, lead: Lead, *, remove: bool = False) -> None:
        # By the stored fields, not ``match_keys``: a merged lead still matches a lookup.
        entries: list[set[str]] = []
        if lead.email_normalised is not None:
            entries.append(self._by_email[lead.email_normalised])
        if lead.phone_key is not None:
            entries.append(self._by_phone[lead.phone_key])
        if lead.company_domain is not None and lead.name_key is not None:
            entries.append(self._by_name[(lead.company_domain, lead.name_key)])
        for ids in entries:
            if remove:
                ids.discard(lead.id)
            else:
                ids.add(lead.id)

    def _take_stored(self, leads: Iterable[Lead]) -> None:
        for lead in leads:
            if lead.id not in self._held and lead.id not in self._added:
                self._read_version[lead.id] = lead.version
                self._hold(lead)

    async def _hold_ids(self, lead_ids: set[str]) -> None:
        wanted = sorted(lead_ids - self._held.keys() - self._missing)
        if not wanted:
            return
        self.queries += 1
        leads = await self._repo.get_many(wanted, self._session)
        self._take_stored(leads)
        self._missing |= set(wanted) - {lead.id for lead in leads}

    async def _hold_keys(self, keys: Iterable[MatchKeys]) -> None:
        emails, phones, names = set(), set(), set()
        for key in keys:
            if key.email is not None:
                emails.add(key.email)
            if key.phone is not None:
                phones.add(key.phone)
            if key.company_domain is not None and key.name is not None:
                names.add((key.company_domain, key.name))
        emails -= self._emails
        phones -= self._phones
        names -= self._names
        if not (emails or phones or names):
            return
        self.queries += 1
        # Stored state from before the batch; a lead the batch already changed stays as held.
        self._take_stored(await self._repo.find_by_match_keys(emails, phones, names, self._session))
        self._emails |= emails
        self._phones |= phones
        self._names |= names
