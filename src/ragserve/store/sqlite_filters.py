"""Translate a filter AST (:mod:`ragserve.filters`) into a SQLite boolean expression.

Every value and JSON path is a bound parameter; field names were validated by the parser (and
are double-quoted in the path). ``json_each`` yields the elements of an array and the value
itself for a scalar, which gives the "any element matches" semantics of the reference evaluator;
paths that lead to an object never compare equal to a scalar.
"""

from __future__ import annotations

from ragserve.filters import And, Exists, Filter, In, Or, Scalar

_SQL_OP = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def json_path(path: tuple[str, ...]) -> str:
    return "$" + "".join(f'."{part}"' for part in path)


def _typed(op: str, value: Scalar, params: list[object]) -> str:
    """Condition on ``json_each`` columns (type, value) for one comparison."""
    if isinstance(value, bool):
        return "type = 'true'" if value else "type = 'false'"
    params.append(value)
    kind = "type = 'text'" if isinstance(value, str) else "type IN ('integer', 'real')"
    return f"({kind} AND value {op} ?)"


def _any_element(column: str, cond: str) -> str:
    return (
        f"(json_type({column}, ?) <> 'object' AND EXISTS "
        f"(SELECT 1 FROM json_each({column}, ?) WHERE {cond}))"
    )


def to_sql(node: Filter, column: str, params: list[object]) -> str:
    """SQL for ``node`` over the JSON text in ``column``; appends bound values to ``params``."""
    if isinstance(node, And | Or):
        joiner = " AND " if isinstance(node, And) else " OR "
        return "(" + joiner.join(to_sql(c, column, params) for c in node.clauses) + ")"
    path = json_path(node.path)
    if isinstance(node, Exists):
        params.append(path)
        return f"(json_type({column}, ?) IS {'NOT ' if node.exists else ''}NULL)"
    params.extend([path, path])
    inner: list[object] = []
    if isinstance(node, In):
        cond = " OR ".join(_typed("=", v, inner) for v in node.values)
        negate = node.negate
    else:
        op = "=" if node.op == "$ne" else _SQL_OP[node.op]
        cond = _typed(op, node.value, inner)
        negate = node.op == "$ne"
    params.extend(inner)
    sql = _any_element(column, cond)
    return f"(NOT coalesce({sql}, 0))" if negate else sql
