"""Synthetic patients as FHIR R4: a believable population, the same for the same seed.

Demos, benchmarks and the imaging and genomics parts need patients that look like a hospital's:
a mix of ages and cultures, chronic diseases that come with age and go together (diabetes with
obesity and kidney disease, heart failure in the old), medicines that match the diagnoses,
blood pressures that drift and fall once treated, HbA1c that comes down after metformin, and the
chest X-ray, mammography and sequencing orders that the other parts fulfil. Real data cannot be
shipped, so it is made here, from a seed, with the codes a real system would use (SNOMED CT,
LOINC, RxNorm, UCUM) and the shape of the FHIR vital-signs profile.

Each patient comes out as one *transaction* Bundle whose entries point at each other through
``urn:uuid:`` full URLs, so that a server stores the whole chart or nothing. The hospital and its
clinicians are conditional creates (``ifNoneExist`` on their identifier) so that loading many
bundles makes them once. :func:`write_ndjson` writes the same resources as Bulk Data NDJSON
files, one per resource type, with plain ids and ``Type/id`` references, for loading benchmarks.

Everything a patient gets is drawn from one ``random.Random`` seeded by ``(seed, index)``, so a
patient is the same whatever the population size, and a population is the same on any machine.
The simulated "today" is ``start`` (default: the real today); the charts cover the ``years``
before it (five by default).
"""

from __future__ import annotations

import gc
import json
import math
import random
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

if TYPE_CHECKING:
    from careplane.platform.db import Database
    from careplane.security import Principal

__all__ = [
    "ACCESSION_SYSTEM",
    "CHEST_XRAY",
    "DISEASES",
    "GENOME_SEQUENCING",
    "HEART_FAILURE_DRUGS",
    "MAMMOGRAPHY",
    "MRN_SYSTEM",
    "ORGANIZATION_SYSTEM",
    "PENICILLINS",
    "PRACTITIONER_SYSTEM",
    "generate",
    "load_bundles",
    "synth_command",
    "write_ndjson",
]

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
MRN_SYSTEM = "urn:careplane:mrn"
ORGANIZATION_SYSTEM = "urn:careplane:organization"
PRACTITIONER_SYSTEM = "urn:careplane:practitioner"
ACCESSION_SYSTEM = "urn:careplane:accession"
DEFAULT_ORG = "Demo General Hospital"

HISTORY_YEARS = 5
_YEAR = 365.25
_MAX_VISITS = 48          # keeps a bundle well under a server's 1000-entry limit
_PRACTITIONERS = 24

_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))     # the version and variant bits
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)          # version 4, RFC 4122 variant
_TERMINOLOGY = "http://terminology.hl7.org/CodeSystem/"
_OBS_CATEGORY = _TERMINOLOGY + "observation-category"
_INTERPRETATION = _TERMINOLOGY + "v3-ObservationInterpretation"
_VITALS_PROFILE = "http://hl7.org/fhir/StructureDefinition/"


# --------------------------------------------------------------------------- terminology

@dataclass(frozen=True)
class Drug:
    """An RxNorm concept with how it is taken (``per_day`` 0 means as needed)."""

    code: str
    display: str
    sig: str
    per_day: int = 1
    route: str = "oral"


# RxNorm clinical drugs (SCD) where one is standard; ingredient (IN) codes for the rest.
_DRUGS = {
    "metformin": Drug("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral "
                      "Tablet", "500 mg by mouth once daily with the evening meal"),
    "metformin_ir": Drug("861007", "metformin hydrochloride 500 MG Oral Tablet",
                         "500 mg by mouth twice daily with meals", 2),
    "insulin_glargine": Drug("311041", "insulin glargine 100 UNT/ML Injectable Solution",
                             "10 units under the skin at bedtime", 1, "subcutaneous"),
    "empagliflozin": Drug("1545658", "empagliflozin 10 MG Oral Tablet",
                          "10 mg by mouth once daily"),
    "lisinopril": Drug("314076", "lisinopril 10 MG Oral Tablet", "10 mg by mouth once daily"),
    "lisinopril_20": Drug("314077", "lisinopril 20 MG Oral Tablet", "20 mg by mouth once daily"),
    "losartan": Drug("979492", "losartan potassium 50 MG Oral Tablet",
                     "50 mg by mouth once daily"),
    "amlodipine": Drug("197361", "amlodipine 5 MG Oral Tablet", "5 mg by mouth once daily"),
    "amlodipine_10": Drug("308135", "amlodipine 10 MG Oral Tablet", "10 mg by mouth once daily"),
    "hydrochlorothiazide": Drug("310798", "hydrochlorothiazide 25 MG Oral Tablet",
                                "25 mg by mouth every morning"),
    "atorvastatin_20": Drug("617310", "atorvastatin 20 MG Oral Tablet",
                            "20 mg by mouth once daily"),
    "atorvastatin_40": Drug("617311", "atorvastatin 40 MG Oral Tablet",
                            "40 mg by mouth once daily"),
    "simvastatin": Drug("312961", "simvastatin 20 MG Oral Tablet",
                        "20 mg by mouth every evening"),
    "rosuvastatin": Drug("859747", "rosuvastatin calcium 10 MG Oral Tablet",
                         "10 mg by mouth once daily"),
    "aspirin": Drug("243670", "aspirin 81 MG Oral Tablet", "81 mg by mouth once daily"),
    "clopidogrel": Drug("309362", "clopidogrel 75 MG Oral Tablet", "75 mg by mouth once daily"),
    "metoprolol_25": Drug("866427", "24 HR metoprolol succinate 25 MG Extended Release Oral "
                          "Tablet", "25 mg by mouth once daily"),
    "metoprolol_50": Drug("866436", "24 HR metoprolol succinate 50 MG Extended Release Oral "
                          "Tablet", "50 mg by mouth once daily"),
    "carvedilol": Drug("200031", "carvedilol 6.25 MG Oral Tablet",
                       "6.25 mg by mouth twice daily with food", 2),
    "furosemide": Drug("313988", "furosemide 40 MG Oral Tablet", "40 mg by mouth every morning"),
    "spironolactone": Drug("313096", "spironolactone 25 MG Oral Tablet",
                           "25 mg by mouth once daily"),
    "sacubitril_valsartan": Drug("1656349", "sacubitril 49 MG / valsartan 51 MG Oral Tablet",
                                 "1 tablet by mouth twice daily", 2),
    "apixaban": Drug("1364445", "apixaban 5 MG Oral Tablet", "5 mg by mouth twice daily", 2),
    "warfarin": Drug("855332", "warfarin sodium 5 MG Oral Tablet",
                     "5 mg by mouth once daily, adjusted to INR"),
    "albuterol": Drug("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
                      "2 puffs every 4-6 hours as needed for wheeze", 0, "inhalation"),
    "fluticasone": Drug("895994", "120 ACTUAT fluticasone propionate 0.044 MG/ACTUAT Metered "
                        "Dose Inhaler", "2 puffs twice daily", 2, "inhalation"),
    "tiotropium": Drug("69120", "tiotropium", "2 inhalations once daily", 1, "inhalation"),
    "sertraline": Drug("312941", "sertraline 50 MG Oral Tablet", "50 mg by mouth once daily"),
    "escitalopram": Drug("349332", "escitalopram 10 MG Oral Tablet",
                         "10 mg by mouth once daily"),
    "levothyroxine": Drug("10582", "levothyroxine",
                          "75 micrograms by mouth every morning before breakfast"),
    "alendronate": Drug("46041", "alendronate", "70 mg by mouth once weekly", 0),
    "sumatriptan": Drug("37418", "sumatriptan", "50 mg by mouth at migraine onset, may repeat "
                        "once after 2 hours", 0),
    "topiramate": Drug("199888", "topiramate 25 MG Oral Tablet", "25 mg by mouth at night"),
    "omeprazole": Drug("7646", "omeprazole", "20 mg by mouth once daily before breakfast"),
    "cetirizine": Drug("20610", "cetirizine", "10 mg by mouth once daily"),
    "ferrous_sulfate": Drug("310325", "ferrous sulfate 325 MG Oral Tablet",
                            "325 mg by mouth once daily"),
    "allopurinol": Drug("519", "allopurinol", "100 mg by mouth once daily"),
    "hydrocortisone_cream": Drug("106258", "hydrocortisone 10 MG/ML Topical Cream",
                                 "apply thinly to affected skin twice daily", 2, "topical"),
    "methylphenidate": Drug("1091150", "methylphenidate hydrochloride 10 MG Oral Tablet",
                            "10 mg by mouth twice daily", 2),
    "naproxen": Drug("105899", "naproxen 500 MG Oral Tablet",
                     "500 mg by mouth twice daily with food as needed", 0),
    "acetaminophen": Drug("161", "acetaminophen", "1 g by mouth up to four times daily as "
                          "needed", 0),
    "amoxicillin": Drug("308191", "amoxicillin 500 MG Oral Capsule",
                        "500 mg by mouth three times daily for 7 days", 3),
    "amoxicillin_child": Drug("723", "amoxicillin",
                              "oral suspension 45 mg/kg/day in two doses for 7 days", 2),
    "amoxicillin_clavulanate": Drug("562508", "amoxicillin 875 MG / clavulanate 125 MG Oral "
                                    "Tablet", "1 tablet by mouth twice daily for 7 days", 2),
    "azithromycin": Drug("308460", "azithromycin 250 MG Oral Tablet",
                         "500 mg on day 1, then 250 mg daily for 4 days"),
    "prednisone": Drug("312615", "prednisone 20 MG Oral Tablet",
                       "40 mg by mouth once daily for 5 days"),
}
HEART_FAILURE_DRUGS = frozenset(_DRUGS[k].code for k in (
    "furosemide", "spironolactone", "sacubitril_valsartan", "carvedilol"))
PENICILLINS = frozenset(_DRUGS[k].code for k in (
    "amoxicillin", "amoxicillin_child", "amoxicillin_clavulanate"))


def _band(age: float, bands: tuple[tuple[float, float], ...]) -> float:
    """The probability of the first band whose upper age bound exceeds ``age``."""
    for upto, p in bands:
        if age < upto:
            return p
    return 0.0


Prevalence = Callable[[float, bool, set[str]], float]   # (age, female, diseases so far)


