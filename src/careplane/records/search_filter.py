"""The ``_filter`` parameter: FHIR's filter expression language over this server's parameters.

``_filter=name co "peter" and (birthdate ge 1970-01-01 or not (gender eq male))``

An expression is a test ``parameter op value``, a parenthesised expression, ``not (...)``, or
expressions joined by ``and``/``or`` (``not`` binds tightest, then ``and``, then ``or``).
Values are a bare word or a quoted string (``"..."`` with ``\\"`` and ``\\\\`` escapes). The
parameter is any search parameter of the searched type (chains ``subject.name`` included).
Each test becomes the Criterion an ordinary query would give:

=========  ==========================================================================
type       operators
=========  ==========================================================================
string     eq (whole value, case and accents folded), ne, co, sw, ew
token      eq, ne (``system|code`` as usual)
date       eq ne gt lt ge le sa eb ap, as the search prefixes
number     the same
quantity   the same (``5.4|http://unitsofmeasure.org|mg``)
reference  eq, ne
uri        eq, ne, sw (``:below``)
_text      eq, co (the words of the value; also _content)
any        pr true|false (the parameter has a value, or has none)
=========  ==========================================================================

What is outside this subset (``po ss sb in ni re``, ``[...]`` filters on a path, an operator a
type does not take) is a 400 OperationOutcome naming it, whatever ``Prefer: handling`` says:
dropping part of a logical expression would change what it means.
"""

from __future__ import annotations

import dataclasses
import re

from careplane.records.errors import FhirError
from careplane.records.search_params import Criterion, FilterExpr, parse_one

__all__ = ["parse_filter"]

_OPS = frozenset({"eq", "ne", "co", "sw", "ew", "gt", "lt", "ge", "le", "ap", "sa", "eb",
                  "pr", "po", "ss", "sb", "in", "ni", "re"})
_UNSUPPORTED = frozenset({"po", "ss", "sb", "in", "ni", "re"})
_PREFIX_OPS = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "ap", "sa", "eb"})
_BY_TYPE: dict[str, frozenset[str]] = {
    "string": frozenset({"eq", "ne", "co", "sw", "ew", "pr"}),
    "token": frozenset({"eq", "ne", "pr"}),
    "date": _PREFIX_OPS | {"pr"},
    "number": _PREFIX_OPS | {"pr"},
    "quantity": _PREFIX_OPS | {"pr"},
    "reference": frozenset({"eq", "ne", "pr"}),
    "uri": frozenset({"eq", "ne", "sw", "pr"}),
    "composite": frozenset({"eq", "pr"}),
    "fulltext": frozenset({"eq", "co"}),  # _text, _content: the value's words
}
_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^\s()"]+))')
MAX_TESTS = 50


