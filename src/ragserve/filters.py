"""Metadata filters: parse a JSON filter into a small typed AST, and a reference evaluator.

Grammar (MongoDB-like, on *document* metadata)::

    filter   := {}                                   match everything
              | {clause, clause, ...}                every clause must hold (implicit $and)
    clause   := "$and": [filter, ...] | "$or": [filter, ...]
              | FIELD: scalar                        shorthand for {"$eq": scalar}
              | FIELD: {OP: operand, ...}            every operator must hold
    OP       := $eq $ne $gt $gte $lt $lte            operand: scalar (ranges: number or string)
              | $in $nin                             operand: non-empty list of scalars (<= 1,024)
              | $exists                              operand: true | false
    FIELD    := name("." name)*                      name: [A-Za-z0-9_-]{1,64}; dots walk objects
    scalar   := string | number | true | false
    number   := an integer in [-2**63, 2**63 - 1] or a finite float  (what SQLite can hold)
    string   := valid Unicode without NUL (no lone surrogates; PostgreSQL stores no NUL)

Limits: at most ``MAX_CLAUSES`` (256) keys per object or filters per ``$and``/``$or`` list,
``MAX_DEPTH`` (16) levels of nesting, ``MAX_IN_VALUES`` (1,024) values per ``$in``/``$nin`` and
``MAX_CONDITIONS`` (1,024) field conditions in the whole filter (so the SQL a backend builds stays
within every engine's limits).

Semantics, shared by every backend (and by :func:`matches`, the reference):

* Types never mix: ``1`` does not equal ``"1"`` or ``true``; ranges compare numbers with numbers
  and strings with strings (so ISO-8601 dates/datetimes in one format compare chronologically).
* A field holding an array matches when *any* element does (``{"tags": "a"}`` finds
  ``{"tags": ["a", "b"]}``). ``$ne`` / ``$nin`` are the negations of ``$eq`` / ``$in``, so they
  also match documents without the field. ``$exists`` is true for any value, including null.
* ``null`` is not a valid operand: use ``$exists``.

Anything else raises :class:`~ragserve.errors.InvalidInput` naming the problem. Field names are
validated here, so backends can build JSON paths from them safely (and still bind them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ragserve.errors import InvalidInput

Scalar = str | int | float | bool
CompareOp = Literal["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]

MAX_DEPTH = 16
MAX_IN_VALUES = 1024
MAX_CLAUSES = 256
MAX_CONDITIONS = 1024
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_COMPARE_OPS: tuple[CompareOp, ...] = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
_ALL_OPS = (*_COMPARE_OPS, "$in", "$nin", "$exists")


@dataclass(frozen=True, slots=True)
class Compare:
    """``field OP value``; ``$ne`` is true when no element of the field equals ``value``."""

    path: tuple[str, ...]
    op: CompareOp
    value: Scalar


@dataclass(frozen=True, slots=True)
class In:
    """``field`` equals one of ``values`` (or, with ``negate``, none of them)."""

    path: tuple[str, ...]
    values: tuple[Scalar, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Exists:
    path: tuple[str, ...]
    exists: bool


@dataclass(frozen=True, slots=True)
class And:
    clauses: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    clauses: tuple[Filter, ...]


Filter = Compare | In | Exists | And | Or


def field_name(path: tuple[str, ...]) -> str:
    return ".".join(path)


def parse_filter(raw: object) -> Filter | None:
    """Validate ``raw`` (decoded JSON) and return its AST; ``None`` or ``{}`` match everything."""
    if raw is None:
        return None
    node = _parse_object(raw, "filter", 0)
    if isinstance(node, And) and not node.clauses:
        return None
    if _conditions(node) > MAX_CONDITIONS:
        raise InvalidInput(f"filter has more than {MAX_CONDITIONS} field conditions in all")
    return node


def _conditions(node: Filter) -> int:
    if isinstance(node, And | Or):
        return sum(_conditions(c) for c in node.clauses)
    return 1


def coerce_filter(value: Filter | Mapping[str, Any] | None) -> Filter | None:
    """Accept an already parsed AST or raw JSON (what store methods take)."""
    if value is None or isinstance(value, Compare | In | Exists | And | Or):
        return value
    return parse_filter(value)


# --------------------------------------------------------------------------- parsing


def _parse_object(raw: object, where: str, depth: int) -> Filter:
    if depth > MAX_DEPTH:
        raise InvalidInput(f"{where}: filter is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{where} must be a JSON object, got {_kind(raw)}")
    if len(raw) > MAX_CLAUSES:
        raise InvalidInput(f"{where} has more than {MAX_CLAUSES} clauses")
    clauses: list[Filter] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            raise InvalidInput(f"{where}: keys must be strings")
        if key in ("$and", "$or"):
            clauses.append(_parse_logical(key, value, f"{where}.{key}", depth))
        elif key.startswith("$"):
            raise InvalidInput(
                f"{where}: unknown top-level operator {key!r}; use $and or $or, "
                f"or put {', '.join(_ALL_OPS)} under a field name"
            )
        else:
            clauses.extend(_parse_field(key, value, where))
    return clauses[0] if len(clauses) == 1 else And(tuple(clauses))


def _parse_logical(op: str, value: object, where: str, depth: int) -> Filter:
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{where} must be a non-empty list of filters")
    if len(value) > MAX_CLAUSES:
        raise InvalidInput(f"{where} has more than {MAX_CLAUSES} filters")
    parts = tuple(_parse_object(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    return And(parts) if op == "$and" else Or(parts)


def _parse_path(key: str, where: str) -> tuple[str, ...]:
    parts = tuple(key.split("."))
    for part in parts:
        if not _NAME.match(part):
            raise InvalidInput(
                f"{where}: invalid field name {key!r}: use letters, digits, '_' or '-' "
                "(at most 64 per name), with '.' between nested names"
            )
    return parts


def _parse_field(key: str, value: object, where: str) -> list[Filter]:
    path = _parse_path(key, where)
    here = f"{where}.{key}"
    if not isinstance(value, Mapping):
        return [Compare(path, "$eq", _scalar(value, here))]
    if not value:
        raise InvalidInput(f"{here}: empty operator object")
    out: list[Filter] = []
    for op, operand in value.items():
        at = f"{here}.{op}"
        if op in ("$eq", "$ne"):
            out.append(Compare(path, op, _scalar(operand, at)))
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            scalar = _scalar(operand, at)
            if isinstance(scalar, bool):
                raise InvalidInput(f"{at}: range operators need a number or a string")
            out.append(Compare(path, op, scalar))
        elif op in ("$in", "$nin"):
            if not isinstance(operand, list) or not operand:
                raise InvalidInput(f"{at} must be a non-empty list of values")
            if len(operand) > MAX_IN_VALUES:
                raise InvalidInput(f"{at} has more than {MAX_IN_VALUES} values")
            values = tuple(_scalar(v, f"{at}[{i}]") for i, v in enumerate(operand))
            out.append(In(path, values, negate=op == "$nin"))
        elif op == "$exists":
            if not isinstance(operand, bool):
                raise InvalidInput(f"{at} must be true or false")
            out.append(Exists(path, operand))
        else:
            raise InvalidInput(
                f"{here}: unknown operator {op!r}; valid operators: {', '.join(_ALL_OPS)}"
            )
    return out


def _scalar(value: object, where: str) -> Scalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(f"{where}: strings must not contain NUL (U+0000)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(
                f"{where}: string is not valid Unicode (a lone surrogate, U+D800 to U+DFFF)"
            ) from None
        return value
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise InvalidInput(
                f"{where}: integer out of range: integers must lie in -2**63 .. 2**63-1 "
                "(use a float for larger magnitudes)"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where}: numbers must be finite")
        return value
    if value is None:
        raise InvalidInput(f"{where}: null is not a valid value; use {{'$exists': ...}}")
    raise InvalidInput(f"{where}: expected a string, number or boolean, got {_kind(value)}")


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__


# --------------------------------------------------------------------------- reference evaluator

_MISSING = object()


def _lookup(metadata: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = metadata
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _elements(value: Any) -> list[Any]:
    if value is _MISSING:
        return []
    return list(value) if isinstance(value, list) else [value]


def _same_type(a: Any, b: Scalar) -> bool:
    if isinstance(b, bool):
        return isinstance(a, bool)
    if isinstance(b, str):
        return isinstance(a, str)
    return isinstance(a, int | float) and not isinstance(a, bool)


def _compare(a: Any, op: CompareOp, b: Scalar) -> bool:
    if not _same_type(a, b):
        return False
    if op == "$eq":
        return bool(a == b)
    if op == "$gt":
        return bool(a > b)
    if op == "$gte":
        return bool(a >= b)
    if op == "$lt":
        return bool(a < b)
    return bool(a <= b)  # $lte


def matches(node: Filter | None, metadata: Mapping[str, Any]) -> bool:
    """Whether ``metadata`` satisfies ``node``: the reference semantics backends must follow."""
    if node is None:
        return True
    if isinstance(node, And):
        return all(matches(c, metadata) for c in node.clauses)
    if isinstance(node, Or):
        return any(matches(c, metadata) for c in node.clauses)
    value = _lookup(metadata, node.path)
    if isinstance(node, Exists):
        return (value is not _MISSING) == node.exists
    elements = _elements(value)
    if isinstance(node, In):
        found = any(_compare(e, "$eq", v) for e in elements for v in node.values)
        return found != node.negate
    if node.op == "$ne":
        return not any(_compare(e, "$eq", node.value) for e in elements)
    return any(_compare(e, node.op, node.value) for e in elements)