@dataclass(frozen=True)
class Disease:
    """A chronic disease: its SNOMED CT concept, who gets it and from what age."""

    key: str
    code: str
    display: str
    min_age: float
    prevalence: Prevalence
    follow_up: float = 0.0     # problem visits a year once diagnosed
    where: str = "AMB"         # where it is usually diagnosed: AMB, EMER or IMP


def _x(condition: bool, factor: float) -> float:
    return factor if condition else 1.0


# Age- and sex-dependent prevalence, in the order they are decided (later ones may depend on
# earlier ones). Figures are round numbers in the range of published adult prevalences.
DISEASES: tuple[Disease, ...] = (
    Disease("obesity", "414916001", "Obesity", 2,
            lambda a, f, h: _band(a, ((18, 0.16), (40, 0.30), (60, 0.38), (200, 0.30)))),
    Disease("hypertension", "38341003", "Hypertensive disorder, systemic arterial", 18,
            lambda a, f, h: _band(a, ((40, 0.08), (60, 0.32), (75, 0.58), (200, 0.70)))
            * _x("obesity" in h, 1.4), 1.0),
    Disease("hyperlipidemia", "55822004", "Hyperlipidemia", 20,
            lambda a, f, h: _band(a, ((40, 0.06), (60, 0.25), (200, 0.40))), 0.5),
    Disease("diabetes", "44054006", "Diabetes mellitus type 2", 18,
            lambda a, f, h: _band(a, ((45, 0.025), (65, 0.12), (200, 0.22)))
            * _x("obesity" in h, 1.9), 2.0),
    Disease("prediabetes", "15777000", "Prediabetes", 18,
            lambda a, f, h: 0.0 if "diabetes" in h
            else _band(a, ((45, 0.08), (65, 0.2), (200, 0.25)))),
    Disease("asthma", "195967001", "Asthma", 2,
            lambda a, f, h: _band(a, ((18, 0.09), (200, 0.07))), 0.7),
    Disease("copd", "13645005", "Chronic obstructive lung disease", 40,
            lambda a, f, h: _band(a, ((60, 0.03), (200, 0.09))), 1.5),
    Disease("depression", "35489007", "Depressive disorder", 12,
            lambda a, f, h: _x(f, 1.6) * 0.065, 1.0),
    Disease("anxiety", "197480006", "Anxiety disorder", 8,
            lambda a, f, h: _x(f, 1.7) * 0.06 * _x("depression" in h, 2.5), 0.5),
    Disease("ckd", "709044004", "Chronic kidney disease", 18,
            lambda a, f, h: _band(a, ((50, 0.02), (70, 0.08), (200, 0.22)))
            * _x("diabetes" in h, 2.0) * _x("hypertension" in h, 1.5), 1.0),
    Disease("cad", "53741008", "Coronary arteriosclerosis", 40,
            lambda a, f, h: _band(a, ((60, 0.03), (80, 0.11), (200, 0.18)))
            * _x(not f, 1.5) * _x("diabetes" in h, 1.6), 1.0),
    Disease("heart_failure", "84114007", "Heart failure", 45,
            lambda a, f, h: _band(a, ((65, 0.01), (80, 0.05), (200, 0.10)))
            * _x("cad" in h, 2.0) * _x("hypertension" in h, 1.3), 2.0, "IMP"),
    Disease("atrial_fibrillation", "49436004", "Atrial fibrillation", 50,
            lambda a, f, h: _band(a, ((65, 0.012), (80, 0.05), (200, 0.10)))
            * _x("heart_failure" in h, 2.5), 1.0, "EMER"),
    Disease("hypothyroidism", "40930008", "Hypothyroidism", 12,
            lambda a, f, h: _x(f, 4.0) * _band(a, ((40, 0.01), (200, 0.02))), 0.5),
    Disease("osteoarthritis", "396275006", "Osteoarthritis", 45,
            lambda a, f, h: _band(a, ((65, 0.10), (200, 0.30))) * _x("obesity" in h, 1.4),
            0.3),
    Disease("osteoporosis", "64859006", "Osteoporosis", 50,
            lambda a, f, h: 0.15 if f else (0.04 if a >= 65 else 0.0), 0.2),
    Disease("migraine", "37796009", "Migraine", 12,
            lambda a, f, h: (0.15 if f else 0.06) if a < 65 else 0.03, 0.3),
    Disease("gerd", "235595009", "Gastroesophageal reflux disease", 18,
            lambda a, f, h: 0.13 * _x("obesity" in h, 1.4), 0.2),
    Disease("allergic_rhinitis", "61582004", "Allergic rhinitis", 3,
            lambda a, f, h: 0.14 * _x("asthma" in h, 2.5), 0.1),
    Disease("iron_deficiency_anemia", "87522002", "Iron deficiency anemia", 1,
            lambda a, f, h: 0.05 if f and 15 <= a < 50 else 0.012, 0.5),
    Disease("gout", "90560007", "Gout", 30,
            lambda a, f, h: (0.01 if f else 0.045) * _x("ckd" in h, 2.0), 0.3),
    Disease("stroke", "230690007", "Cerebrovascular accident", 45,
            lambda a, f, h: _band(a, ((70, 0.015), (200, 0.06)))
            * _x("atrial_fibrillation" in h, 2.5) * _x("hypertension" in h, 1.4), 1.0, "IMP"),
    Disease("atopic_dermatitis", "24079001", "Atopic dermatitis", 0.3,
            lambda a, f, h: _band(a, ((18, 0.12), (200, 0.03))), 0.3),
    Disease("adhd", "406506008", "Attention deficit hyperactivity disorder", 5,
            lambda a, f, h: _band(a, ((18, 0.045 * _x(not f, 2.0)), (40, 0.025), (200, 0.0))),
            0.5),
    Disease("low_back_pain", "279039007", "Low back pain", 18,
            lambda a, f, h: 0.08 * _x("obesity" in h, 1.3), 0.2),
    Disease("breast_cancer", "254837009", "Malignant neoplasm of breast", 35,
            lambda a, f, h: _band(a, ((50, 0.006), (65, 0.02), (200, 0.03))) if f else 0.0,
            2.0),
    Disease("colon_cancer", "363406005", "Malignant neoplasm of colon", 45,
            lambda a, f, h: _band(a, ((65, 0.004), (200, 0.012))), 2.0, "IMP"),
    Disease("lung_cancer", "254637007", "Non-small cell lung cancer", 50,
            lambda a, f, h: _band(a, ((65, 0.003), (200, 0.01))) * _x("copd" in h, 4.0),
            2.0),
)
_DISEASE = {d.key: d for d in DISEASES}
CANCERS = ("breast_cancer", "colon_cancer", "lung_cancer")

# Acute, self-limiting problems, each with its own visit: (key, SNOMED, display).
_ACUTE = {
    "otitis_media": ("65363002", "Otitis media"),
    "bronchitis": ("10509002", "Acute bronchitis"),
    "pneumonia": ("233604007", "Pneumonia"),
}
# Reasons for an emergency visit not caused by a known disease.
_ED_REASONS = (
    ("29857009", "Chest pain"), ("21522001", "Abdominal pain"), ("25064002", "Headache"),
    ("44465007", "Sprain of ankle"), ("125667009", "Contusion"),
)

_ENCOUNTER_TYPES = {
    "checkup": ("185349003", "Encounter for check up"),
    "well_child": ("410620009", "Well child visit"),
    "problem": ("185347001", "Encounter for problem"),
    "emergency": ("50849002", "Emergency room admission"),
    "admission": ("32485007", "Hospital admission"),
}
_CLASSES = {"AMB": "ambulatory", "EMER": "emergency", "IMP": "inpatient encounter"}

# Allergies: (category, system, code, display, possible reactions, drug key it rules out).
_ALLERGENS: tuple[tuple[str, str, str, str, float], ...] = (
    ("medication", RXNORM, "7980", "penicillin G", 0.08),
    ("medication", RXNORM, "10180", "sulfamethoxazole", 0.03),
    ("medication", RXNORM, "29046", "lisinopril", 0.01),
    ("medication", RXNORM, "1191", "aspirin", 0.01),
    ("medication", RXNORM, "2670", "codeine", 0.015),
    ("food", SNOMED, "762952008", "Peanut", 0.02),
    ("food", SNOMED, "102263004", "Eggs (edible)", 0.01),
    ("food", SNOMED, "3718001", "Cow's milk", 0.01),
    ("food", SNOMED, "227493005", "Cashew nuts", 0.008),
    ("environment", SNOMED, "256277009", "Grass pollen", 0.05),
    ("environment", SNOMED, "260147004", "House dust mite", 0.03),
    ("environment", SNOMED, "264287008", "Animal dander", 0.03),
    ("environment", SNOMED, "288328004", "Bee venom", 0.008),
    ("environment", SNOMED, "111088007", "Latex", 0.005),
)
_REACTIONS = {
    "medication": (("271807003", "Eruption of skin"), ("126485001", "Urticaria"),
                   ("39579001", "Anaphylaxis"), ("41291007", "Angioedema"),
                   ("422587007", "Nausea"), ("49727002", "Cough")),
    "food": (("126485001", "Urticaria"), ("39579001", "Anaphylaxis"),
             ("418290006", "Itching"), ("422587007", "Nausea")),
    "environment": (("76067001", "Sneezing"), ("56018004", "Wheezing"),
                    ("418290006", "Itching"), ("267036007", "Dyspnea")),
}

