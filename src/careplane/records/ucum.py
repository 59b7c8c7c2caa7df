"""Just enough UCUM to compare quantities written in different units of the same kind.

FHIR asks a server to match ``value-quantity=5.4|http://unitsofmeasure.org|mmol/L`` against an
Observation recorded as ``0.0054 mol/L``. This module rewrites a UCUM code made of metric
prefixes, base units and a few common non-metric units, joined by ``.`` and ``/`` with integer
exponents, into a factor and a canonical code built from base units only (``g``, ``m``,
``s``, ``mol``, ``L`` as ``m3``...). Codes it cannot read (arbitrary units in ``[...]``,
annotations in ``{...}``, ``mm[Hg]``) keep their own code as canonical with factor 1, so they
still match themselves exactly.
"""

from __future__ import annotations

import re
from functools import cache

__all__ = ["UCUM_SYSTEM", "canonical"]

UCUM_SYSTEM = "http://unitsofmeasure.org"

_PREFIXES = {
    "Y": 1e24, "Z": 1e21, "E": 1e18, "P": 1e15, "T": 1e12, "G": 1e9, "M": 1e6, "k": 1e3,
    "h": 1e2, "da": 1e1, "d": 1e-1, "c": 1e-2, "m": 1e-3, "u": 1e-6, "n": 1e-9, "p": 1e-12,
    "f": 1e-15, "a": 1e-18, "z": 1e-21, "y": 1e-24,
}
# unit -> (factor, {base unit: exponent}); metric units accept prefixes.
_METRIC: dict[str, tuple[float, dict[str, int]]] = {
    "m": (1.0, {"m": 1}),
    "s": (1.0, {"s": 1}),
    "g": (1.0, {"g": 1}),
    "mol": (1.0, {"mol": 1}),
    "K": (1.0, {"K": 1}),
    "L": (1e-3, {"m": 3}),
    "l": (1e-3, {"m": 3}),
    "Pa": (1e3, {"g": 1, "m": -1, "s": -2}),
    "J": (1e3, {"g": 1, "m": 2, "s": -2}),
    "W": (1e3, {"g": 1, "m": 2, "s": -3}),
    "Hz": (1.0, {"s": -1}),
    "eq": (1.0, {"eq": 1}),
    "U": (1.0, {"U": 1}),
    "cal": (4184.0, {"g": 1, "m": 2, "s": -2}),
    "bar": (1e8, {"g": 1, "m": -1, "s": -2}),
}
_OTHER: dict[str, tuple[float, dict[str, int]]] = {
    "min": (60.0, {"s": 1}),
    "h": (3600.0, {"s": 1}),
    "d": (86400.0, {"s": 1}),
    "wk": (604800.0, {"s": 1}),
    "mo": (2629800.0, {"s": 1}),
    "a": (31557600.0, {"s": 1}),
    "%": (0.01, {}),
    "[lb_av]": (453.59237, {"g": 1}),
    "[oz_av]": (28.349523125, {"g": 1}),
    "[in_i]": (0.0254, {"m": 1}),
    "[ft_i]": (0.3048, {"m": 1}),
    "mm[Hg]": (133322.0, {"g": 1, "m": -1, "s": -2}),
    "[iU]": (1.0, {"[iU]": 1}),
    "[IU]": (1.0, {"[iU]": 1}),
    "1": (1.0, {}),
}
_TERM = re.compile(r"(?P<unit>.*?)(?P<exp>-?\d+)?")


def _atom(text: str) -> tuple[float, dict[str, int]] | None:
    if text in _OTHER:
        return _OTHER[text]
    if text in _METRIC:
        return _METRIC[text]
    for prefix in sorted(_PREFIXES, key=len, reverse=True):
        if text.startswith(prefix) and text[len(prefix):] in _METRIC:
            factor, dims = _METRIC[text[len(prefix):]]
            return _PREFIXES[prefix] * factor, dims
    return None


def _term(text: str) -> tuple[float, dict[str, int]] | None:
    if text.isdigit():
        return float(text), {}
    power = re.fullmatch(r"10\*(-?\d+)", text)
    if power:
        return 10.0 ** int(power.group(1)), {}
    m = _TERM.fullmatch(text)
    if m is None or not m["unit"]:
        return None
    atom = _atom(m["unit"])
    if atom is None:
        return None
    exp = int(m["exp"] or 1)
    factor, dims = atom
    return factor**exp, {k: v * exp for k, v in dims.items()}


@cache
def canonical(code: str) -> tuple[float, str]:
    """(factor, canonical code): ``value * factor`` in the canonical code equals the input.

    ``canonical("mg/dL")`` is ``(10.0, "g.m-3")``; two codes are comparable when their
    canonical codes are equal. ``.`` and ``/`` bind left to right as UCUM says
    (``kg/m.s`` is kg per metre, times seconds). Unknown codes come back as ``(1.0, code)``.
    """
    text = re.sub(r"\{[^}]*\}", "", code.strip()) or "1"
    factor = 1.0
    dims: dict[str, int] = {}
    sign = 1
    for term in re.split(r"([./])", text):
        if term in (".", "/"):
            sign = -1 if term == "/" else 1
            continue
        if term == "":
            continue
        parsed = _term(term)
        if parsed is None:
            return 1.0, code.strip()
        f, d = parsed
        factor *= f**sign
        for k, v in d.items():
            dims[k] = dims.get(k, 0) + v * sign
    units = ".".join(f"{k}{v if v != 1 else ''}" for k, v in sorted(dims.items()) if v)
    return float(f"{factor:.12g}"), units or "1"
