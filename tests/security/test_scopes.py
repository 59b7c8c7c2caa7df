"""SMART scope grammar (v2 letters and v1 words) and how scopes cover one another."""

from __future__ import annotations

import pytest

from careplane.security.actions import Action
from careplane.security.scopes import ResourceScope, ScopeError, ScopeSet


@pytest.mark.parametrize(("text", "actions"), [
    ("patient/*.rs", {Action.read, Action.export, Action.search}),
    ("user/Observation.cru", {Action.create, Action.execute, Action.read, Action.export,
                              Action.update}),
    ("system/*.cruds", set(Action)),
    ("user/Patient.read", {Action.read, Action.export, Action.search}),
    ("patient/Observation.write", {Action.create, Action.execute, Action.update,
                                   Action.delete}),
    ("user/*.*", set(Action)),
    ("system/imaging:*.rs", {Action.read, Action.export, Action.search}),
])
def test_resource_scopes_parse(text: str, actions: set[Action]) -> None:
    scope = ResourceScope.parse(text)
    assert scope.actions == actions
    assert scope.text == text


@pytest.mark.parametrize("text", [
    "patient/*.", "patient/*.sr", "patient/*.x", "doctor/*.rs", "patient/observation.rs",
    "patient/Observation.rs?category=laboratory", "user/*.rrs", "nonsense", "openid2"])
def test_malformed_scopes_are_refused(text: str) -> None:
    with pytest.raises(ScopeError):
        ScopeSet.parse(text)


def test_kinds_and_patient_context() -> None:
    scopes = ScopeSet.parse("patient/Observation.rs user/imaging:*.r launch/patient openid")
    assert scopes.other == {"launch/patient", "openid"}
    assert scopes.permits(Action.read, "records:Observation", patient_ok=True)
    assert not scopes.permits(Action.read, "records:Observation", patient_ok=False)
    assert not scopes.permits(Action.update, "records:Observation", patient_ok=True)
    assert not scopes.permits(Action.read, "records:Condition", patient_ok=True)
    assert scopes.permits(Action.read, "imaging:study", patient_ok=False)
    assert not scopes.permits(Action.search, "imaging:study", patient_ok=False)
    assert not ScopeSet.parse("user/*.rs").permits(Action.read, "imaging:study",
                                                   patient_ok=False)


def test_covers_is_narrowing_only() -> None:
    allowed = ScopeSet.parse("openid launch/patient patient/*.rs offline_access")
    assert allowed.covers(ScopeSet.parse("patient/Observation.r openid"))
    assert allowed.covers(ScopeSet.parse("patient/*.rs"))
    assert not allowed.covers(ScopeSet.parse("patient/*.cruds"))
    assert not allowed.covers(ScopeSet.parse("user/Observation.r"))
    assert not allowed.covers(ScopeSet.parse("fhirUser"))
    assert ScopeSet.parse("system/genomics:*.cruds").covers(
        ScopeSet.parse("system/genomics:sample.r"))
    assert not ScopeSet.parse("system/*.rs").covers(ScopeSet.parse("system/genomics:*.r"))