# Laboratory tests: LOINC code -> (display, UCUM unit, decimals).
_LABS = {
    "4548-4": ("Hemoglobin A1c/Hemoglobin.total in Blood", "%", 1),
    "2345-7": ("Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 0),
    "2160-0": ("Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 2),
    "62238-1": ("Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, "
                "Plasma or Blood by Creatinine-based formula (CKD-EPI)", "mL/min/{1.73_m2}", 0),
    "2951-2": ("Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 0),
    "2823-3": ("Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 1),
    "718-7": ("Hemoglobin [Mass/volume] in Blood", "g/dL", 1),
    "6690-2": ("Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 1),
    "777-3": ("Platelets [#/volume] in Blood by Automated count", "10*3/uL", 0),
    "2093-3": ("Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 0),
    "2085-9": ("Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 0),
    "2571-8": ("Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 0),
    "13457-7": ("Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation", "mg/dL",
                0),
    "3016-3": ("Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 2),
    "33762-6": ("Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in Serum or Plasma",
                "pg/mL", 0),
}
_PANELS = {
    "bmp": ("51990-0", "Basic metabolic panel - Blood"),
    "cbc": ("58410-2", "CBC panel - Blood by Automated count"),
    "lipids": ("24331-1", "Lipid 1996 panel - Serum or Plasma"),
}

# Orders for the imaging and genomics parts: (LOINC, display, category SNOMED, display).
CHEST_XRAY = ("36643-5", "XR Chest 2 Views")
MAMMOGRAPHY = ("24606-6", "MG Breast Screening")
GENOME_SEQUENCING = ("86206-0", "Whole genome sequence analysis in Blood or Tissue by "
                     "Molecular genetics method")
_IMAGING = ("363679005", "Imaging")
_LAB_PROCEDURE = ("108252007", "Laboratory procedure")

# Share of the population in each age band (years from, to): a developed country's pyramid.
_AGE_PYRAMID = ((0, 5, 5.4), (5, 15, 11.6), (15, 25, 12.2), (25, 35, 13.4), (35, 45, 13.0),
                (45, 55, 12.7), (55, 65, 12.9), (65, 75, 10.3), (75, 85, 5.8), (85, 100, 2.7))
# Median height (cm) by age for boys and girls, scaled per child to their adult height.
_HEIGHT_BY_AGE = {
    False: ((0, 50), (0.5, 67), (1, 76), (2, 87), (3, 96), (4, 103), (5, 110), (6, 116),
            (8, 128), (10, 138), (12, 149), (14, 164), (16, 174), (18, 177)),
    True: ((0, 49), (0.5, 65), (1, 74), (2, 86), (3, 95), (4, 102), (5, 109), (6, 115),
           (8, 127), (10, 138), (12, 151), (14, 160), (16, 163), (18, 163)),
}
_CHILD_BMI = ((0, 13.4), (0.5, 17.0), (1, 17.2), (2, 16.5), (3, 16.0), (5, 15.4), (7, 15.6),
              (10, 17.0), (12, 18.3), (14, 19.6), (16, 20.8), (18, 21.8))
_CHILD_HR = ((0, 135), (1, 120), (3, 105), (6, 95), (10, 85), (14, 78), (18, 72))
_CHILD_RR = ((0, 40), (1, 30), (3, 25), (6, 21), (12, 18), (18, 16))


def _curve(points: tuple[tuple[float, float], ...], x: float) -> float:
    """Linear interpolation in a table of (x, y) points, flat beyond its ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in pairwise(points):
        if x < x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


@cache
def _names() -> dict[str, Any]:
    text = resources.files("careplane.records").joinpath("synth_data", "names.json").read_text()
    data: dict[str, Any] = json.loads(text)
    cultures = data["cultures"]
    data["culture_keys"] = list(cultures)
    data["culture_weights"] = [cultures[k]["weight"] for k in cultures]
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "org"


# --------------------------------------------------------------------------- FHIR pieces

def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _status(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": _TERMINOLOGY + system, "code": code}]}


def _ref(full_url: str) -> dict[str, str]:
    return {"reference": full_url}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _day_iso(day: int) -> str:
    return date.fromordinal(day).isoformat()


def _instant(day: int, minute: int) -> str:
    """A FHIR dateTime at ``minute`` past midnight (UTC) of the ordinal ``day``."""
    day += minute // 1440
    minute %= 1440
    return f"{date.fromordinal(day).isoformat()}T{minute // 60:02d}:{minute % 60:02d}:00Z"


@dataclass(frozen=True)
class _Practitioner:
    full_url: str
    resource: dict[str, Any]
    ident: str


@cache
def _staff(org_name: str) -> tuple[dict[str, Any], str, tuple[_Practitioner, ...]]:
    """The organisation and its clinicians: the same for every seed of one organisation."""
    rng = random.Random(f"careplane-staff:{org_name}")  # noqa: S311 - made-up data, no secret
    slug = _slug(org_name)
    org_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{ORGANIZATION_SYSTEM}:{slug}')}"
    org = {"resourceType": "Organization",
           "identifier": [{"system": ORGANIZATION_SYSTEM, "value": slug}],
           "active": True,
           "type": [{"coding": [{"system": _TERMINOLOGY + "organization-type", "code": "prov",
                                 "display": "Healthcare Provider"}]}],
           "name": org_name,
           "telecom": [{"system": "phone", "value": "(217) 555-0100", "use": "work"}],
           "address": [{"use": "work", "line": ["1 Hospital Drive"], "city": "Springfield",
                        "state": "IL", "postalCode": "62701", "country": "US"}]}
    names = _names()
    staff = []
    for i in range(_PRACTITIONERS):
        culture = names["cultures"][rng.choices(names["culture_keys"],
                                                names["culture_weights"])[0]]
        female = rng.random() < 0.5
        given = rng.choice(culture["female" if female else "male"])
        family = rng.choice(culture["family"])
        ident = f"{slug}-{i + 1:03d}"
        url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{PRACTITIONER_SYSTEM}:{ident}')}"
        staff.append(_Practitioner(url, {
            "resourceType": "Practitioner",
            "identifier": [{"system": PRACTITIONER_SYSTEM, "value": ident}],
            "active": True,
            "name": [{"use": "official", "family": family, "given": [given], "prefix": ["Dr."],
                      "text": f"Dr. {given} {family}"}],
            "gender": "female" if female else "male",
            "telecom": [{"system": "phone", "value": f"(217) 555-01{10 + i:02d}",
                         "use": "work"}],
        }, ident))
    return org, org_url, tuple(staff)


# --------------------------------------------------------------------------- one patient

@dataclass
class _Visit:
    day: int
    minute: int
    kind: str                          # AMB, EMER, IMP
    type_key: str                      # key of _ENCOUNTER_TYPES
    reason: str | None = None          # a disease or acute key, or None
    reason_code: tuple[str, str] | None = None
    days: int = 0                      # length of an inpatient stay
    checkup: bool = False
    diagnoses: list[str] = field(default_factory=list)   # diseases diagnosed here
    acute: str | None = None
    routine: bool = False              # a follow-up that may be dropped from a long chart
    url: str = ""


@dataclass
class _Condition:
    key: str
    code: str
    display: str
    onset: int
    url: str
    abated: int | None = None
    visit: _Visit | None = None


class _Patient:
    """Draws one patient's life over the record window and writes it as FHIR resources."""

    def __init__(self, index: int, seed: int, today: int, org_name: str,
                 years: float = HISTORY_YEARS) -> None:
        # a seeded generator: reproducible made-up data, not a secret
        self.rng = rng = random.Random(f"careplane-synth:{seed}:{index}")  # noqa: S311
        self.index = index
        self.seed = seed
        self.today = today
        self.org, self.org_url, self.staff = _staff(org_name)
        self.entries: list[dict[str, Any]] = []
        self.female = rng.random() < 0.51
        lo, hi, _ = rng.choices(_AGE_PYRAMID, [w for _, _, w in _AGE_PYRAMID])[0]
        age = rng.uniform(lo, hi)
        self.birth = today - max(1, int(age * _YEAR))
        self.death: int | None = None
        p_death = _band(age, ((50, 0.005), (65, 0.02), (80, 0.08), (200, 0.30)))
        if rng.random() < p_death:
            self.death = today - rng.randint(1, max(1, min(int(years * _YEAR),
                                                           today - self.birth - 1)))
        self.end = self.death or today
        self.start = max(self.birth, today - int(years * _YEAR))
        self.gp = rng.choice(self.staff[:16])
        self.hospitalist = rng.choice(self.staff[16:])
        self.used_staff = {self.gp.full_url: self.gp}
        self.url = self._uuid()
        self.last_mammogram = -10_000
        self.orders = 0

    # -- helpers
    def _uuid(self) -> str:
        """A random (version 4) UUID URN from the patient's generator."""
        x = self.rng.getrandbits(128) & _UUID_CLEAR | _UUID_SET
        h = f"{x:032x}"
        return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def age(self, day: int) -> float:
        return (day - self.birth) / _YEAR

    def _add(self, resource: dict[str, Any], url: str | None = None) -> str:
        url = url or self._uuid()
        self.entries.append({"fullUrl": url, "resource": resource,
                             "request": {"method": "POST", "url": resource["resourceType"]}})
        return url

    def _day_between(self, lo: int, hi: int) -> int:
        return lo if hi <= lo else self.rng.randint(lo, hi)

    # -- the story
    def build(self) -> dict[str, Any]:
        self._demographics()
        self._draw_diseases()
        self._draw_allergies()
        self._draw_physiology()
        visits = self._plan_visits()
        self._plan_medicines(visits)
        self._write_conditions()
        for v in visits:
            self._write_visit(v)
        self._write_standing_medicines()
        head = [{"fullUrl": self.org_url, "resource": self.org,
                 "request": {"method": "POST", "url": "Organization",
                             "ifNoneExist": f"identifier={ORGANIZATION_SYSTEM}|"
                                            f"{self.org['identifier'][0]['value']}"}}]
        for p in self.used_staff.values():
            head.append({"fullUrl": p.full_url, "resource": p.resource,
                         "request": {"method": "POST", "url": "Practitioner",
                                     "ifNoneExist": f"identifier={PRACTITIONER_SYSTEM}|"
                                                    f"{p.ident}"}})
        # the shared organisation and clinicians are copied so that callers may edit a bundle
        for entry in head:
            entry["resource"] = orjson.loads(orjson.dumps(entry["resource"]))
        return {"resourceType": "Bundle", "type": "transaction", "entry": head + self.entries}

    def _demographics(self) -> None:
        rng = self.rng
        names = _names()
        key = rng.choices(names["culture_keys"], names["culture_weights"])[0]
        culture = names["cultures"][key]
        given = rng.choice(culture["female" if self.female else "male"])
        family = rng.choice(culture["family"])
        self.name_text = f"{family} {given}" if culture["family_first"] else f"{given} {family}"
        name: dict[str, Any] = {"use": "official", "family": family, "given": [given],
                                "text": self.name_text}
        if rng.random() < 0.3 and self.age(self.end) >= 18:
            name["given"].append(rng.choice(culture["female" if self.female else "male"]))
        place = rng.choice(names["places"])
        lang_code, lang_name = culture["language"]
        # A permutation of the index: unique within a seed, unordered to the eye.
        mrn = (self.index * 7_919_003 + self.seed * 104_729) % 100_000_000
        area = rng.choice(names["area_codes"])
        telecom = [{"system": "phone", "value": f"({area}) 555-01{rng.randrange(100):02d}",
                    "use": "mobile" if self.age(self.end) >= 14 else "home"}]
        if self.age(self.end) >= 18 and rng.random() < 0.7:
            telecom.append({"system": "email", "use": "home",
                            "value": f"{given}.{family}{rng.randrange(1, 100)}@example.com"
                            .lower()})
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": [{"use": "usual",
                            "type": {"coding": [{"system": _TERMINOLOGY + "v2-0203",
                                                 "code": "MR",
                                                 "display": "Medical record number"}]},
                            "system": MRN_SYSTEM, "value": f"{mrn:08d}",
                            "assigner": {"display": self.org["name"]}}],
            "active": True,
            "name": [name],
            "telecom": telecom,
            "gender": "female" if self.female else "male",
            "birthDate": _day_iso(self.birth),
            "address": [{"use": "home", "type": "physical",
                         "line": [f"{rng.randint(1, 2999)} {rng.choice(names['streets'])} "
                                  f"{rng.choice(names['street_kinds'])}"],
                         "city": place["city"], "state": place["state"],
                         "postalCode": f"{place['zip']}{rng.randrange(100):02d}",
                         "country": "US"}],
            "communication": [{"language": {
                "coding": [{"system": "urn:ietf:bcp:47", "code": lang_code,
                            "display": lang_name}], "text": lang_name},
                "preferred": True}],
            "generalPractitioner": [_ref(self.gp.full_url)],
            "managingOrganization": _ref(self.org_url),
        }
        if self.age(self.end) >= 18:
            status = rng.choices(("S", "M", "D", "W"),
                                 (3, 5, 1.2, 0.2 + max(0.0, self.age(self.end) - 60) / 10))[0]
            displays = {"S": "Never Married", "M": "Married", "D": "Divorced", "W": "Widowed"}
            patient["maritalStatus"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                "code": status, "display": displays[status]}], "text": displays[status]}
        if self.death is not None:
            patient["deceasedDateTime"] = _instant(self.death, self.rng.randint(0, 1439))
        self.patient = patient
        self._add(patient, self.url)

    def _draw_diseases(self) -> None:
        rng = self.rng
        age_end = self.age(self.end)
        self.has: set[str] = set()
        self.conditions: dict[str, _Condition] = {}
        for d in DISEASES:
            if age_end < d.min_age or rng.random() >= d.prevalence(age_end, self.female,
                                                                    self.has):
                continue
            lo = self.birth + int(d.min_age * _YEAR)
            # Half the diagnoses fall in the last few years, so charts show their start.
            if rng.random() < 0.35:
                lo = max(lo, self.start)
            onset = min(self._day_between(lo, self.end - 1), self.end - 1)
            self.has.add(d.key)
            self.conditions[d.key] = _Condition(d.key, d.code, d.display, onset, self._uuid())
        self.acute: list[_Condition] = []
        years = (self.end - self.start) / _YEAR
        age_mid = self.age((self.start + self.end) // 2)
        rates = {"otitis_media": 0.35 if age_mid < 8 else 0.01,
                 "bronchitis": 0.04,
                 "pneumonia": 0.008 + (0.03 if age_mid >= 65 else 0.0)
                 + (0.08 if "copd" in self.has else 0.0)}
        for key, rate in rates.items():
            t = self.start + rng.expovariate(rate) * _YEAR if rate else self.end
            while t < self.end - 1 and years > 0:
                day = int(t)
                code, display = _ACUTE[key]
                self.acute.append(_Condition(key, code, display, day, self._uuid(),
                                             abated=day + rng.randint(7, 21)))
                t += rng.expovariate(rate) * _YEAR

    def _draw_allergies(self) -> None:
        rng = self.rng
        self.allergic: set[str] = set()
        for category, system, code, display, p in _ALLERGENS:
            if rng.random() >= p:
                continue
            self.allergic.add(code)
            reaction_code, reaction = rng.choice(_REACTIONS[category])
            severe = reaction_code == "39579001"
            recorded = self._day_between(max(self.birth + 180, self.start - 3650), self.end - 1)
            self._add({
                "resourceType": "AllergyIntolerance",
                "clinicalStatus": _status("allergyintolerance-clinical", "active"),
                "verificationStatus": _status("allergyintolerance-verification", "confirmed"),
                "type": "allergy",
                "category": [category],
                "criticality": "high" if severe else "low",
                "code": _coding(system, code, display),
                "patient": _ref(self.url),
                "recordedDate": _day_iso(recorded),
                "recorder": _ref(self.gp.full_url),
                "reaction": [{"manifestation": [_coding(SNOMED, reaction_code, reaction)],
                              "severity": "severe" if severe else rng.choice(("mild",
                                                                              "moderate"))}],
            })

    def _draw_physiology(self) -> None:
        """Per-patient baselines; the trends are applied in the ``_at`` functions."""
        rng, has = self.rng, self.has
        g = rng.gauss
        self.adult_height = g(163.0, 6.5) if self.female else g(176.0, 7.0)
        self.height_scale = self.adult_height / (163.0 if self.female else 177.0)
        self.bmi0 = (rng.uniform(30.5, 41.0) if "obesity" in has
                     else min(29.5, max(18.0, g(24.5, 2.8))))
        self.child_bmi_scale = rng.uniform(1.2, 1.4) if "obesity" in has else g(1.0, 0.06)
        self.weight_slope = g(0.3, 0.8)             # kg a year, adults
        self.sbp0 = g(0.0, 6.0)
        self.hr0 = g(0.0, 6.0)
        self.egfr_loss = rng.uniform(0.5, 3.0) * _x("diabetes" in has, 1.4)
        self.egfr_at_onset = rng.uniform(40.0, 58.0)
        self.a1c_at_onset = rng.uniform(7.2, 9.8)
        self.a1c_base = g(5.2, 0.25)
        self.ldl0 = g(165.0, 22.0) if "hyperlipidemia" in has else g(112.0, 22.0)
        self.hdl = g(58.0, 11.0) if self.female else g(47.0, 9.0)
        self.tg = max(50.0, g(130.0, 45.0) * _x("diabetes" in has, 1.35))
        self.tsh0 = math.exp(g(0.45, 0.35))
        self.treated: dict[str, int] = {}

    # -- physiology at a day
    def weight_height(self, day: int) -> tuple[float, float]:
        age = self.age(day)
        if age < 18:
            height = _curve(_HEIGHT_BY_AGE[self.female], age) * self.height_scale
            bmi = _curve(_CHILD_BMI, age) * self.child_bmi_scale
            return bmi * (height / 100) ** 2, height
        years = (day - max(self.start, self.birth + int(18 * _YEAR))) / _YEAR
        slope = self.weight_slope
        if "diabetes" in self.treated and day >= self.treated["diabetes"]:
            slope -= 0.8
        base = self.bmi0 * (self.adult_height / 100) ** 2
        shrink = max(0.0, age - 65) * 0.08     # people lose height in old age
        return max(35.0, base + slope * years), self.adult_height - shrink

    def blood_pressure(self, day: int) -> tuple[int, int]:
        age, rng = self.age(day), self.rng
        if age < 18:
            sbp = 88 + 1.4 * min(age, 16) + rng.gauss(0, 5)
            dbp = 52 + 1.0 * min(age, 16) + rng.gauss(0, 4)
        else:
            sbp = 110 + 0.45 * (age - 18) + self.sbp0
            htn = self.conditions.get("hypertension")
            if htn is not None and day >= htn.onset - 365:
                # untreated: high and climbing; treated: brought down over a few months
                years_ill = (day - htn.onset) / _YEAR
                sbp = max(sbp, 142.0) + 1.8 * min(max(years_ill, 0.0), 6.0) + 4
                started = self.treated.get("hypertension")
                if started is not None and day >= started:
                    sbp -= min(1.0, (day - started) / 120) * 17
                    sbp += 0.6 * (day - started) / _YEAR
            else:
                sbp = min(sbp, 136.0)
            sbp += rng.gauss(0, 6)
            dbp = 0.45 * sbp + 21 - max(0.0, age - 60) * 0.25 + rng.gauss(0, 4)
        sbp_i = round(sbp)
        return sbp_i, min(round(dbp), sbp_i - 20)

    def a1c(self, day: int) -> float:
        dm = self.conditions.get("diabetes")
        if dm is None:
            base = self.a1c_base + (0.7 if "prediabetes" in self.has else 0.0)
            return round(base + self.rng.gauss(0, 0.1), 1)
        years = (day - dm.onset) / _YEAR
        if years < 0:     # before the diagnosis: rising through the prediabetic range
            value = self.a1c_at_onset + 0.9 * years
            value = max(value, 5.8)
        else:
            value = self.a1c_at_onset
            started = self.treated.get("diabetes")
            if started is not None and day >= started:
                value -= min(1.0, (day - started) / 180) * 1.3
                value += 0.18 * (day - started) / _YEAR
                if "insulin" in self.treated:
                    value -= 0.6
        return round(min(13.5, max(5.6, value + self.rng.gauss(0, 0.15))), 1)

    def egfr(self, day: int) -> float:
        age = self.age(day)
        normal = 128 - 0.85 * max(0.0, age - 25)
        ckd = self.conditions.get("ckd")
        if ckd is None:
            return max(62.0, normal)
        years = (day - ckd.onset) / _YEAR
        value = self.egfr_at_onset - self.egfr_loss * years
        return min(max(normal, 62.0), max(15.0, value)) if years < 0 else max(15.0, value)

    def ldl(self, day: int) -> float:
        started = self.treated.get("statin")
        value = self.ldl0
        if started is not None and day >= started:
            value *= 1 - 0.4 * min(1.0, (day - started) / 90)
        return value + self.rng.gauss(0, 8)

    # -- visits
    def _plan_visits(self) -> list[_Visit]:
        rng, has = self.rng, self.has
        visits: list[_Visit] = []
        start, end = self.start, self.end

        def clinic_minute() -> int:
            return rng.randint(8 * 60, 17 * 60)

        # check-ups: well-child visits in infancy, then yearly
        if self.age(start) < 2:
            for months in (1, 2, 4, 6, 9, 12, 15, 18, 24):
                day = self.birth + int(months * 30.4)
                if start <= day < end:
                    visits.append(_Visit(day, clinic_minute(), "AMB", "well_child",
                                         checkup=True))
        anniversary = rng.randint(0, 364)
        year_start = date.fromordinal(start).year
        for year in range(year_start, date.fromordinal(end).year + 1):
            day = date(year, 1, 1).toordinal() + anniversary
            if start <= day < end and self.age(day) >= 2 and rng.random() < 0.85:
                visits.append(_Visit(day, clinic_minute(), "AMB",
                                     "well_child" if self.age(day) < 18 else "checkup",
                                     checkup=True))
        # diagnoses inside the window
        for key, c in self.conditions.items():
            if c.onset >= start:
                where = _DISEASE[key].where
                if where == "EMER" and rng.random() < 0.5:
                    where = "AMB"
                v = self._acute_visit(c.onset, where, key)
                v.diagnoses.append(key)
                c.visit = v
                visits.append(v)
        # follow-up of chronic diseases
        for key, c in self.conditions.items():
            rate = _DISEASE[key].follow_up
            first = max(c.onset + 30, start)
            if rate <= 0 or first >= end:
                continue
            t = first + rng.expovariate(rate) * _YEAR
            while t < end:
                visits.append(_Visit(int(t), clinic_minute(), "AMB", "problem", reason=key,
                                     routine=True))
                t += rng.expovariate(rate) * _YEAR
        # acute episodes
        for c in self.acute:
            if c.key == "pneumonia":
                severe = self.age(c.onset) >= 65 or "copd" in has
                where = "IMP" if severe and rng.random() < 0.6 else "EMER"
            else:
                where = "AMB"
            v = self._acute_visit(c.onset, where, c.key)
            v.acute = c.key
            c.visit = v
            visits.append(v)
        # emergencies and admissions for exacerbations and mishaps
        ed_rate = 0.07 + 0.25 * ("asthma" in has) + 0.3 * ("copd" in has) \
            + 0.3 * ("heart_failure" in has) + 0.1 * ("atrial_fibrillation" in has)
        ip_rate = 0.01 + 0.3 * ("heart_failure" in has) + 0.15 * ("copd" in has) \
            + 0.05 * (self.age(end) >= 75)
        for kind, rate in (("EMER", ed_rate), ("IMP", ip_rate)):
            t = start + rng.expovariate(rate) * _YEAR
            while t < end:
                day = int(t)
                causes = [k for k in ("asthma", "copd", "heart_failure", "atrial_fibrillation")
                          if k in self.conditions and self.conditions[k].onset < day]
                if causes and rng.random() < 0.8:
                    visits.append(self._acute_visit(day, kind, rng.choice(causes)))
                else:
                    v = self._acute_visit(day, kind, None)
                    v.reason_code = rng.choice(_ED_REASONS)
                    visits.append(v)
                t += rng.expovariate(rate) * _YEAR
        visits = [v for v in visits if self.start <= v.day < self.end]
        # keep a chart readable and a bundle bounded: drop surplus follow-ups, then surplus
        # exacerbations; never a visit where something was diagnosed
        for droppable in (lambda v: v.routine,
                          lambda v: not v.diagnoses and v.acute is None and not v.checkup):
            surplus = len(visits) - _MAX_VISITS
            if surplus <= 0:
                break
            candidates = [v for v in visits if droppable(v)]
            rng.shuffle(candidates)
            drop = {id(v) for v in candidates[:surplus]}
            visits = [v for v in visits if id(v) not in drop]
        visits.sort(key=lambda v: (v.day, v.minute))
        for v in visits:
            v.url = self._uuid()
        return visits

    def _acute_visit(self, day: int, kind: str, reason: str | None) -> _Visit:
        rng = self.rng
        if kind == "IMP":
            return _Visit(day, rng.randint(0, 1439), "IMP", "admission", reason=reason,
                          days=rng.randint(2, 9))
        if kind == "EMER":
            return _Visit(day, rng.randint(0, 1439), "EMER", "emergency", reason=reason)
        return _Visit(day, rng.randint(8 * 60, 17 * 60), "AMB", "problem", reason=reason)

    # -- medicines
    def _plan_medicines(self, visits: list[_Visit]) -> None:
        """Decide each disease's drugs and start days (physiology depends on them)."""
        rng, has, age_end = self.rng, self.has, self.age(self.end)
        ace_ok = "29046" not in self.allergic
        self.plans: list[tuple[str, Drug, int]] = []    # (disease key, drug, start day)

        def start_of(key: str) -> int:
            c = self.conditions[key]
            if c.visit is not None:
                return c.visit.day
            return c.onset + rng.randint(0, 60)

        def give(key: str, *drugs: str, track: str | None = None) -> None:
            day = start_of(key)
            if day >= self.end:
                return
            for name in drugs:
                self.plans.append((key, _DRUGS[name], day))
            if track is not None:
                self.treated.setdefault(track, day)

        renin = "lisinopril" if ace_ok else "losartan"
        if "hypertension" in has:
            first = "amlodipine" if age_end >= 55 else renin
            extra = ("hydrochlorothiazide",) if rng.random() < 0.4 else ()
            give("hypertension", first, *extra, track="hypertension")
        if "diabetes" in has:
            egfr_ok = "ckd" not in has or self.egfr(self.end) >= 30
            drugs = [rng.choice(("metformin", "metformin_ir"))] if egfr_ok else []
            if rng.random() < 0.2:
                drugs.append("insulin_glargine")
                self.treated["insulin"] = start_of("diabetes")
            if rng.random() < 0.15 and egfr_ok:
                drugs.append("empagliflozin")
            if drugs:
                give("diabetes", *drugs, track="diabetes")
        statin_for = next((k for k in ("cad", "stroke", "hyperlipidemia", "diabetes")
                           if k in has and (k != "diabetes" or age_end >= 40)), None)
        if statin_for is not None:
            statin = rng.choice(("atorvastatin_20", "atorvastatin_40", "simvastatin",
                                 "rosuvastatin"))
            give(statin_for, statin, track="statin")
        if "cad" in has:
            extra = ("clopidogrel",) if rng.random() < 0.2 else ()
            give("cad", *(("aspirin",) if "1191" not in self.allergic else ()),
                 "metoprolol_25", *extra)
        if "heart_failure" in has:
            beta = "carvedilol" if "cad" not in has else "metoprolol_50"
            drugs = ["furosemide", beta,
                     "sacubitril_valsartan" if rng.random() < 0.35 or not ace_ok
                     else "lisinopril_20"]
            if rng.random() < 0.4:
                drugs.append("spironolactone")
            give("heart_failure", *drugs)
        if "atrial_fibrillation" in has:
            anticoagulant = "apixaban" if rng.random() < 0.7 else "warfarin"
            drugs = [anticoagulant]
            if "heart_failure" not in has and "cad" not in has:
                drugs.append("metoprolol_50")
            give("atrial_fibrillation", *drugs)
        if "stroke" in has and "cad" not in has and "atrial_fibrillation" not in has:
            give("stroke", "clopidogrel")
        if "ckd" in has and "hypertension" not in has and "heart_failure" not in has:
            give("ckd", renin)
        if "asthma" in has:
            give("asthma", "albuterol", *(("fluticasone",) if rng.random() < 0.5 else ()))
        if "copd" in has:
            give("copd", "albuterol", "tiotropium")
        if "depression" in has:
            give("depression", rng.choice(("sertraline", "escitalopram")))
        elif "anxiety" in has and self.age(self.end) >= 12:
            give("anxiety", rng.choice(("sertraline", "escitalopram")))
        if "hypothyroidism" in has:
            give("hypothyroidism", "levothyroxine", track="hypothyroidism")
        if "osteoporosis" in has:
            give("osteoporosis", "alendronate")
        if "migraine" in has:
            give("migraine", "sumatriptan", *(("topiramate",) if rng.random() < 0.3 else ()))
        if "gerd" in has:
            give("gerd", "omeprazole")
        if "allergic_rhinitis" in has:
            give("allergic_rhinitis", "cetirizine")
        if "iron_deficiency_anemia" in has:
            give("iron_deficiency_anemia", "ferrous_sulfate", track="iron")
        if "gout" in has:
            give("gout", "allopurinol")
        if "atopic_dermatitis" in has:
            give("atopic_dermatitis", "hydrocortisone_cream")
        if "adhd" in has and self.age(start_of("adhd")) >= 6:
            give("adhd", "methylphenidate")
        for key in ("osteoarthritis", "low_back_pain"):
            if key in has:
                nsaid_ok = "ckd" not in has and "heart_failure" not in has \
                    and "atrial_fibrillation" not in has
                give(key, "naproxen" if nsaid_ok and rng.random() < 0.5 else "acetaminophen")

    def _medication_request(self, key: str, drug: Drug, day: int, minute: int,
                            visit: _Visit | None, reason_url: str, *,
                            course_days: int | None = None) -> None:
        timing: dict[str, Any] = {"repeat": {"frequency": max(1, drug.per_day), "period": 1,
                                             "periodUnit": "d"}}
        if drug.per_day == 0:
            timing = {"repeat": {"frequency": 1, "period": 1,
                                 "periodUnit": "wk" if key == "osteoporosis" else "d"}}
        dosage: dict[str, Any] = {"sequence": 1, "text": drug.sig, "timing": timing,
                                  "asNeededBoolean": drug.per_day == 0 and key != "osteoporosis",
                                  "route": {"text": drug.route}}
        if course_days is not None:
            status = "completed" if day + course_days < self.today else "active"
        else:
            status = "stopped" if self.death is not None else "active"
        request: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "status": status,
            "intent": "order",
            "category": [{"coding": [{
                "system": _TERMINOLOGY + "medicationrequest-category",
                "code": "outpatient" if visit is None or visit.kind == "AMB" else "community",
                "display": "Outpatient" if visit is None or visit.kind == "AMB"
                else "Community"}]}],
            "medicationCodeableConcept": _coding(RXNORM, drug.code, drug.display),
            "subject": _ref(self.url),
            "authoredOn": _instant(day, minute),
            "requester": _ref(self.gp.full_url if visit is None or visit.kind == "AMB"
                              else self.hospitalist.full_url),
            "reasonReference": [_ref(reason_url)],
            "dosageInstruction": [dosage],
        }
        if visit is not None:
            request["encounter"] = _ref(visit.url)
        if course_days is not None:
            request["dispenseRequest"] = {"expectedSupplyDuration": {
                "value": course_days, "unit": "days", "system": UCUM, "code": "d"}}
        self._add(request)

    def _write_standing_medicines(self) -> None:
        for key, drug, day in self.plans:
            c = self.conditions[key]
            if c.visit is None:     # started before the record window
                self._medication_request(key, drug, day, 9 * 60 + self.rng.randint(0, 480),
                                         None, c.url)

    # -- resources
    def _write_conditions(self) -> None:
        for c in list(self.conditions.values()) + self.acute:
            resolved = c.abated is not None
            resource: dict[str, Any] = {
                "resourceType": "Condition",
                "clinicalStatus": _status("condition-clinical",
                                          "resolved" if resolved else "active"),
                "verificationStatus": _status("condition-ver-status", "confirmed"),
                "category": [{"coding": [{
                    "system": _TERMINOLOGY + "condition-category",
                    "code": "encounter-diagnosis" if resolved else "problem-list-item",
                    "display": "Encounter Diagnosis" if resolved else "Problem List Item"}]}],
                "code": _coding(SNOMED, c.code, c.display),
                "subject": _ref(self.url),
                "onsetDateTime": _day_iso(c.onset),
                "recordedDate": _day_iso(c.visit.day if c.visit else c.onset),
            }
            if c.visit is not None:
                resource["encounter"] = _ref(c.visit.url)
                resource["recorder"] = _ref(self._clinician(c.visit).full_url)
            if resolved and c.abated is not None:
                resource["abatementDateTime"] = _day_iso(min(c.abated, self.end))
            self._add(resource, c.url)

    def _clinician(self, visit: _Visit) -> _Practitioner:
        who = self.gp if visit.kind == "AMB" else self.hospitalist
        self.used_staff.setdefault(who.full_url, who)
        return who

    def _write_visit(self, v: _Visit) -> None:
        rng = self.rng
        doctor = self._clinician(v)
        begin = v.minute
        if v.kind == "IMP":
            end_day, end_minute = v.day + v.days, rng.randint(9 * 60, 16 * 60)
        else:
            length = rng.randint(15, 45) if v.kind == "AMB" else rng.randint(90, 420)
            end_day, end_minute = v.day, begin + length
        ongoing = v.kind == "IMP" and end_day >= self.today and self.death is None
        died = self.death is not None and end_day >= self.death
        if died and self.death is not None:
            end_day, end_minute = self.death, 0
        etype = _ENCOUNTER_TYPES[v.type_key]
        period: dict[str, str] = {"start": _instant(v.day, begin)}
        if not ongoing:
            period["end"] = _instant(end_day, max(end_minute, begin + 10)
                                     if end_day == v.day else end_minute)
        encounter: dict[str, Any] = {
            "resourceType": "Encounter",
            "status": "in-progress" if ongoing else "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": v.kind, "display": _CLASSES[v.kind]},
            "type": [_coding(SNOMED, *etype)],
            "subject": _ref(self.url),
            "participant": [{"individual": _ref(doctor.full_url)}],
            "period": period,
            "serviceProvider": _ref(self.org_url),
        }
        reason = self.conditions.get(v.reason) if v.reason else None
        if v.acute is not None:
            acute = next(c for c in self.acute if c.visit is v)
            encounter["reasonReference"] = [_ref(acute.url)]
        elif reason is not None:
            encounter["reasonReference"] = [_ref(reason.url)]
        elif v.reason_code is not None:
            encounter["reasonCode"] = [_coding(SNOMED, *v.reason_code)]
        if v.kind == "IMP":
            hospitalization: dict[str, Any] = {"admitSource": {"coding": [{
                "system": _TERMINOLOGY + "admit-source", "code": "emd",
                "display": "From accident/emergency department"}]}}
            if not ongoing:
                hospitalization["dischargeDisposition"] = {"coding": [{
                    "system": _TERMINOLOGY + "discharge-disposition",
                    "code": "exp" if died else "home",
                    "display": "Expired" if died else "Home"}]}
            encounter["hospitalization"] = hospitalization
        self._add(encounter, v.url)

        last_day = self.today - 1 if ongoing else end_day - 1 if died else end_day
        self._vitals(v, v.day, begin + 5, full=v.checkup or v.kind == "IMP")
        if v.kind == "IMP" and last_day > v.day:
            self._vitals(v, last_day, 8 * 60 + rng.randint(0, 120), full=False)
        self._labs(v, begin + 20)
        self._orders(v, begin + 30)
        self._visit_medicines(v, begin + 40)

    # -- observations
    def _observation(self, v: _Visit, day: int, minute: int, code: str, display: str,
                     category: str, **value: Any) -> dict[str, Any]:
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": _OBS_CATEGORY, "code": category,
                                      "display": "Vital Signs" if category == "vital-signs"
                                      else "Laboratory"}]}],
            "code": _coding(LOINC, code, display),
            "subject": _ref(self.url),
            "encounter": _ref(v.url),
            "effectiveDateTime": _instant(day, minute),
        }
        obs.update(value)
        return obs

    def _vital(self, v: _Visit, day: int, minute: int, profile: str, code: str,
               display: str, value: float, unit: str) -> None:
        obs = self._observation(v, day, minute, code, display, "vital-signs",
                                valueQuantity=_quantity(value, unit))
        obs["meta"] = {"profile": [_VITALS_PROFILE + profile]}
        self._add(obs)

    def _vitals(self, v: _Visit, day: int, minute: int, *, full: bool) -> None:
        rng, age = self.rng, self.age(day)
        sick = v.acute in ("pneumonia", "bronchitis", "otitis_media")
        sbp, dbp = self.blood_pressure(day)
        bp = self._observation(v, day, minute, "85354-9", "Blood pressure panel with all "
                               "children optional", "vital-signs")
        bp["meta"] = {"profile": [_VITALS_PROFILE + "bp"]}
        bp["component"] = [
            {"code": _coding(LOINC, "8480-6", "Systolic blood pressure"),
             "valueQuantity": _quantity(sbp, "mm[Hg]")},
            {"code": _coding(LOINC, "8462-4", "Diastolic blood pressure"),
             "valueQuantity": _quantity(dbp, "mm[Hg]")},
        ]
        self._add(bp)
        hr = _curve(_CHILD_HR, age) + self.hr0 + rng.gauss(0, 5)
        if "atrial_fibrillation" in self.has:
            hr += abs(rng.gauss(8, 12))
        if sick:
            hr += 12
        self._vital(v, day, minute, "heartrate", "8867-4", "Heart rate", round(hr), "/min")
        rr = _curve(_CHILD_RR, age) + rng.gauss(0, 1.5) + (3 if "copd" in self.has else 0) \
            + (5 if v.acute == "pneumonia" else 0)
        self._vital(v, day, minute, "resprate", "9279-1", "Respiratory rate", round(rr),
                    "/min")
        temp = rng.gauss(36.8, 0.2) + (rng.uniform(1.2, 2.6) if sick and day == v.day else 0)
        self._vital(v, day, minute, "bodytemp", "8310-5", "Body temperature",
                    round(temp, 1), "Cel")
        spo2 = 98 + rng.gauss(0, 0.8) - (5 if "copd" in self.has else 0) \
            - (6 if v.acute == "pneumonia" and day == v.day else 0) \
            - (3 if v.reason == "heart_failure" and v.kind != "AMB" else 0)
        spo2_obs = self._observation(v, day, minute, "2708-6", "Oxygen saturation in Arterial "
                                     "blood", "vital-signs",
                                     valueQuantity=_quantity(min(100, round(spo2)), "%"))
        spo2_obs["code"]["coding"].append({"system": LOINC, "code": "59408-5",
                                           "display": "Oxygen saturation in Arterial blood "
                                                      "by Pulse oximetry"})
        spo2_obs["meta"] = {"profile": [_VITALS_PROFILE + "oxygensat"]}
        self._add(spo2_obs)
        weight, height = self.weight_height(day)
        weight += rng.gauss(0, 0.4 if age >= 2 else 0.05)
        self._vital(v, day, minute, "bodyweight", "29463-7", "Body weight",
                    round(max(weight, 2.0), 1), "kg")
        if full:
            height += rng.gauss(0, 0.4)
            self._vital(v, day, minute, "bodyheight", "8302-2", "Body height",
                        round(height, 1), "cm")
            self._vital(v, day, minute, "bmi", "39156-5", "Body mass index (BMI) [Ratio]",
                        round(weight / (height / 100) ** 2, 1), "kg/m2")
            if age < 3:
                head = 35 + 12 * (1 - math.exp(-age * 1.4)) + rng.gauss(0, 0.5)
                self._vital(v, day, minute, "headcircum", "9843-4",
                            "Head Occipital-frontal circumference", round(head, 1), "cm")

    def _lab(self, v: _Visit, minute: int, code: str, value: float,
             low: float | None, high: float | None) -> str:
        display, unit, decimals = _LABS[code]
        value = round(value, decimals) if decimals else round(value)
        if high is not None and value > high:
            flag = ("HH", "Critical high") if value > high * 1.6 else ("H", "High")
        elif low is not None and value < low:
            flag = ("LL", "Critical low") if value < low * 0.6 else ("L", "Low")
        else:
            flag = ("N", "Normal")
        ref: dict[str, Any] = {}
        if low is not None:
            ref["low"] = _quantity(low, unit)
        if high is not None:
            ref["high"] = _quantity(high, unit)
        obs = self._observation(v, v.day, minute, code, display, "laboratory",
                                valueQuantity=_quantity(value, unit))
        obs["interpretation"] = [{"coding": [{"system": _INTERPRETATION, "code": flag[0],
                                              "display": flag[1]}], "text": flag[1]}]
        obs["referenceRange"] = [ref]
        return self._add(obs)

    def _report(self, v: _Visit, minute: int, panel: str, results: list[str]) -> None:
        code, display = _PANELS[panel]
        self._add({
            "resourceType": "DiagnosticReport",
            "status": "final",
            "category": [{"coding": [{"system": _TERMINOLOGY + "v2-0074", "code": "LAB",
                                      "display": "Laboratory"}]}],
            "code": _coding(LOINC, code, display),
            "subject": _ref(self.url),
            "encounter": _ref(v.url),
            "effectiveDateTime": _instant(v.day, minute),
            "issued": _instant(v.day, minute + 180),
            "performer": [_ref(self.org_url)],
            "result": [_ref(r) for r in results],
        })

    def _labs(self, v: _Visit, minute: int) -> None:
        rng, has, age = self.rng, self.has, self.age(v.day)
        if age < 1:
            return
        want: set[str] = set()
        if v.checkup and age >= 18:
            want |= {"bmp", "cbc"}
            if age >= 20 and (rng.random() < 0.5 or has & {"hyperlipidemia", "diabetes",
                                                           "cad", "stroke"}):
                want.add("lipids")
            if "diabetes" in has or (age >= 35 and rng.random() < 0.3):
                want.add("a1c")
            if "hypothyroidism" in has:
                want.add("tsh")
        reason = v.reason or (v.diagnoses[0] if v.diagnoses else None)
        if reason == "diabetes":
            want |= {"a1c", "bmp"}
        elif reason in ("ckd", "heart_failure", "hypertension"):
            want.add("bmp")
        elif reason == "hyperlipidemia":
            want.add("lipids")
        elif reason == "hypothyroidism":
            want.add("tsh")
        elif reason == "iron_deficiency_anemia":
            want.add("cbc")
        if v.kind != "AMB" and age >= 12:
            want |= {"bmp", "cbc"}
            if reason == "heart_failure":
                want.add("bnp")
        if v.acute == "pneumonia":
            want.add("cbc")
        if not want:
            return
        female = self.female
        if "a1c" in want:
            a1c = self.a1c(v.day)
            self._lab(v, minute, "4548-4", a1c, None, 5.6)
        if "bmp" in want:
            a1c = self.a1c(v.day)
            glucose = (28.7 * a1c - 46.7 if "diabetes" in has else 88 + (a1c - 5.2) * 20) \
                + rng.gauss(0, 9)
            egfr = max(13.0, self.egfr(v.day) + rng.gauss(0, 2.5))
            results = [self._lab(v, minute, "2345-7", glucose, 70, 99)]
            if age >= 18:
                creatinine = _creatinine_for(egfr, age, female)
                egfr = _ckd_epi(round(creatinine, 2), age, female)
                results.append(self._lab(v, minute, "2160-0", creatinine,
                                         0.59 if female else 0.74, 1.04 if female else 1.35))
                results.append(self._lab(v, minute, "62238-1", egfr, 60, None))
            results.append(self._lab(v, minute, "2951-2", rng.gauss(140, 1.8), 135, 145))
            potassium = 4.2 + rng.gauss(0, 0.28) + (0.35 if "ckd" in has else 0) \
                + (0.15 if any(d.code in ("314076", "314077", "313096")
                               for _, d, _ in self.plans) else 0)
            results.append(self._lab(v, minute, "2823-3", potassium, 3.5, 5.1))
            self._report(v, minute, "bmp", results)
        if "cbc" in want:
            hb = (13.6 if female else 15.0) + rng.gauss(0, 0.8)
            if "ckd" in has and self.egfr(v.day) < 45:
                hb -= 1.5
            ida = self.conditions.get("iron_deficiency_anemia")
            if ida is not None and v.day >= ida.onset - 60:
                treated = self.treated.get("iron")
                hb -= 2.8 if treated is None or v.day < treated + 60 else 0.6
            wbc = rng.gauss(7.0, 1.4) + (6.0 if v.acute == "pneumonia" else 0)
            results = [self._lab(v, minute, "718-7", hb, 12.0 if female else 13.5,
                                 15.5 if female else 17.5),
                       self._lab(v, minute, "6690-2", max(2.5, wbc), 4.5, 11.0),
                       self._lab(v, minute, "777-3", max(90.0, rng.gauss(260, 50)), 150, 400)]
            self._report(v, minute, "cbc", results)
        if "lipids" in want:
            ldl = self.ldl(v.day)
            tg = self.tg + rng.gauss(0, 15)
            hdl = self.hdl + rng.gauss(0, 3)
            results = [self._lab(v, minute, "2093-3", ldl + hdl + tg / 5, None, 200),
                       self._lab(v, minute, "2085-9", hdl, 40, None),
                       self._lab(v, minute, "2571-8", tg, None, 150),
                       self._lab(v, minute, "13457-7", ldl, None, 130)]
            self._report(v, minute, "lipids", results)
        if "tsh" in want:
            tsh = self.tsh0
            hypo = self.conditions.get("hypothyroidism")
            if hypo is not None and v.day >= hypo.onset - 90:
                started = self.treated.get("hypothyroidism")
                tsh = rng.uniform(6.5, 14.0) if started is None or v.day < started + 45 \
                    else math.exp(rng.gauss(0.8, 0.35))
            self._lab(v, minute, "3016-3", tsh, 0.4, 4.0)
        if "bnp" in want:
            self._lab(v, minute, "33762-6", math.exp(rng.gauss(7.6, 0.6)), None, 125)

    # -- orders that imaging and genomics fulfil
    def _order(self, v: _Visit, minute: int, test: tuple[str, str],
               category: tuple[str, str], reason: str | None, reason_text: str | None,
               priority: str, body_site: tuple[str, str] | None = None) -> None:
        day_time = _instant(v.day, minute)
        recent = self.today - v.day < 45 and self.death is None
        self.orders += 1
        accession = f"A{self.seed % 1000:03d}{self.index % 10_000_000:07d}{self.orders:05d}"
        order: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "identifier": [{"type": {"coding": [{"system": _TERMINOLOGY + "v2-0203",
                                                 "code": "ACSN",
                                                 "display": "Accession ID"}]},
                            "system": ACCESSION_SYSTEM, "value": accession}],
            "status": "active" if recent else "completed",
            "intent": "order",
            "category": [_coding(SNOMED, *category)],
            "priority": priority,
            "code": _coding(LOINC, *test),
            "subject": _ref(self.url),
            "encounter": _ref(v.url),
            "occurrenceDateTime": day_time,
            "authoredOn": day_time,
            "requester": _ref(self._clinician(v).full_url),
        }
        if reason is not None:
            order["reasonReference"] = [_ref(reason)]
        elif reason_text is not None:
            order["reasonCode"] = [{"text": reason_text}]
        if body_site is not None:
            order["bodySite"] = [_coding(SNOMED, *body_site)]
        self._add(order)

    def _orders(self, v: _Visit, minute: int) -> None:
        rng, age = self.rng, self.age(v.day)
        reason_key = v.acute or v.reason or (v.diagnoses[0] if v.diagnoses else None)
        reason_url = None
        if v.acute is not None:
            reason_url = next(c.url for c in self.acute if c.visit is v)
        elif reason_key in self.conditions:
            reason_url = self.conditions[reason_key].url
        chance = {"pneumonia": 1.0, "heart_failure": 0.8 if v.kind != "AMB" else 0.3,
                  "copd": 0.7 if v.kind != "AMB" else 0.1, "bronchitis": 0.3,
                  "lung_cancer": 1.0, "asthma": 0.2 if v.kind != "AMB" else 0.0}
        p = chance.get(reason_key or "", 0.0)
        if reason_key is None and v.reason_code is not None and v.reason_code[0] == "29857009":
            p = 0.7
        if p and rng.random() < p:
            self._order(v, minute, CHEST_XRAY, _IMAGING, reason_url,
                        None if reason_url else "Chest pain",
                        "routine" if v.kind == "AMB" else "urgent",
                        ("51185008", "Thoracic structure"))
        if self.female and v.checkup and 50 <= age < 75 \
                and v.day - self.last_mammogram >= 700 and rng.random() < 0.8:
            self.last_mammogram = v.day
            self._order(v, minute, MAMMOGRAPHY, _IMAGING, None,
                        "Screening for malignant neoplasm of breast", "routine",
                        ("76752008", "Breast structure"))
        cancer = next((k for k in v.diagnoses if k in CANCERS), None)
        if cancer is not None and rng.random() < 0.85:
            self._order(v, minute, GENOME_SEQUENCING, _LAB_PROCEDURE,
                        self.conditions[cancer].url, None, "routine")
        elif v.checkup and age >= 18 and rng.random() < 0.012:
            self._order(v, minute, GENOME_SEQUENCING, _LAB_PROCEDURE, None,
                        "Hereditary cancer risk assessment", "routine")

    def _visit_medicines(self, v: _Visit, minute: int) -> None:
        for key, planned, day in self.plans:
            c = self.conditions[key]
            if c.visit is v and day == v.day:
                self._medication_request(key, planned, day, minute, v, c.url)
        if v.acute is None:
            return
        c = next(c for c in self.acute if c.visit is v)
        penicillin_ok = "7980" not in self.allergic
        drug: Drug | None = None
        if v.acute == "otitis_media" and self.rng.random() < 0.7:
            drug = _DRUGS["amoxicillin_child" if self.age(v.day) < 12 else "amoxicillin"] \
                if penicillin_ok else _DRUGS["azithromycin"]
        elif v.acute == "pneumonia":
            drug = _DRUGS["amoxicillin_clavulanate"] if penicillin_ok \
                and self.age(v.day) >= 12 else _DRUGS["azithromycin"]
        elif v.acute == "bronchitis" and self.rng.random() < 0.25 and self.age(v.day) >= 12:
            drug = _DRUGS["azithromycin"]
        if drug is not None:
            self._medication_request(v.acute, drug, v.day, minute, v, c.url,
                                     course_days=7 if drug.code != "308460" else 5)


