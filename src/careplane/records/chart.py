"""The patient list and the patient chart, as the web pages show them.

These functions read through the same FHIR search and read services as the API (so every
page view is one authorised, audited access per resource kind), and turn FHIR resources into
the plain rows a clinician scans: problems, medicines, allergies, encounters, and each vital
sign or lab as a series over time. No page queries the database on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from careplane.records import store
from careplane.records.search import run_search
from careplane.records.search_params import parse_search
from careplane.security import Principal

__all__ = ["Chart", "PatientRow", "Point", "Row", "Series", "patient_chart", "patient_list"]

# A blood pressure panel is shown as its systolic and diastolic components.
_PANELS = frozenset({"85354-9", "55284-4"})
CHART_LIMIT = 1000


@dataclass(frozen=True)
class PatientRow:
    id: str
    name: str
    gender: str
    birth_date: str
    age: int | None
    mrn: str
    phone: str
    address: str


@dataclass(frozen=True)
class Row:
    """One line of a chart section: what, since/when, its status, and a detail."""

    text: str
    when: str
    status: str
    detail: str = ""


@dataclass(frozen=True)
class Point:
    when: str
    value: float


@dataclass
class Series:
    code: str
    display: str
    unit: str
    category: str
    points: list[Point] = field(default_factory=list)

    @property
    def latest(self) -> Point:
        return self.points[-1]


@dataclass
class Chart:
    patient: PatientRow
    conditions: list[Row]
    medications: list[Row]
    allergies: list[Row]
    encounters: list[Row]
    vitals: list[Series]
    labs: list[Series]
    other_observations: list[Row]


def _concept_text(cc: Any) -> str:
    if not isinstance(cc, dict):
        return ""
    if isinstance(cc.get("text"), str):
        return str(cc["text"])
    for coding in cc.get("coding") or ():
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    return ""


def _code(cc: Any) -> str:
    if isinstance(cc, dict):
        for coding in cc.get("coding") or ():
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return ""


def _age(birth: str, today: date) -> int | None:
    try:
        born = date.fromisoformat(birth[:10]) if len(birth) >= 10 else date(int(birth[:4]), 1, 1)
    except ValueError:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def patient_row(res: dict[str, Any], today: date | None = None) -> PatientRow:
    names = [n for n in res.get("name") or () if isinstance(n, dict)]
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    name = official.get("text") or " ".join(
        [*(official.get("given") or []), official.get("family") or ""]).strip() or "(no name)"
    mrn = next((str(i.get("value")) for i in res.get("identifier") or ()
                if isinstance(i, dict) and i.get("value")), "")
    phone = next((str(t.get("value")) for t in res.get("telecom") or ()
                  if isinstance(t, dict) and t.get("system") == "phone"), "")
    addr = next((a for a in res.get("address") or () if isinstance(a, dict)), {})
    parts = [*(addr.get("line") or []), *(str(addr[k]) for k in ("city", "postalCode")
                                           if addr.get(k))]
    address = addr.get("text") or ", ".join(str(p) for p in parts)
    birth = str(res.get("birthDate") or "")
    return PatientRow(res.get("id", ""), str(name), str(res.get("gender") or ""), birth,
                      _age(birth, today or date.today()) if birth else None, mrn, phone,
                      str(address))


def patient_list(session: Session, principal: Principal, query: str = "", *,
                 count: int = 25, cursor: str | None = None
                 ) -> tuple[list[PatientRow], int | None, str | None]:
    """Patients whose name starts with ``query`` (or whose identifier is it), a page at a time.

    Returns (rows, total, next cursor).
    """
    query = query.strip()
    pairs: list[tuple[str, str]] = [("_count", str(count)), ("_sort", "family,given")]
    if query:
        key = "identifier" if any(ch.isdigit() for ch in query) else "name"
        pairs.append((key, query.replace(",", "\\,")))
    if cursor:
        pairs.append(("_cursor", cursor))
    result = run_search(session, principal, parse_search("Patient", pairs), consent=True)
    return [patient_row(f.content) for f in result.matches], result.total, result.next_cursor


def _search(session: Session, principal: Principal, rtype: str, pid: str,
            extra: Iterable[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    pairs = [("patient", pid), ("_count", str(CHART_LIMIT)), ("_total", "none"), *extra]
    return [f.content for f in run_search(session, principal, parse_search(rtype, pairs),
                                          consent=True).matches]


def _when(res: dict[str, Any], *keys: str) -> str:
    for key in keys:
        value = res.get(key)
        if isinstance(value, str):
            return value[:10]
        if isinstance(value, dict) and isinstance(value.get("start"), str):
            return str(value["start"])[:10]
    return ""


def _observation_series(observations: list[dict[str, Any]]
                        ) -> tuple[list[Series], list[Series], list[Row]]:
    series: dict[str, Series] = {}
    other: list[Row] = []

    def add(code_cc: Any, quantity: Any, when: str, category: str) -> bool:
        if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), (int, float)):
            return False
        code = _code(code_cc) or _concept_text(code_cc)
        if code not in series:
            series[code] = Series(code, _concept_text(code_cc), str(quantity.get("unit") or
                                                                   quantity.get("code") or ""),
                                  category)
        series[code].points.append(Point(when, float(quantity["value"])))
        return True

    for obs in observations:
        when = str(obs.get("effectiveDateTime") or _when(obs, "effectivePeriod", "issued"))
        category = next((_code(c) for c in obs.get("category") or ()), "")
        if _code(obs.get("code")) in _PANELS or (obs.get("component") and
                                                 "valueQuantity" not in obs):
            for comp in obs.get("component") or ():
                if isinstance(comp, dict):
                    add(comp.get("code"), comp.get("valueQuantity"), when, category)
            continue
        if not add(obs.get("code"), obs.get("valueQuantity"), when, category):
            value = _concept_text(obs.get("valueCodeableConcept")) or str(
                obs.get("valueString") or "")
            other.append(Row(_concept_text(obs.get("code")), when[:10],
                             str(obs.get("status") or ""), value))
    for s in series.values():
        s.points.sort(key=lambda p: p.when)
    ordered = sorted(series.values(), key=lambda s: s.display)
    vitals = [s for s in ordered if s.category == "vital-signs"]
    labs = [s for s in ordered if s.category != "vital-signs"]
    other.sort(key=lambda r: r.when, reverse=True)
    return vitals, labs, other


def patient_chart(session: Session, principal: Principal, pid: str) -> Chart:
    """The chart of one patient (404/410/403 as FhirError, like the API)."""
    patient = store.read(session, principal, "Patient", pid)
    conditions = [Row(_concept_text(c.get("code")), _when(c, "onsetDateTime", "recordedDate",
                                                        "onsetPeriod"),
                      _code(c.get("clinicalStatus")), _concept_text(
                          next(iter(c.get("category") or []), {})))
                  for c in _search(session, principal, "Condition", pid)]
    conditions.sort(key=lambda r: (r.status != "active", r.when), reverse=False)
    medications = [Row(_concept_text(m.get("medicationCodeableConcept")) or "medication",
                       _when(m, "authoredOn"), str(m.get("status") or ""),
                       "; ".join(str(d.get("text")) for d in m.get("dosageInstruction") or ()
                                 if isinstance(d, dict) and d.get("text")))
                   for m in _search(session, principal, "MedicationRequest", pid)]
    medications.sort(key=lambda r: (r.status != "active", r.text))
    allergies = [Row(_concept_text(a.get("code")), _when(a, "recordedDate", "onsetDateTime"),
                     _code(a.get("clinicalStatus")), str(a.get("criticality") or ""))
                 for a in _search(session, principal, "AllergyIntolerance", pid)]
    encounters = [Row(_concept_text(next(iter(e.get("type") or []), {}))
                      or str((e.get("class") or {}).get("display") or "encounter"),
                      _when(e, "period"), str(e.get("status") or ""),
                      _concept_text(next(iter(e.get("reasonCode") or []), {})))
                  for e in _search(session, principal, "Encounter", pid,
                                   [("_sort", "-date")])]
    vitals, labs, other = _observation_series(
        _search(session, principal, "Observation", pid, [("_sort", "date")]))
    return Chart(patient_row(patient.content or {}), conditions, medications, allergies,
                 encounters, vitals, labs, other)
