#!/usr/bin/env python3
"""Extract what careplane's FHIR server needs from the published R4 package.

careplane derives its search indexes from the specification's own SearchParameters instead of
a hand-written list, so that every parameter the spec defines is supported the same way and an
error in one is an error in the data, fixed by re-running this script. The source is the npm
package ``hl7.fhir.r4.examples@4.0.1`` (it carries the definitions as well as the examples).

Two commands:

``spec``
    writes ``src/careplane/records/spec/search_parameters.json``: every SearchParameter (code,
    type, bases, FHIRPath expression and its per-type split, xpathUsage, targets ("*" for
    Reference(Any), listed once as ``any_target``),
    multipleOr/And, comparators, modifiers, chains, resolved composite components), the five
    CompartmentDefinitions, the resource type names, and each type's reference-typed element
    paths. Descriptions and narrative are left out; the file is committed and read at run
    time by ``careplane.records.spec``.
``examples``
    writes the package's example resources, one compact JSON resource per line, gzipped, for
    conformance tests. It refuses to write more than ``--max-bytes`` (8 MB by default).

Without ``--package`` the script runs ``npm pack`` into a temporary directory. ``--package``
takes the ``.tgz`` or an unpacked directory (the ``package/`` folder or its parent).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE_NAME = "hl7.fhir.r4.examples"
PACKAGE_VERSION = "4.0.1"
FORMAT = 1
SP_URL_PREFIX = "http://hl7.org/fhir/SearchParameter/"
SD_URL_PREFIX = "http://hl7.org/fhir/StructureDefinition/"

REPO = Path(__file__).resolve().parents[1]
SPEC_OUT = REPO / "src" / "careplane" / "records" / "spec" / "search_parameters.json"
EXAMPLES_OUT = REPO / "tests" / "records" / "data" / "r4_examples.ndjson.gz"
DEFAULT_MAX_BYTES = 8_000_000

# The conformance and terminology modules of R4: definitions, not example care data.
DEFINITIONAL_TYPES = frozenset({
    "CapabilityStatement", "CodeSystem", "CompartmentDefinition", "ConceptMap",
    "ExampleScenario", "GraphDefinition", "ImplementationGuide", "MessageDefinition",
    "NamingSystem", "OperationDefinition", "SearchParameter", "StructureDefinition",
    "StructureMap", "TerminologyCapabilities", "ValueSet",
})

Json = dict[str, Any]

# The type operand of as/is/ofType, in function or operator form: checked against FHIR's types.
_CAST = re.compile(r"(?:\b(?:as|is|ofType)\s*\(\s*|\s(?:as|is)\s+)([A-Za-z][A-Za-z0-9]*)")


def _load_expressions() -> ModuleType:
    """Load careplane's FHIRPath union splitter straight from its file.

    Importing it as ``careplane.records.spec.expressions`` would import the whole careplane
    package (the web app and its dependencies); the splitter itself needs only the standard
    library, so the script works from a bare checkout with any Python 3.11.
    """
    path = REPO / "src" / "careplane" / "records" / "spec" / "expressions.py"
    spec = importlib.util.spec_from_file_location("_careplane_fhirpath_union", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Package:
    """The JSON files of an npm FHIR package, from its ``.tgz`` or an unpacked directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise SystemExit(f"{path} does not exist")
        if path.is_dir() and (path / "package" / "package.json").is_file():
            self.path = path / "package"
        if not (self.path.is_dir() or tarfile.is_tarfile(self.path)):
            raise SystemExit(f"{path} is neither a package directory nor a .tgz")

    def files(self, wanted: Callable[[str], bool] = lambda _name: True) -> Iterator[
        tuple[str, bytes]
    ]:
        """(file name, content) for each top-level ``*.json`` file that ``wanted`` accepts,
        in name order so that everything written from it is reproducible."""
        if self.path.is_dir():
            for f in sorted(self.path.glob("*.json")):
                if wanted(f.name):
                    yield f.name, f.read_bytes()
            return
        found: dict[str, bytes] = {}
        with tarfile.open(self.path, "r:gz") as tf:
            for member in tf:
                parts = member.name.split("/")
                if (
                    member.isfile()
                    and len(parts) == 2
                    and parts[0] == "package"
                    and parts[1].endswith(".json")
                    and wanted(parts[1])
                ):
                    fh = tf.extractfile(member)
                    if fh is not None:
                        found[parts[1]] = fh.read()
        yield from sorted(found.items())

    def manifest(self) -> Json:
        for _name, data in self.files(lambda n: n == "package.json"):
            manifest: Json = json.loads(data)
            return manifest
        raise SystemExit(f"{self.path} has no package.json")