def _ckd_epi(creatinine: float, age: float, female: bool) -> float:
    """eGFR (mL/min/1.73 m2) by the race-free CKD-EPI 2021 creatinine equation."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine / kappa
    value = 142 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.200 * 0.9938 ** age
    return value * (1.012 if female else 1.0)


def _creatinine_for(egfr: float, age: float, female: bool) -> float:
    """The serum creatinine (mg/dL) for which CKD-EPI 2021 gives ``egfr``."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    scale = 142 * 0.9938 ** age * (1.012 if female else 1.0)
    ratio = (egfr / scale) ** (1 / -1.200)
    if ratio <= 1.0:
        ratio = (egfr / scale) ** (1 / alpha)
    return max(0.3, kappa * ratio)


# --------------------------------------------------------------------------- public surface

def _today(start: date | None) -> int:
    return (start or date.today()).toordinal()


def generate(patients: int, seed: int, *, start: date | None = None,
             org_name: str = DEFAULT_ORG, years: float = HISTORY_YEARS
             ) -> Iterator[dict[str, Any]]:
    """Yield one FHIR transaction Bundle per patient, the same ones for the same arguments.

    ``start`` is the simulated today (default: the real one): records cover the ``years``
    before it. Patient ``i`` depends only on ``(seed, i, start, org_name, years)``. A shorter
    history gives fewer resources per patient, so that a population of national size fits on
    a small machine's disk.
    """
    if patients < 0:
        raise ValueError("patients must be zero or more")
    if years <= 0:
        raise ValueError("years must be more than zero")
    today = _today(start)
    for index in range(patients):
        with _no_cycle_collection():
            bundle = _Patient(index, seed, today, org_name, years).build()
        yield bundle


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause the cyclic garbage collector while one patient is built.

    A bundle is tens of thousands of fresh dicts and lists without reference cycles (reference
    counting frees them); the collector would otherwise rescan them over and over, which more
    than halves the generation speed. It is switched back on after each patient.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_REFERENCE = re.compile(rb'"reference":"urn:uuid:([0-9a-f-]{36})"')


