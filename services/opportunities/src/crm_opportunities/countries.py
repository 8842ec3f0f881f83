"""Countries as exports write them: an ISO 3166-1 code (``DE``, ``DEU``) or an English name
(``Germany``, ``Federal Republic of Germany``), folded to the alpha-2 code the accounts keep.
The standard's names come from pycountry (the ISO 3166 database, kept up to date upstream);
the few everyday English names the standard does not use are added here."""

from __future__ import annotations

from functools import cache

import pycountry
from crm_runtime.suggestions import did_you_mean

# Everyday names that ISO 3166 spells otherwise (or not at all), as CRM exports hold them.
EVERYDAY_NAMES = {
    "uk": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "russia": "RU",
    "turkey": "TR",
    "ivory coast": "CI",
    "holland": "NL",
    "the netherlands": "NL",
    "macedonia": "MK",
    "swaziland": "SZ",
    "cape verde": "CV",
    "burma": "MM",
    "vatican": "VA",
    "vatican city": "VA",
    "palestine": "PS",
    "brunei": "BN",
    "micronesia": "FM",
    "dr congo": "CD",
    "democratic republic of the congo": "CD",
    "east timor": "TL",
    "czech": "CZ",
    "uae": "AE",
    "macau": "MO",
    "usa": "US",
    "u.s.": "US",
    "u.s.a.": "US",
    "america": "US",
}


class UnknownCountry(ValueError):
    """Neither an ISO 3166-1 code nor a country's name; says which names are close."""


def country_code(value: str) -> str:
    """The alpha-2 code of ``value`` (a code or an English name, any case)."""
    text = " ".join(value.split())
    if not text:
        raise UnknownCountry("a country's ISO 3166-1 code or English name is expected")
    code = EVERYDAY_NAMES.get(text.casefold())
    if code is not None:
        return code
    if not text.isdigit():  # numeric codes (276) are not how exports name countries
        try:
            return str(pycountry.countries.lookup(text).alpha_2)
        except LookupError:
            pass
    raise UnknownCountry(
        f"unknown country {text!r}: give an ISO 3166-1 code (e.g. DE) or an English name"
        + did_you_mean(text, _known_names())
    )


@cache
def _known_names() -> list[str]:
    names: list[str] = []
    for country in pycountry.countries:
        names.append(country.name)
        for extra in ("common_name", "official_name"):
            name = getattr(country, extra, None)
            if name:
                names.append(str(name))
    names.extend(name.title() if len(name) > 3 else name.upper() for name in EVERYDAY_NAMES)
    return names
