#!/usr/bin/env python3
"""Build careplane's de-identification profile data from DICOM PS3.15 Table E.1-1.

careplane applies the Basic Application Level Confidentiality Profile from data rather than
from a hand-kept list in code, so that a new revision of the standard is taken in by re-running
this script, and a wrong action is a wrong row in one reviewed file.

The input is a machine-readable rendering of Table E.1-1: the
``confidentiality_profile_attributes.json`` file of Innolitics' ``dicom-standard`` data set
(MIT licence), which is parsed from the published standard. The PyPI package
``dicom-standard`` ships it (revision of early 2020, 433 rows) under
``<prefix>/standard/``; newer revisions of the same file (2024b: 621 rows) have the same shape.
The script only re-shapes facts from the standard: one compact entry per attribute with its
basic-profile action and the action of each option column that names one.

Output: ``src/careplane/imaging/spec/deid_profile.json``, read at run time by
``careplane.imaging.deidentify``. Tags are written as eight upper-case hex digits, with ``X``
where the table gives a repeating group ("50XXXXXX" for curve data). The one row for all
private attributes goes to ``private``.

Usage::

    tools/deid_profile_extract.py --source PATH/confidentiality_profile_attributes.json \
        --revision 2024b
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "careplane" / "imaging" / "spec" / "deid_profile.json"

# Column keys of the source file -> careplane option names (the values of
# careplane.imaging.deidentify.Option, plus the options careplane records but does not apply).
OPTION_COLUMNS: dict[str, str] = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
OPTION_TITLES: dict[str, str] = {
    "retain_safe_private": "Retain Safe Private Option",
    "retain_uids": "Retain UIDs Option",
    "retain_device_identity": "Retain Device Identity Option",
    "retain_institution_identity": "Retain Institution Identity Option",
    "retain_patient_characteristics": "Retain Patient Characteristics Option",
    "retain_longitudinal_full_dates": "Retain Longitudinal Temporal Information Full Dates Option",
    "retain_longitudinal_modified_dates":
        "Retain Longitudinal Temporal Information Modified Dates Option",
    "clean_descriptors": "Clean Descriptors Option",
    "clean_structured_content": "Clean Structured Content Option",
    "clean_graphics": "Clean Graphics Option",
}
BASIC_ACTIONS = {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
OPTION_ACTIONS = {"K", "C", "X", "Z", "D", "U"}
TAG_RE = re.compile(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$")
PRIVATE_NAME = "Private Attributes"
NOTE_RE = re.compile(r"\s*\(see Note \d+\)", re.IGNORECASE)


def clean_name(name: str) -> str:
    """Attribute name without the table's footnote references and line breaks."""
    return " ".join(NOTE_RE.sub("", name).split())


def convert(rows: list[dict[str, str]], revision: str) -> dict[str, object]:
    """Re-shape the source rows; refuse anything that is not a known tag or action code.

    Refusing instead of skipping keeps a change in the source format from silently dropping
    attributes from the profile.
    """
    attributes: dict[str, dict[str, object]] = {}
    private: dict[str, object] | None = None
    for row in rows:
        basic = row["basicProfile"].strip()
        if basic not in BASIC_ACTIONS:
            raise ValueError(f"{row['tag']} {row['name']}: unknown basic action {basic!r}")
        options: dict[str, str] = {}
        for column, option in OPTION_COLUMNS.items():
            action = row.get(column, "").strip()
            if not action:
                continue
            if action not in OPTION_ACTIONS:
                raise ValueError(f"{row['tag']} {row['name']}: unknown {column} action {action!r}")
            options[option] = action
        entry: dict[str, object] = {"name": clean_name(row["name"]), "basic": basic}
        if options:
            entry["options"] = options
        if clean_name(row["name"]) == PRIVATE_NAME or "ODD" in row["tag"].upper():
            private = entry
            continue
        match = TAG_RE.match(row["tag"].strip().upper())
        if match is None:
            raise ValueError(f"unparsed tag {row['tag']!r} ({row['name']})")
        key = match.group(1) + match.group(2)
        if key in attributes:
            # Some older revisions list an attribute twice; the first row stands, and the
            # difference is shown so that a reviewer can check it against the standard.
            if attributes[key] != entry:
                print(f"warning: {row['tag']} listed twice; kept {attributes[key]}, "
                      f"dropped {entry}", file=sys.stderr)
            continue
        attributes[key] = entry
    if private is None:
        raise ValueError("the source has no row for private attributes")
    return {
        "standard": f"DICOM PS3.15 {revision}, Annex E, Table E.1-1",
        "actions": {
            "X": "remove", "Z": "zero length or dummy", "D": "non-zero-length dummy",
            "K": "keep", "C": "clean", "U": "replace UID consistently",
            "X/Z": "X unless Z is required by the IOD", "X/D": "X unless D is required",
            "Z/D": "Z unless D is required", "X/Z/D": "X unless Z or D is required",
            "X/Z/U*": "X unless Z or a consistent replacement of contained UIDs is required",
        },
        "options": OPTION_TITLES,
        "private": private,
        "attributes": dict(sorted(attributes.items())),
    }


def render(profile: dict[str, object]) -> str:
    """One attribute per line: reviewable in a diff, still small."""
    head = {k: v for k, v in profile.items() if k != "attributes"}
    attributes = profile["attributes"]
    assert isinstance(attributes, dict)
    lines = [json.dumps(head, indent=1)[:-2] + ',\n "attributes": {']
    items = [f'  "{key}": {json.dumps(entry, separators=(",", ":"))}'
             for key, entry in attributes.items()]
    lines.append(",\n".join(items))
    lines.append(" }\n}\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", type=Path, default=Path(sys.prefix) / "standard"
                        / "confidentiality_profile_attributes.json",
                        help="confidentiality_profile_attributes.json (default: the one the "
                             "dicom-standard package installs under <prefix>/standard/)")
    parser.add_argument("--revision", required=True, help="standard revision, e.g. 2024b")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = json.loads(args.source.read_text(encoding="utf-8"))
    profile = convert(rows, args.revision)
    text = render(profile)
    json.loads(text)  # the hand-laid layout must still be valid JSON
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    attributes = profile["attributes"]
    assert isinstance(attributes, dict)
    print(f"wrote {args.out} with {len(attributes)} attributes + the private-attributes row")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