def write_ndjson(out_dir: Path | str, patients: int, seed: int, *, start: date | None = None,
                 org_name: str = DEFAULT_ORG, years: float = HISTORY_YEARS) -> dict[str, int]:
    """Write Bulk Data NDJSON (``Patient.ndjson``, ``Observation.ndjson``...) into ``out_dir``.

    Resources get their ``urn:uuid`` as id and refer to each other as ``Type/id``; the
    organisation and clinicians appear once. Returns the number of resources per type.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    counts: dict[str, int] = {}
    seen: set[str] = set()
    try:
        for bundle in generate(patients, seed, start=start, org_name=org_name, years=years):
            types = {e["fullUrl"][9:]: e["resource"]["resourceType"] for e in bundle["entry"]}

            def local(m: re.Match[bytes], types: dict[str, str] = types) -> bytes:
                rid = m.group(1).decode()
                return b'"reference":"' + f"{types[rid]}/{rid}".encode() + b'"'

            for entry in bundle["entry"]:
                rid = entry["fullUrl"][9:]
                resource = entry["resource"]
                rtype = resource["resourceType"]
                if rtype in ("Organization", "Practitioner"):
                    if rid in seen:
                        continue
                    seen.add(rid)
                line = _REFERENCE.sub(local, orjson.dumps({"resourceType": rtype, "id": rid,
                                                           **resource}))
                if rtype not in files:
                    files[rtype] = (out / f"{rtype}.ndjson").open("wb")
                files[rtype].write(line + b"\n")
                counts[rtype] = counts.get(rtype, 0) + 1
    finally:
        for f in files.values():
            f.close()
    return dict(sorted(counts.items()))


#: Resources in the store at which a bulk load first refreshes the planner's statistics.
_FIRST_ANALYZE = 5_000


def load_bundles(db: Database, principal: Principal, bundles: Iterable[dict[str, Any]], *,
                 base: str, workers: int | None = None) -> dict[str, int]:
    """Store each bundle through the FHIR store as one transaction; counts per type.

    Every write is authorised and audited as ``principal``'s, exactly as over HTTP. On
    PostgreSQL two bundles are in flight at once by default (``workers``), each in its own
    transaction, so that one is prepared in Python while the database writes the other; the
    store makes concurrent conditional creates safe. SQLite takes one at a time (it has one
    writer).

    The planner's statistics are refreshed each time the store has doubled since the last
    refresh (``ANALYZE``, a second or so). Each bundle's conditional creates search the
    store, and a plan made from the statistics of a smaller store gets slower as it grows:
    without autovacuum, a 10,000-patient load fell from 2,000 to 500 resources/s before a
    single ANALYZE brought it back. Autovacuum would refresh them too, but later, and not
    where it is switched off.
    """
    from sqlalchemy import func, select

    from careplane.records.bundles import process_bundle
    from careplane.records.maintenance import analyze
    from careplane.records.models import resource as stored_resources

    if workers is None:
        workers = 2 if db.engine.dialect.name == "postgresql" else 1

    def store(bundle: dict[str, Any]) -> list[str]:
        with db.session() as session:
            response = process_bundle(session, principal, bundle, base=base,
                                      max_entries=len(bundle["entry"]))
        return [entry["resource"]["resourceType"] for entry in response["entry"]
                if entry["response"]["status"].startswith("201")]

    counts: dict[str, int] = {}
    with db.session() as session:
        stored = session.scalar(select(func.count()).select_from(stored_resources)) or 0
    next_analyze = max(2 * stored, _FIRST_ANALYZE)
    loaded = 0

    def tally(types: list[str]) -> None:
        nonlocal loaded, next_analyze
        for rtype in types:
            counts[rtype] = counts.get(rtype, 0) + 1
        loaded += len(types)
        if stored + loaded >= next_analyze:
            analyze(db)
            next_analyze = 2 * (stored + loaded)

    if workers <= 1:
        for bundle in bundles:
            tally(store(bundle))
        return dict(sorted(counts.items()))
    with ThreadPoolExecutor(workers) as pool:
        in_flight: deque[Future[list[str]]] = deque()
        for bundle in bundles:  # a bounded window: the population is generated lazily
            in_flight.append(pool.submit(store, bundle))
            if len(in_flight) >= 2 * workers:
                tally(in_flight.popleft().result())
        while in_flight:
            tally(in_flight.popleft().result())
    return dict(sorted(counts.items()))


def synth_command(
    patients: Annotated[int, typer.Option("--patients", "-n", min=0,
                                          help="how many patients")] = 100,
    seed: Annotated[int, typer.Option(help="the same seed makes the same patients")] = 1,
    out: Annotated[Path | None, typer.Option(
        help="write Bulk Data NDJSON files (Patient.ndjson, Observation.ndjson...) here")] = None,
    load: Annotated[bool, typer.Option(
        "--load", help="store the patients in this installation's FHIR store")] = False,
    as_user: Annotated[str, typer.Option(
        "--as", help="with --load: the user who creates the records (their organisation "
                     "owns them)")] = "admin",
    org: Annotated[str | None, typer.Option(
        help="with --load: the organisation slug, when the user belongs to several")] = None,
    start: Annotated[datetime | None, typer.Option(
        formats=["%Y-%m-%d"], help="the simulated today (default: today)")] = None,
    years: Annotated[float, typer.Option(
        min=0.1, help="how many years of history before today each chart covers")]
    = HISTORY_YEARS,
    org_name: Annotated[str, typer.Option(help="the hospital named in the records")]
    = DEFAULT_ORG,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="data directory (default: $CAREPLANE_DATA_DIR or ./data)")] = None,
) -> None:
    """Make synthetic patients as FHIR R4: NDJSON files, the store, or bundles on stdout."""
    day = start.date() if start is not None else None
    began = time.perf_counter()
    summary: dict[str, Any] = {"patients": patients, "seed": seed}
    if out is not None:
        summary["ndjson"] = {"dir": str(out), "resources": write_ndjson(
            out, patients, seed, start=day, org_name=org_name, years=years)}
    if load:
        summary["loaded"] = _load_command(
            generate(patients, seed, start=day, org_name=org_name, years=years), as_user, org,
            data_dir)
    if out is None and not load:
        for bundle in generate(patients, seed, start=day, org_name=org_name, years=years):
            sys.stdout.buffer.write(orjson.dumps(bundle) + b"\n")
        sys.stdout.flush()
        return
    summary["seconds"] = round(time.perf_counter() - began, 2)
    typer.echo(json.dumps(summary, indent=2))


def _load_command(bundles: Iterable[dict[str, Any]], as_user: str, org: str | None,
                  data_dir: Path | None) -> dict[str, int]:
    from sqlalchemy import select

    from careplane.platform.db import Database, DatabaseUnavailable, MigrationRequired, migrate
    from careplane.records.errors import FhirError
    from careplane.security.identity import (
        IdentityError,
        get_org,
        issue_token,
        resolve_token,
        revoke_token,
    )
    from careplane.security.models import User
    from careplane.settings import SettingsError, load_settings

    def fail(message: str) -> typer.Exit:
        typer.echo(f"careplane: error: {message}", err=True)
        return typer.Exit(2)

    try:
        settings = load_settings(**({"data_dir": data_dir} if data_dir else {}))
    except SettingsError as exc:
        raise fail(str(exc)) from None
    db = Database(settings.db_url)
    try:
        db.ping()
        migrate(db, only_if_new=True)
        with db.session() as session:
            user = session.scalar(select(User).where(User.username == as_user))
            if user is None:
                raise fail(f"no user {as_user!r} (create one with `careplane user add`)")
            org_id = get_org(session, org).id if org else None
            issued = issue_token(session, user, kind="bearer", lifetime=timedelta(hours=12),
                                 org_id=org_id, name="careplane synth --load")
            principal = resolve_token(session, issued.token, kind="bearer")
        if principal is None:
            raise fail(f"user {as_user!r} cannot act (inactive, or no role in the organisation)")
        from careplane.platform import heap

        heap.settle()  # a long bulk load, as a server: see platform.heap
        try:
            return load_bundles(db, principal, bundles,
                                base=f"http://{settings.host}:{settings.port}/fhir")
        finally:
            with db.session() as session:
                revoke_token(session, issued.token_id)
    except (DatabaseUnavailable, MigrationRequired, IdentityError) as exc:
        raise fail(str(exc)) from None
    except FhirError as exc:
        raise fail(f"the store refused a patient: {exc.outcome()}") from None
    finally:
        db.dispose()