def _bad(message: str) -> FhirError:
    return FhirError.of(400, "invalid", f"_filter: {message}")


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: ``(``, ``)``, ``q`` (a quoted string), ``w`` (a word)."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _bad(f"cannot read {text[pos:pos + 20]!r}")
        if m.group(1):
            out.append(("(", "("))
        elif m.group(2):
            out.append((")", ")"))
        elif m.group(3) is not None:
            out.append(("q", re.sub(r"\\(.)", r"\1", m.group(3))))
        else:
            out.append(("w", m.group(4)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, resource_type: str, text: str) -> None:
        self.rtype = resource_type
        self.toks = _tokens(text)
        self.i = 0
        self.tests = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise _bad("the expression ends too early")
        self.i += 1
        return tok

    def word(self, *words: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "w" and tok[1].lower() in words:
            self.i += 1
            return True
        return False

    def parse(self) -> Criterion | FilterExpr:
        expr = self.disjunction()
        if self.peek() is not None:
            raise _bad(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return expr

    def disjunction(self) -> Criterion | FilterExpr:
        parts = [self.conjunction()]
        while self.word("or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else FilterExpr("or", tuple(parts))

    def conjunction(self) -> Criterion | FilterExpr:
        parts = [self.unary()]
        while self.word("and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else FilterExpr("and", tuple(parts))

    def unary(self) -> Criterion | FilterExpr:
        if self.word("not"):
            if self.peek() != ("(", "("):
                raise _bad("'not' is followed by a parenthesised expression")
            return FilterExpr("not", (self.unary(),))
        tok = self.peek()
        if tok == ("(", "("):
            self.take()
            inner = self.disjunction()
            if self.peek() != (")", ")"):
                raise _bad("a '(' is not closed")
            self.take()
            return inner
        return self.test()

    def test(self) -> Criterion | FilterExpr:
        kind, path = self.take()
        if kind != "w":
            raise _bad(f"expected a parameter name, found {path!r}")
        if "[" in path or "]" in path:
            raise FhirError.of(400, "not-supported", f"_filter: {path!r}: filters on a "
                               "path ([...]) are not supported")
        kind, op = self.take()
        op = op.lower()
        if kind != "w" or op not in _OPS:
            raise _bad(f"{path} {op!r}: expected an operator ({', '.join(sorted(_OPS))})")
        if op in _UNSUPPORTED:
            raise FhirError.of(400, "not-supported",
                               f"_filter: the operator {op!r} is not supported")
        kind, value = self.take()
        if kind not in ("w", "q"):
            raise _bad(f"{path} {op}: expected a value")
        self.tests += 1
        if self.tests > MAX_TESTS:
            raise FhirError.of(400, "too-costly", f"_filter: at most {MAX_TESTS} tests")
        return self.criterion(path, op, value)

    def criterion(self, path: str, op: str, value: str) -> Criterion | FilterExpr:
        name = path
        if op == "pr":
            if value not in ("true", "false"):
                raise _bad(f"{path} pr takes true or false")
            return self.leaf(f"{name}:missing", "false" if value == "true" else "true", op)
        escaped = value.replace("\\", "\\\\").replace(",", "\\,")
        probe = self.leaf(name, "x" if op in ("co", "sw", "ew") else escaped, op,
                          check_only=True)
        ptype = probe.type
        if op == "ne" and ptype not in ("date", "number", "quantity"):
            return FilterExpr("not", (self.criterion(path, "eq", value),))
        if ptype in ("date", "number", "quantity"):
            return self.leaf(name, f"{op}{escaped}", op)
        if ptype == "string":
            if op == "co":
                return self.leaf(f"{name}:contains", escaped, op)
            if op == "sw":
                return self.leaf(name, escaped, op)
            crit = self.leaf(name, escaped, op)
            return _with_modifier(crit, "filter-" + op)
        if ptype == "uri" and op == "sw":
            return self.leaf(f"{name}:below", escaped, op)
        return self.leaf(name, escaped, op)

    def leaf(self, name: str, raw: str, op: str, check_only: bool = False) -> Criterion:
        crit = parse_one(self.rtype, name, raw)
        ptype = _leaf_type(crit)
        if not check_only and op not in _BY_TYPE.get(ptype, frozenset({"pr"})):
            raise FhirError.of(400, "not-supported", f"_filter: {name.split(':')[0]} is a "
                               f"{ptype} parameter, which does not take {op!r}")
        return crit


def _leaf_type(crit: Criterion) -> str:
    """The type of the parameter a (possibly chained) criterion finally tests."""
    while crit.chains:
        crit = crit.chains[0][1]
    return crit.type


def _with_modifier(crit: Criterion, modifier: str) -> Criterion:
    if crit.chains:
        return dataclasses.replace(crit, chains=tuple(
            (t, _with_modifier(inner, modifier)) for t, inner in crit.chains))
    return dataclasses.replace(crit, modifier=modifier)


def parse_filter(resource_type: str, text: str) -> Criterion:
    """``_filter``'s expression as one Criterion carrying the logic (see the module doc)."""
    if not text.strip():
        raise _bad("the expression is empty")
    expr = _Parser(resource_type, text).parse()
    if isinstance(expr, Criterion):
        expr = FilterExpr("and", (expr,))
    return Criterion("_filter", "filter", None, filter=expr)
