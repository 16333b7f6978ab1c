"""Translate a filter AST (:mod:`ragserve.filters`) into a SQLite boolean expression.

Every value and JSON path is a bound parameter; field names were validated by the parser (and
are double-quoted in the path). ``json_each`` yields the elements of an array and the value
itself for a scalar, which gives the "any element matches" semantics of the reference evaluator;
paths that lead to an object never compare equal to a scalar.

The SQL stays within SQLite's limits for anything the parser accepts: ``$in`` / ``$nin`` lists
are one bound JSON array per type, read with ``json_each`` (``value IN (SELECT value FROM
json_each(?))``, which SQLite evaluates once into an ephemeral index) instead of an ``OR`` chain
(SQLite parses ``a OR b OR ...`` into a tree as deep as the list: 1,000 levels at most);
``$and`` / ``$or`` lists are joined in parenthesized groups of at most 16 (depth ~16 per level
of groups instead of the list's length); and nested ``$and`` / ``$or`` come first in their list, as
the parser's stack (~100 entries) must hold everything open before a nested part.
"""

from __future__ import annotations

import json

from ragserve.filters import And, Exists, Filter, In, Or, Scalar

_SQL_OP = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_NUMBER = "type IN ('integer', 'real')"
_FANOUT = 16


def json_path(path: tuple[str, ...]) -> str:
    return "$" + "".join(f'."{part}"' for part in path)


def _typed(op: str, value: Scalar, params: list[object]) -> str:
    """Condition on ``json_each`` columns (type, value) for one comparison."""
    if isinstance(value, bool):
        return "type = 'true'" if value else "type = 'false'"
    params.append(value)
    kind = "type = 'text'" if isinstance(value, str) else _NUMBER
    return f"({kind} AND value {op} ?)"


def _one_of(values: tuple[Scalar, ...], params: list[object]) -> str:
    """Condition on ``json_each`` columns: the element equals one of ``values`` (types kept)."""
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    conds = [
        f"type = '{b}'"
        for b, flag in (("true", True), ("false", False))
        if any(v is flag for v in values)
    ]
    for kind, group in (("type = 'text'", strings), (_NUMBER, numbers)):
        if group:
            params.append(json.dumps(group))
            conds.append(f"({kind} AND value IN (SELECT value FROM json_each(?)))")
    return " OR ".join(conds)


def _any_element(column: str, cond: str) -> str:
    return (
        f"(json_type({column}, ?) <> 'object' AND EXISTS "
        f"(SELECT 1 FROM json_each({column}, ?) WHERE {cond}))"
    )


def _join(joiner: str, parts: list[str]) -> str:
    """``parts`` joined by ``joiner`` as a tree of at most ``_FANOUT`` operands per level."""
    while len(parts) > _FANOUT:
        parts = [
            "(" + joiner.join(parts[i : i + _FANOUT]) + ")" for i in range(0, len(parts), _FANOUT)
        ]
    return joiner.join(parts)


def to_sql(node: Filter, column: str, params: list[object]) -> str:
    """SQL for ``node`` over the JSON text in ``column``; appends bound values to ``params``."""
    if isinstance(node, And | Or):
        joiner = " AND " if isinstance(node, And) else " OR "
        # Nested $and/$or first: SQLite's parser stack (about 100 entries) then holds only the
        # open parentheses, not the operands before them, while it reads the nested part.
        clauses = sorted(node.clauses, key=lambda c: not isinstance(c, And | Or))
        return "(" + _join(joiner, [to_sql(c, column, params) for c in clauses]) + ")"
    path = json_path(node.path)
    if isinstance(node, Exists):
        params.append(path)
        return f"(json_type({column}, ?) IS {'NOT ' if node.exists else ''}NULL)"
    params.extend([path, path])
    if isinstance(node, In):
        cond = _one_of(node.values, params)
        negate = node.negate
    else:
        op = "=" if node.op == "$ne" else _SQL_OP[node.op]
        cond = _typed(op, node.value, params)
        negate = node.op == "$ne"
    sql = _any_element(column, cond)
    return f"(NOT coalesce({sql}, 0))" if negate else sql
