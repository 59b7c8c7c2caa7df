"""The access decision: roles, scopes, organisations, patients, researchers, grants, consent
and break-the-glass, each checked on its own and in the order of precedence."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from careplane.platform.db import utcnow
from careplane.security import Principal, Role
from careplane.security.policy import (
    AccessDenied,
    Action,
    ConsentRule,
    Facts,
    Grant,
    Purpose,
    Target,
    decide,
    enforce,
)

ORG_A, ORG_B = "org-a", "org-b"


def who(*roles: Role, org: str = ORG_A, **extra: object) -> Principal:
    return Principal(user_id=f"u-{'-'.join(roles)}", username="someone", org_id=org,
                     roles=frozenset(roles), token_id="t", **extra)  # type: ignore[arg-type]


def obs(org: str = ORG_A, patient: str | None = "p1", **extra: object) -> Target:
    return Target("records:Observation", org, id="o1", patient_id=patient,
                  **extra)  # type: ignore[arg-type]


def test_roles_in_own_organisation() -> None:
    assert decide(who(Role.clinician), Action.update, obs()).allowed
    assert decide(who(Role.counsellor), Action.read, obs()).allowed
    assert not decide(who(Role.counsellor), Action.export, obs()).allowed
    assert decide(who(Role.radiologist), Action.create, Target("imaging:study", ORG_A)).allowed
    assert not decide(who(Role.counsellor), Action.read, Target("imaging:study", ORG_A)).allowed
    assert not decide(who(Role.patient), Action.read, Target("jobs:job", ORG_A)).allowed
    refused = decide(who(Role.counsellor), Action.delete, Target("genomics:sample", ORG_A))
    assert not refused.allowed and "counsellor" in refused.reason


def test_other_organisation_is_refused_without_a_grant() -> None:
    decision = decide(who(Role.clinician), Action.read, obs(org=ORG_B))
    assert not decision.allowed and "another organisation" in decision.reason
    with pytest.raises(AccessDenied):
        enforce(who(Role.admin), Action.read, obs(org=ORG_B))


def test_patient_sees_only_own_records() -> None:
    me = who(Role.patient, patient_id="p1")
    assert decide(me, Action.read, obs(patient="p1")).allowed
    assert decide(me, Action.search, obs(patient="p1")).allowed
    assert not decide(me, Action.update, obs(patient="p1")).allowed
    refused = decide(me, Action.read, obs(patient="p2"))
    assert not refused.allowed and "own records" in refused.reason
    assert not decide(me, Action.search, obs(patient=None)).allowed
    assert not decide(who(Role.patient), Action.read, obs(patient="p1")).allowed  # unlinked
    assert not decide(me, Action.read, obs(org=ORG_B, patient="p1")).allowed


def test_scopes_narrow_what_roles_allow() -> None:
    app = who(Role.clinician, client_id="app", patient_id="p1",
              scopes=frozenset({"launch/patient", "patient/Observation.rs"}))
    assert decide(app, Action.read, obs(patient="p1")).allowed
    assert decide(app, Action.search, obs(patient="p1")).allowed
    assert not decide(app, Action.update, obs(patient="p1")).allowed
    refused = decide(app, Action.read, obs(patient="p2"))
    assert not refused.allowed and "this patient" in refused.reason
    assert not decide(app, Action.read, Target("records:Condition", ORG_A,
                                               patient_id="p1")).allowed
    # Scopes never widen: a counsellor's token with write scopes still cannot export.
    wide = who(Role.counsellor, client_id="app", scopes=frozenset({"user/*.cruds"}))
    assert not decide(wide, Action.export, obs()).allowed
    # A user/ scope covers what the user may see, any patient.
    user_app = who(Role.clinician, client_id="app", scopes=frozenset({"user/*.rs"}))
    assert decide(user_app, Action.read, obs(patient="p9")).allowed
    assert not decide(user_app, Action.read, Target("imaging:study", ORG_A)).allowed


def test_system_scopes_and_invalid_scopes() -> None:
    service = who(Role.service, client_id="svc", scopes=frozenset({"system/*.rs",
                                                                   "system/imaging:*.rs"}))
    assert decide(service, Action.search, obs(patient=None)).allowed
    assert decide(service, Action.read, Target("imaging:study", ORG_A)).allowed
    assert not decide(service, Action.create, obs()).allowed
    assert not decide(service, Action.read, obs(org=ORG_B)).allowed
    broken = who(Role.service, client_id="svc", scopes=frozenset({"system/*.bogus"}))
    assert not decide(broken, Action.read, obs()).allowed
    # Without a client (careplane's own tokens) the roles alone decide.
    assert decide(who(Role.service), Action.create, obs()).allowed


def test_researcher_sees_only_deidentified_granted_data() -> None:
    researcher = who(Role.researcher, org=ORG_B)
    grant = Grant(id="g1", grantor_org_id=ORG_A, kinds=("records:*",),
                  actions=frozenset({Action.read, Action.search}), grantee_org_id=ORG_B,
                  workspace_id="ws1", deidentified_only=True)
    facts = Facts(grants=(grant,))
    shared = obs(deidentified=True, workspace_id="ws1")
    assert decide(researcher, Action.read, shared, facts=facts).allowed
    assert decide(researcher, Action.read, shared, facts=facts).grant_id == "g1"
    refused = decide(researcher, Action.read, obs(workspace_id="ws1"), facts=facts)
    assert not refused.allowed and "de-identified" in refused.reason
    assert not decide(researcher, Action.read, obs(deidentified=True, workspace_id="ws2"),
                      facts=facts).allowed
    assert not decide(researcher, Action.read, shared).allowed  # no grant
    assert not decide(researcher, Action.update, shared, facts=facts).allowed
    # Even in their own organisation, identifiable records stay closed to a researcher.
    assert not decide(who(Role.researcher), Action.read, obs()).allowed
    # Genomics in their own organisation is theirs to work with, as before.
    assert decide(who(Role.researcher), Action.execute,
                  Target("genomics:pipeline", ORG_A)).allowed


def test_explicit_grant_across_organisations() -> None:
    clinician_b = who(Role.clinician, org=ORG_B)
    now = utcnow()
    grant = Grant(id="g2", grantor_org_id=ORG_A, kinds=("records:Observation",),
                  actions=frozenset({Action.read}), grantee_user_id=clinician_b.user_id,
                  patient_id="p1", valid_until=now + timedelta(days=1))
    facts = Facts(grants=(grant,), now=now)
    assert decide(clinician_b, Action.read, obs(), facts=facts).allowed
    assert not decide(clinician_b, Action.search, obs(), facts=facts).allowed
    assert not decide(clinician_b, Action.read, obs(patient="p2"), facts=facts).allowed
    assert not decide(clinician_b, Action.read, Target("records:Condition", ORG_A,
                                                       patient_id="p1"), facts=facts).allowed
    expired = Facts(grants=(grant,), now=now + timedelta(days=2))
    assert not decide(clinician_b, Action.read, obs(), facts=expired).allowed
    other = replace(clinician_b, user_id="someone-else")
    assert not decide(other, Action.read, obs(), facts=facts).allowed


def _deny(**extra: object) -> ConsentRule:
    return ConsentRule(id="r1", consent_id="c1", patient_id="p1", decision="deny",
                       **extra)  # type: ignore[arg-type]


def test_consent_deny_beats_grant_and_role() -> None:
    clinician_b = who(Role.clinician, org=ORG_B)
    grant = Grant(id="g3", grantor_org_id=ORG_A, kinds=("*",), actions=frozenset(Action),
                  grantee_org_id=ORG_B)
    deny_b = _deny(actor_org_ids=frozenset({ORG_B}))
    assert decide(clinician_b, Action.read, obs(), facts=Facts(grants=(grant,))).allowed
    refused = decide(clinician_b, Action.read, obs(), facts=Facts(grants=(grant,),
                                                                   consents=(deny_b,)))
    assert not refused.allowed and refused.consent_id == "c1"
    # The same deny does not touch org A's own staff, nor other patients.
    assert decide(who(Role.clinician), Action.read, obs(),
                  facts=Facts(consents=(deny_b,))).allowed
    assert decide(clinician_b, Action.read, obs(patient="p2"),
                  facts=Facts(grants=(grant,), consents=(deny_b,))).allowed


def test_consent_matches_purpose_class_label_action_and_period() -> None:
    clinician = who(Role.clinician)
    research_only = _deny(purposes=frozenset({Purpose.research}))
    assert decide(clinician, Action.read, obs(), facts=Facts(consents=(research_only,))).allowed
    assert not decide(clinician, Action.read, obs(), purpose=Purpose.research,
                      facts=Facts(consents=(research_only,))).allowed
    psych = _deny(data_classes=frozenset({"label:PSY"}))
    assert decide(clinician, Action.read, obs(), facts=Facts(consents=(psych,))).allowed
    assert not decide(clinician, Action.read, obs(labels=frozenset({"PSY"})),
                      facts=Facts(consents=(psych,))).allowed
    imaging = _deny(data_classes=frozenset({"imaging:*"}))
    assert decide(clinician, Action.read, obs(), facts=Facts(consents=(imaging,))).allowed
    assert not decide(clinician, Action.read, Target("imaging:study", ORG_A, patient_id="p1"),
                      facts=Facts(consents=(imaging,))).allowed
    no_export = _deny(actions=frozenset({Action.export}))
    assert decide(clinician, Action.read, obs(), facts=Facts(consents=(no_export,))).allowed
    assert not decide(clinician, Action.export, obs(),
                      facts=Facts(consents=(no_export,))).allowed
    now = utcnow()
    lapsed = _deny(end=now - timedelta(days=1))
    assert decide(clinician, Action.read, obs(), facts=Facts(consents=(lapsed,), now=now)).allowed
    by_role = _deny(actor_roles=frozenset({"counsellor"}))
    assert decide(clinician, Action.read, obs(), facts=Facts(consents=(by_role,))).allowed
    assert not decide(who(Role.counsellor), Action.read, obs(),
                      facts=Facts(consents=(by_role,))).allowed


def test_permit_consent_opens_reads_for_the_named_organisation() -> None:
    clinician_b = who(Role.clinician, org=ORG_B)
    permit = ConsentRule(id="r2", consent_id="c2", patient_id="p1", decision="permit",
                         actor_org_ids=frozenset({ORG_B}))
    decision = decide(clinician_b, Action.read, obs(), facts=Facts(consents=(permit,)))
    assert decision.allowed and decision.consent_id == "c2"
    assert not decide(clinician_b, Action.update, obs(), facts=Facts(consents=(permit,))).allowed
    both = Facts(consents=(permit, _deny(actor_org_ids=frozenset({ORG_B}))))
    assert not decide(clinician_b, Action.read, obs(), facts=both).allowed


def test_patient_is_never_refused_their_own_record_by_consent() -> None:
    me = who(Role.patient, patient_id="p1")
    assert decide(me, Action.read, obs(), facts=Facts(consents=(_deny(),))).allowed


def test_break_the_glass() -> None:
    facts = Facts(consents=(_deny(),))
    clinician = who(Role.clinician)
    refused = decide(clinician, Action.read, obs(), facts=facts)
    assert not refused.allowed and "emergency" in refused.reason
    urgent = replace(clinician, break_glass_reason="unconscious patient in ED, allergy check")
    decision = decide(urgent, Action.read, obs(), facts=facts)
    assert decision.allowed and decision.break_glass
    assert decision.purpose == Purpose.emergency
    assert "allergy check" in decision.reason and decision.consent_id == "c1"
    # Only reads, only clinical roles, never across organisations.
    assert not decide(urgent, Action.update, obs(), facts=facts).allowed
    counsellor = who(Role.counsellor, break_glass_reason="I really need to see it now")
    assert not decide(counsellor, Action.read, obs(), facts=facts).allowed
    assert not decide(urgent, Action.read, obs(org=ORG_B), facts=facts).allowed
    # Without anything to override, the glass stays whole: no flag.
    assert not decide(urgent, Action.read, obs()).break_glass


def test_a_permit_without_a_named_recipient_opens_no_other_organisation() -> None:
    blanket = ConsentRule(id="r3", consent_id="c3", patient_id="p1", decision="permit")
    by_role = ConsentRule(id="r4", consent_id="c4", patient_id="p1", decision="permit",
                          actor_roles=frozenset({"clinician"}))
    for rule in (blanket, by_role):
        decision = decide(who(Role.clinician, org=ORG_B), Action.read, obs(),
                          facts=Facts(consents=(rule,)))
        assert not decision.allowed and "another organisation" in decision.reason
    assert decide(who(Role.clinician), Action.read, obs(), facts=Facts(consents=(blanket,))
                  ).reason == "same organisation and role permits it"
