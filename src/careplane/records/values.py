"""FHIR values as search sees them: folded strings, date ranges, parsed references.

The same functions serve both sides of a search: the indexer turns a resource's values into
index rows with them, and the query parser turns a search value into what it is compared with,
so that "2021-03" in a query and "2021-03-04T10:00:00+01:00" in a resource meet on the same
ranges. FHIR compares dates as intervals (a value written to the day covers that whole day),
and strings without case or accents, which these functions make explicit.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache

__all__ = [
    "DATE_MAX",
    "DATE_MIN",
    "DateRange",
    "Ref",
    "cut",
    "date_range",
    "fold",
    "format_instant",
    "parse_reference",
]

DATE_MIN = datetime(1, 1, 1, tzinfo=UTC)
DATE_MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

_INDEXED = 255
_SPACES = re.compile(r"\s+")
# Letters that Unicode does not decompose into a base letter and an accent.
_LETTERS = str.maketrans({"ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "þ": "th",
                          "ð": "d", "\u0131": "i", "ŧ": "t", "ħ": "h"})
_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


def cut(value: str) -> str:
    """Trim to what an indexed column holds."""
    return value[:_INDEXED]


@lru_cache(maxsize=65536)
def fold(value: str) -> str:
    """Case- and accent-insensitive form used by string search ("Zoë" finds "zoe").

    Cached: the same names, displays and codes recur across a population's resources.
    """
    if value.isascii():
        return cut(_SPACES.sub(" ", value.lower()).strip())
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return cut(_SPACES.sub(" ", stripped.casefold().translate(_LETTERS)).strip())


@dataclass(frozen=True, slots=True)
class DateRange:
    """A half-open interval [low, high) in UTC: what a FHIR date, dateTime or Period covers."""

    low: datetime
    high: datetime


def _add_months(moment: datetime, months: int) -> datetime:
    total = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(total, 12)
    if year > 9999:
        return DATE_MAX
    return moment.replace(year=year, month=month + 1)


def date_range(text: str) -> DateRange:
    """The interval a FHIR date/dateTime/instant string covers, by its precision.

    "2021" covers the year, "2021-03-04" the day, "2021-03-04T10:00:00.5Z" a tenth of a
    second. A value without a zone is taken as UTC. Raises ValueError for anything that is not
    a real date ("2021-02-30", "2021-13", "yesterday").
    """
    m = _DATE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a FHIR date, dateTime or instant")
    year = int(m["y"])
    month = int(m["m"] or 1)
    day = int(m["d"] or 1)
    hour = int(m["H"] or 0)
    minute = int(m["M"] or 0)
    second = int(m["S"] or 0)
    frac = m["f"] or ""
    micro = int((frac + "000000")[:6]) if frac else 0
    zone: timezone = UTC
    if m["tz"] and m["tz"] != "Z":
        sign = 1 if m["tz"][0] == "+" else -1
        hh, mm = int(m["tz"][1:3]), int(m["tz"][4:6])
        if hh > 14 or mm > 59:
            raise ValueError(f"{text!r} has an impossible time-zone offset")
        zone = timezone(sign * timedelta(hours=hh, minutes=mm))
    if year < 1:
        raise ValueError(f"{text!r} has year 0")
    try:
        start = datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a real date: {exc}") from None
    try:
        if m["f"]:
            end = start + timedelta(microseconds=max(1, 10 ** (6 - min(len(frac), 6))))
        elif m["S"]:
            end = start + timedelta(seconds=1)
        elif m["M"]:
            end = start + timedelta(minutes=1)
        elif m["d"]:
            end = start + timedelta(days=1)
        elif m["m"]:
            end = _add_months(start, 1)
        else:
            end = start.replace(year=year + 1)
        high = end.astimezone(UTC)
    except (OverflowError, ValueError):  # the interval runs past the last representable day
        high = DATE_MAX
    try:
        low = start.astimezone(UTC)
    except OverflowError:
        low = DATE_MIN
    return DateRange(low, high)


@lru_cache(maxsize=4096)
def format_instant(moment: datetime) -> str:
    """An instant as FHIR writes it: UTC, milliseconds, a Z.

    Cached: the resources of a transaction share one instant, written several times each.
    """
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Ref:
    """A parsed reference: a local ``Type/id``, or a URL (absolute, canonical, urn)."""

    type: str | None
    id: str | None
    url: str | None


@lru_cache(maxsize=65536)
def parse_reference(text: str) -> Ref | None:
    """Split a reference string the way search indexes and matches it.

    ``Patient/1`` and ``Patient/1/_history/2`` are local (the version is dropped: a reference
    search finds the resource, not one of its versions). An absolute URL keeps its text and,
    when it ends in ``Type/id``, that pair too, so ``_include`` can follow it when it points
    here. Canonical URLs lose their ``|version``. ``#contained`` references are not indexed.
    Cached: a patient's record names the same patient, encounter and practitioners many times.
    """
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    if "://" in text or text.startswith("urn:"):
        bare = text.split("|", 1)[0]
        path = bare.split("/_history/", 1)[0].rstrip("/").split("/")
        if len(path) >= 2 and _TYPE.fullmatch(path[-2]) and _ID.fullmatch(path[-1]):
            return Ref(path[-2], path[-1], cut(bare))
        return Ref(None, None, cut(bare))
    parts = text.split("/_history/", 1)[0].split("/")
    if len(parts) == 2 and _TYPE.fullmatch(parts[0]) and _ID.fullmatch(parts[1]):
        return Ref(parts[0], parts[1], None)
    return None