def npm_pack(dest: Path) -> Path:
    """Fetch the package tarball with npm (the only network step) and return its path."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed: install it or pass --package PATH")
    subprocess.run(
        [npm, "pack", f"{PACKAGE_NAME}@{PACKAGE_VERSION}", "--silent"],
        cwd=dest, check=True, stdout=subprocess.DEVNULL,
    )
    tarballs = sorted(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise SystemExit(f"npm pack left {len(tarballs)} tarballs in {dest}")
    return tarballs[0]


def _check_manifest(pkg: Package) -> Json:
    manifest = pkg.manifest()
    if (manifest.get("name"), manifest.get("version")) != (PACKAGE_NAME, PACKAGE_VERSION):
        raise SystemExit(
            f"expected {PACKAGE_NAME}@{PACKAGE_VERSION}, found "
            f"{manifest.get('name')}@{manifest.get('version')}"
        )
    return manifest


def _entries(bundle: Json) -> list[Json]:
    return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]


def _type_from_url(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _reference_paths(sd: Json) -> dict[str, list[str]]:
    """Reference-typed elements of one resource, as JSON key paths below the resource.

    A choice element that allows a Reference is named by its JSON key (``medication[x]`` ->
    ``medicationReference``). Elements reached only through a ``contentReference`` (recursive
    structures such as ``Questionnaire.item.item``) and references inside data types
    (``Identifier.assigner``) are not expanded.
    """
    out: dict[str, list[str]] = {}
    for element in sd["snapshot"]["element"]:
        refs = [t for t in element.get("type", []) if t.get("code") == "Reference"]
        if not refs:
            continue
        path: str = element["path"].split(".", 1)[1]
        if path.endswith("[x]"):
            path = path[:-3] + "Reference"
        targets = [_type_from_url(p) for t in refs for p in t.get("targetProfile", [])]
        out[path] = targets or ["Resource"]
    return out


def extract_spec(pkg: Package) -> tuple[Json, list[str]]:
    """Build the data file's content; also return notes on oddities found in the spec."""
    manifest = _check_manifest(pkg)
    union = _load_expressions()
    notes: list[str] = []

    raw: dict[str, bytes] = dict(pkg.files(
        lambda n: n.startswith("SearchParameter-")
        or n in ("Bundle-searchParams.json", "Bundle-resources.json", "Bundle-types.json")
    ))
    data_types = {r["type"] for r in _entries(json.loads(raw.pop("Bundle-types.json")))
                  if r["resourceType"] == "StructureDefinition"}
    core_urls = {r["url"] for r in _entries(json.loads(raw.pop("Bundle-searchParams.json")))}
    definitions = _entries(json.loads(raw.pop("Bundle-resources.json")))
    params: list[Json] = [json.loads(data) for data in raw.values()]
    by_url = {p["url"]: p for p in params}
    if len(by_url) != len(params):
        raise SystemExit("two SearchParameter files share a url")
    missing_core = core_urls - by_url.keys()
    if missing_core:
        raise SystemExit(f"core SearchParameters without a file: {sorted(missing_core)}")

    # Resource types: the resource StructureDefinitions that specialise (not profile) a base.
    resource_sds = [
        r for r in definitions
        if r["resourceType"] == "StructureDefinition" and r.get("kind") == "resource"
        and r.get("derivation", "specialization") == "specialization"
        and r["url"] == SD_URL_PREFIX + r["type"]
    ]
    type_names = {r["type"] for r in resource_sds}
    concrete = sorted((r for r in resource_sds if not r.get("abstract")), key=lambda r: r["type"])
    resource_types = {r["type"]: _type_from_url(r["baseDefinition"]) for r in concrete}

    any_target = sorted(t for t in resource_types if t != "Parameters")
    known_types = type_names | data_types
    records: list[Json] = []
    for p in sorted(params, key=lambda p: p["url"]):
        url: str = p["url"]
        pid = url.removeprefix(SP_URL_PREFIX)
        origin = (
            "core" if url in core_urls
            else "example" if pid == "example" or pid.startswith("example-")
            else "supplementary"
        )
        rec: Json = {"id": pid}
        if not url.startswith(SP_URL_PREFIX):
            rec["url"] = url
        rec["code"] = p["code"]
        rec["type"] = p["type"]
        rec["base"] = list(p.get("base", []))
        expression = p.get("expression")
        if expression:
            rec["expression"] = expression
            relative = [m for m in union.split_union(expression)
                        if union.root_name(m) not in type_names]
            if relative:
                notes.append(f"{pid} ({origin}): {relative} not rooted at a resource type")
            per_base = {}
            for base in rec["base"]:
                part = union.expression_for_type(expression, base, type_names)
                if part is None:
                    notes.append(f"{pid} ({origin}): no part of {expression!r} applies to {base}")
                else:
                    per_base[base] = part
            # Absent when the whole expression applies unchanged to every base.
            if any(per_base.get(b) != expression for b in rec["base"]):
                rec["expressions"] = per_base
        else:
            notes.append(f"{pid} ({origin}, {p['type']}): no FHIRPath expression")
        if not rec["base"]:
            notes.append(f"{pid} ({origin}): no base resource type")
        if "xpathUsage" in p:
            rec["xpath_usage"] = p["xpathUsage"]
        if p.get("target"):
            # Reference(Any) is spelt out as every type but Parameters: store it as "*".
            rec["target"] = "*" if list(p["target"]) == any_target else list(p["target"])
        for key in ("comparator", "modifier", "chain"):
            if p.get(key):
                rec[key] = list(p[key])
        for src, dst in (("multipleOr", "multiple_or"), ("multipleAnd", "multiple_and")):
            if src in p:
                rec[dst] = bool(p[src])
        if p.get("component"):
            comps = []
            for c in p["component"]:
                d = by_url.get(c["definition"])
                if d is None:
                    raise SystemExit(f"{pid}: component {c['definition']} is not in the package")
                comps.append({"definition": c["definition"].removeprefix(SP_URL_PREFIX),
                              "code": d["code"], "type": d["type"],
                              "expression": c["expression"]})
            rec["component"] = comps
        if origin != "core":
            rec["origin"] = origin
        for expr in [expression or ""] + [c["expression"] for c in rec.get("component", [])]:
            for name in _CAST.findall(expr):
                if name not in known_types:
                    notes.append(f"{pid} ({origin}): {name!r} in {expr!r} is not a FHIR type")
        records.append(rec)

    # One core parameter per (base, code); a Resource-level code never repeats on a type.
    seen: Counter[tuple[str, str]] = Counter(
        (b, r["code"]) for r in records if "origin" not in r for b in r["base"]
    )
    clashes = [k for k, n in seen.items() if n > 1]
    if clashes:
        raise SystemExit(f"core SearchParameters clash on (base, code): {clashes}")
    general = {r["code"] for r in records if "origin" not in r
               and set(r["base"]) & {"Resource", "DomainResource"}}
    shadowed = sorted(k for k in seen if k[1] in general and k[0] in resource_types)
    if shadowed:
        notes.append(f"type-specific parameters that shadow Resource-level ones: {shadowed}")

    compartments: dict[str, dict[str, list[str]]] = {}
    codes_by_type: dict[str, set[str]] = {}
    for r in records:
        for b in r["base"]:
            codes_by_type.setdefault(b, set()).add(r["code"])
    for cd in sorted((r for r in definitions if r["resourceType"] == "CompartmentDefinition"),
                     key=lambda r: r["code"]):
        members = {m["code"]: list(m["param"]) for m in cd["resource"] if m.get("param")}
        compartments[cd["code"]] = dict(sorted(members.items()))
        for rtype, codes in members.items():
            if rtype not in resource_types:
                notes.append(f"compartment {cd['code']}: {rtype} is not a resource type")
            for code in codes:
                if code != "{def}" and code not in codes_by_type.get(rtype, set()):
                    notes.append(f"compartment {cd['code']}: {rtype} has no parameter {code!r}")

    reference_paths = {r["type"]: _reference_paths(r) for r in concrete}

    data: Json = {
        "format": FORMAT,
        "source": {"package": manifest["name"], "version": manifest["version"],
                   "fhir_version": manifest.get("fhirVersions", [PACKAGE_VERSION])[0]},
        "resource_types": resource_types,
        "any_target": any_target,
        "search_parameters": records,
        "compartments": compartments,
        "reference_paths": reference_paths,
    }
    counts = Counter(r.get("origin", "core") for r in records)
    notes.insert(0, f"{len(records)} SearchParameters ({dict(counts)}), {len(resource_types)} "
                    f"resource types, {len(compartments)} compartments, "
                    f"{sum(len(v) for v in reference_paths.values())} reference paths")
    return data, notes


