"""FHIR errors: every failure under /fhir answers with an OperationOutcome.

Service code raises :class:`FhirError` with the HTTP status and the issues that explain it
(an issue names the offending element in ``expression``, as FHIRPath); the router turns it
into a response. Keeping status and issue together means a batch bundle can put the same
outcome into its entry's ``response.outcome`` that a plain request would have returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["FhirError", "Issue", "operation_outcome"]

Severity = Literal["fatal", "error", "warning", "information"]


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue; ``code`` is from the IssueType value set."""

    code: str
    diagnostics: str
    severity: Severity = "error"
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code,
                               "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


@dataclass(eq=False)
class FhirError(Exception):
    """A refusal with its HTTP status and OperationOutcome issues."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, status: int, code: str, diagnostics: str, *, expression: str | None = None,
           headers: dict[str, str] | None = None) -> FhirError:
        issue = Issue(code, diagnostics, expression=(expression,) if expression else ())
        return cls(status, [issue], headers or {})

    def __str__(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues) or f"HTTP {self.status}"

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)
