"""records: a reference parameter narrowed to one target type is searched on its parts' rows

Revision ID: 0110
Revises: 0109

Most clinical resources' ``patient`` parameter is ``subject.where(resolve() is Patient)``: its
reference rows repeated their ``subject`` rows that point at a Patient, one index row in
eight of an Observation, with three index entries each. The server now searches such a
parameter on its parts' rows, held to the target type (``SearchParam.parts_target``), and
this migration removes the rows already stored (their ``:identifier`` token rows stay: the
parts' cannot tell their target apart). Downgrading writes them back from the parts' rows.
"""

from alembic import op


revision = '0110'
down_revision = '0109'
branch_labels = None
depends_on = None

# (resource type, narrowed parameter, its parts, the type their references point at), as
# careplane.records.spec derives them from R4's SearchParameters.
_NARROWED = (
    ("Account", "patient", ("subject",), "Patient"),
    ("Appointment", "location", ("actor",), "Location"),
    ("Appointment", "patient", ("actor",), "Patient"),
    ("Appointment", "practitioner", ("actor",), "Practitioner"),
    ("AppointmentResponse", "location", ("actor",), "Location"),
    ("AppointmentResponse", "patient", ("actor",), "Patient"),
    ("AppointmentResponse", "practitioner", ("actor",), "Practitioner"),
    ("AuditEvent", "patient", ("agent", "entity"), "Patient"),
    ("Basic", "patient", ("subject",), "Patient"),
    ("CarePlan", "patient", ("subject",), "Patient"),
    ("CareTeam", "patient", ("subject",), "Patient"),
    ("ChargeItem", "patient", ("subject",), "Patient"),
    ("ClinicalImpression", "patient", ("subject",), "Patient"),
    ("Communication", "patient", ("subject",), "Patient"),
    ("CommunicationRequest", "patient", ("subject",), "Patient"),
    ("Composition", "patient", ("subject",), "Patient"),
    ("Condition", "patient", ("subject",), "Patient"),
    ("Contract", "patient", ("subject",), "Patient"),
    ("DeviceRequest", "patient", ("subject",), "Patient"),
    ("DiagnosticReport", "patient", ("subject",), "Patient"),
    ("DocumentManifest", "patient", ("subject",), "Patient"),
    ("DocumentReference", "patient", ("subject",), "Patient"),
    ("Encounter", "patient", ("subject",), "Patient"),
    ("Encounter", "practitioner", ("participant",), "Practitioner"),
    ("Flag", "patient", ("subject",), "Patient"),
    ("Goal", "patient", ("subject",), "Patient"),
    ("GuidanceResponse", "patient", ("subject",), "Patient"),
    ("ImagingStudy", "patient", ("subject",), "Patient"),
    ("Invoice", "patient", ("subject",), "Patient"),
    ("List", "patient", ("subject",), "Patient"),
    ("MeasureReport", "patient", ("subject",), "Patient"),
    ("Media", "patient", ("subject",), "Patient"),
    ("MedicationAdministration", "patient", ("subject",), "Patient"),
    ("MedicationDispense", "patient", ("subject",), "Patient"),
    ("MedicationRequest", "patient", ("subject",), "Patient"),
    ("MedicationStatement", "patient", ("subject",), "Patient"),
    ("Observation", "patient", ("subject",), "Patient"),
    ("Person", "patient", ("link",), "Patient"),
    ("Person", "practitioner", ("link",), "Practitioner"),
    ("Person", "relatedperson", ("link",), "RelatedPerson"),
    ("Procedure", "patient", ("subject",), "Patient"),
    ("Provenance", "patient", ("target",), "Patient"),
    ("QuestionnaireResponse", "patient", ("subject",), "Patient"),
    ("RequestGroup", "patient", ("subject",), "Patient"),
    ("RiskAssessment", "patient", ("subject",), "Patient"),
    ("ServiceRequest", "patient", ("subject",), "Patient"),
    ("Specimen", "patient", ("subject",), "Patient"),
    ("Task", "patient", ("subject",), "Patient"),
)


def upgrade() -> None:
    for rtype, code, _, _ in _NARROWED:
        op.execute("DELETE FROM fhir_idx_reference "  # noqa: S608 - the names are the ones above
                   f"WHERE resource_type = '{rtype}' AND param = '{code}'")


def downgrade() -> None:
    for rtype, code, parts, target in _NARROWED:
        names = ", ".join(f"'{p}'" for p in parts)
        op.execute("INSERT INTO fhir_idx_reference (resource_pk, resource_type, param, "  # noqa: S608
                   "target_type, target_id, url) "
                   f"SELECT DISTINCT resource_pk, resource_type, '{code}', target_type, "
                   f"target_id, url FROM fhir_idx_reference WHERE resource_type = '{rtype}' "
                   f"AND param IN ({names}) AND target_type = '{target}'")
