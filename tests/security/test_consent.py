"""FHIR Consent → enforced provisions: mapping, nested exceptions, replacement, warnings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from careplane.platform.db import Database
from careplane.security import Principal, Role
from careplane.security.actions import Action
from careplane.security.consent import (
    ConsentError,
    ConsentProvision,
    deactivate_consent,
    from_fhir,
    rules_for,
)
from careplane.security.identity import create_org, create_user
from careplane.security.policy import Facts, Purpose, Target, decide


def consent(provision: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Consent", "id": "c1", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "patient": {"reference": "Patient/p1"}, **extra}
    if provision is not None:
        body["provision"] = provision
    return body


@pytest.fixture
def orgs(db: Database) -> dict[str, str]:
    with db.session() as session:
        a = create_org(session, "org-a", "A")
        b = create_org(session, "org-b", "B")
        create_user(session, "dr-b", "password-dr-b1", org=b, roles=[Role.clinician])
        return {"a": a.id, "b": b.id}


def _who(org: str, *roles: Role, user: str = "u1") -> Principal:
    return Principal(user, "x", org, frozenset(roles or (Role.clinician,)), "t")


def _decide(db: Database, principal: Principal, action: Action, target: Target,
            purpose: str | None = None) -> bool:
    with db.session() as session:
        facts = Facts(consents=rules_for(session, target.org_id, target.patient_id or ""))
    return decide(principal, action, target, purpose=purpose, facts=facts).allowed


def test_permit_with_nested_deny_for_research(db: Database, orgs: dict[str, str]) -> None:
    with db.session() as session:
        directive = from_fhir(session, orgs["a"], consent({
            "type": "permit", "provision": [{"type": "deny",
                                             "purpose": [{"code": "HRESCH"}]}]}))
        assert directive.source_ref == "Consent/c1" and directive.warnings == []
    target = Target("records:Observation", orgs["a"], patient_id="p1")
    assert _decide(db, _who(orgs["a"]), Action.read, target)
    assert not _decide(db, _who(orgs["a"]), Action.read, target, Purpose.research)


def test_deny_all_except_one_organisation(db: Database, orgs: dict[str, str]) -> None:
    with db.session() as session:
        from_fhir(session, orgs["a"], consent({
            "type": "deny", "provision": [{
                "type": "permit", "actor": [{"reference": {"reference": "Organization/org-b"}}],
                "action": [{"coding": [{"code": "access"}]}]}]}))
    target = Target("records:Observation", orgs["a"], patient_id="p1")
    assert not _decide(db, _who(orgs["a"]), Action.read, target)  # even the home org
    assert _decide(db, _who(orgs["b"]), Action.read, target)  # permitted by the patient
    assert not _decide(db, _who(orgs["b"]), Action.update, target)


def test_classes_labels_and_user_actors(db: Database, orgs: dict[str, str]) -> None:
    with db.session() as session:
        directive = from_fhir(session, orgs["a"], consent({
            "type": "permit", "provision": [{
                "type": "deny",
                "actor": [{"reference": {"identifier": {"system": "urn:careplane:user",
                                                        "value": "dr-b"}}}],
                "class": [{"system": "http://hl7.org/fhir/resource-types",
                           "code": "Observation"},
                          {"system": "urn:careplane:kind", "code": "imaging:*"}],
                "securityLabel": [{"code": "PSY"}]}]}))
        rows = session.scalars(select(ConsentProvision).where(
            ConsentProvision.consent_id == directive.id)).all()
        nested = next(r for r in rows if r.depth == 1)
        assert nested.data_classes == ["imaging:*", "label:PSY", "records:Observation"]
        assert len(nested.actor_user_ids) == 1


def test_unknown_actor_in_a_deny_fails_closed(db: Database, orgs: dict[str, str]) -> None:
    with db.session() as session:
        directive = from_fhir(session, orgs["a"], consent({
            "type": "permit", "provision": [{
                "type": "deny", "actor": [{"reference": {"reference": "Practitioner/xyz"}}]}]}))
        assert any("applies to everyone" in w for w in directive.warnings)
    target = Target("records:Observation", orgs["a"], patient_id="p1")
    assert not _decide(db, _who(orgs["a"]), Action.read, target)


def test_new_version_replaces_and_withdrawal_lifts(db: Database, orgs: dict[str, str]) -> None:
    target = Target("records:Observation", orgs["a"], patient_id="p1")
    with db.session() as session:
        first = from_fhir(session, orgs["a"], consent({"type": "deny"}))
    assert not _decide(db, _who(orgs["a"]), Action.read, target)
    with db.session() as session:
        second = from_fhir(session, orgs["a"], consent({"type": "permit"}))
        assert second.id == first.id
    assert _decide(db, _who(orgs["a"]), Action.read, target)
    with db.session() as session:
        from_fhir(session, orgs["a"], consent({"type": "deny"}))
    with db.session() as session:
        assert deactivate_consent(session, first.id, org_id=orgs["a"])
        assert not deactivate_consent(session, first.id, org_id=orgs["b"])
    assert _decide(db, _who(orgs["a"]), Action.read, target)
    with db.session() as session:
        from_fhir(session, orgs["a"], consent({"type": "deny"}, status="inactive"))
        assert rules_for(session, orgs["a"], "p1") == ()


def test_period_and_other_scopes(db: Database, orgs: dict[str, str]) -> None:
    with db.session() as session:
        from_fhir(session, orgs["a"], consent({"type": "deny", "period": {
            "start": "2000-01-01T00:00:00Z", "end": "2001-01-01T00:00:00Z"}}))
        from_fhir(session, orgs["a"], consent({"type": "deny"}, id="c2", scope={
            "coding": [{"code": "treatment"}]}))
    assert _decide(db, _who(orgs["a"]), Action.read,
                   Target("records:Observation", orgs["a"], patient_id="p1"))


@pytest.mark.parametrize(("period", "first", "after"), [
    ({"start": "2015-01-01", "end": "2015-02-01"}, "2015-01-01", "2015-02-02"),
    ({"start": "2015-01", "end": "2015-01"}, "2015-01-01", "2015-02-01"),
    ({"start": "2015", "end": "2015"}, "2015-01-01", "2016-01-01"),
    ({"start": "2015-12", "end": "2015-12"}, "2015-12-01", "2016-01-01"),
])
def test_periods_given_as_dates_cover_the_whole_date(db: Database, orgs: dict[str, str],
                                                     period: dict[str, str], first: str,
                                                     after: str) -> None:
    """FHIR lets a period's ends be plain dates: the deny holds through the end date."""
    with db.session() as session:
        directive = from_fhir(session, orgs["a"], consent({"type": "deny", "period": period}))
        rules = rules_for(session, orgs["a"], "p1")
    assert directive.warnings == [] and len(rules) == 1
    assert rules[0].start == datetime.fromisoformat(f"{first}T00:00:00+00:00")
    assert rules[0].end == datetime.fromisoformat(f"{after}T00:00:00+00:00")  # exclusive


@pytest.mark.parametrize(("resource", "message"), [
    ({"resourceType": "Patient"}, "resourceType"),
    (consent({"type": "deny"}, patient={"reference": "Group/1"}), "Patient"),
    (consent({"type": "deny"}, status="bogus"), "status"),
    (consent({"type": "maybe"}), "permit"),
    (consent(None), "needs a provision"),
    (consent({"type": "deny", "period": {"start": "yesterday"}}), "dateTime"),
    (consent({"type": "deny", "period": {"start": "2020-01-01T00:00:00"}}), "time zone"),
    (consent({"type": "deny", "period": {"start": "2020-02-30"}}), "not a date"),
    (consent({"type": "deny", "provision": ["x"]}), "must be an object"),
])
def test_bad_consents_are_refused(db: Database, orgs: dict[str, str],
                                  resource: dict[str, Any], message: str) -> None:
    with db.session() as session, pytest.raises(ConsentError, match=message):
        from_fhir(session, orgs["a"], resource)