def dump_spec(data: Json) -> str:
    """Compact JSON with one parameter, compartment or resource type per line.

    Small enough to commit, and a re-extraction shows as a readable line diff.
    """
    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def block(items: list[str], open_: str, close: str) -> str:
        return open_ + "\n" + ",\n".join(items) + "\n" + close

    lines = [
        f'"format":{one(data["format"])}',
        f'"source":{one(data["source"])}',
        f'"resource_types":{one(data["resource_types"])}',
        f'"any_target":{one(data["any_target"])}',
        '"search_parameters":' + block([one(r) for r in data["search_parameters"]], "[", "]"),
        '"compartments":' + block(
            [f"{one(k)}:{one(v)}" for k, v in data["compartments"].items()], "{", "}"),
        '"reference_paths":' + block(
            [f"{one(k)}:{one(v)}" for k, v in data["reference_paths"].items()], "{", "}"),
    ]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _is_definitional(resource: Json) -> bool:
    rtype = resource.get("resourceType")
    if rtype in DEFINITIONAL_TYPES:
        return True
    entries = _entries(resource) if rtype == "Bundle" else []
    return bool(entries) and all(e.get("resourceType") in DEFINITIONAL_TYPES for e in entries)


def write_examples(pkg: Package, out: Path, subset: str, max_bytes: int) -> int:
    """Write the examples as gzipped NDJSON; return 0, or 2 when they exceed ``max_bytes``."""
    _check_manifest(pkg)
    raw_bytes = 0
    lines: list[bytes] = []
    counts: Counter[str] = Counter()
    for _name, data in pkg.files(lambda n: n != "package.json"):
        resource = json.loads(data)
        if subset == "care" and _is_definitional(resource):
            continue
        raw_bytes += len(data)
        counts[resource.get("resourceType", "?")] += 1
        lines.append(json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode())
    payload = b"\n".join(lines) + b"\n"
    packed = gzip.compress(payload, compresslevel=9, mtime=0)
    print(f"{sum(counts.values())} resources ({subset}): {raw_bytes:,} bytes as published, "
          f"{len(payload):,} as compact NDJSON, {len(packed):,} gzipped", file=sys.stderr)
    if len(packed) > max_bytes:
        print(f"not written: {len(packed):,} bytes is over --max-bytes {max_bytes:,}",
              file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(packed)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path,
                        help="the package .tgz or unpacked directory (default: npm pack)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_spec = sub.add_parser("spec", help="write the search parameter data file")
    p_spec.add_argument("--out", type=Path, default=SPEC_OUT)
    p_ex = sub.add_parser("examples", help="write the example resources as .ndjson.gz")
    p_ex.add_argument("--out", type=Path, default=EXAMPLES_OUT)
    p_ex.add_argument("--subset", choices=("all", "care"), default="all",
                      help="care: leave out conformance/terminology resources and bundles "
                           "made only of them")
    p_ex.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fhir-extract-") as tmp:
        pkg = Package(args.package if args.package else npm_pack(Path(tmp)))
        if args.command == "examples":
            return write_examples(pkg, args.out, args.subset, args.max_bytes)
        data, notes = extract_spec(pkg)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(dump_spec(data), encoding="utf-8")
        for note in notes:
            print(note, file=sys.stderr)
        print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
