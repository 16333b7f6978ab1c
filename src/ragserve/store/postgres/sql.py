"""SQL building blocks of the PostgreSQL store: the filter AST as a ``jsonb`` condition, and the
lexical query terms.

Filters: every value is a bound parameter (``Jsonb`` documents for containment, ``jsonpath``
strings plus ``vars`` for ranges). Field names were validated by :mod:`ragserve.filters`
(``[A-Za-z0-9_-]``), so they can be double-quoted into a jsonpath, which is itself bound.

Semantics follow :func:`ragserve.filters.matches`:

* ``$eq``: ``m @> {"a": {"b": v}}`` (the value itself) or ``m @> {"a": {"b": [v]}}`` (an array
  holding it). ``jsonb`` containment compares numbers numerically and never mixes types, and an
  object on the path never equals a scalar. Both forms can use the ``jsonb_path_ops`` GIN index.
* ``$in``: ``m @> ANY(%s::jsonb[])``, one bound array holding both forms of every value (a list
  of 1,024 values is one parameter, not 2,048, and no ``OR`` chain).
* ranges: ``strict`` jsonpath on the value and on its array elements (``strict`` so arrays are
  not unwrapped on the way down, as the reference does not walk into them); jsonpath compares
  numbers with numbers and strings with strings (code point order), anything else is false.
* ``$exists``: a ``strict`` jsonpath, so a key under an array or a scalar is missing.
* ``$ne`` / ``$nin``: ``NOT`` of the positive form (documents without the field match).
"""

from __future__ import annotations

import re

from psycopg.types.json import Jsonb

from ragserve.filters import And, Compare, Exists, Filter, In, Or, Scalar

_RANGE_OP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}

# Dropped from lexical queries: PostgreSQL's 'english' configuration drops its own stop words.
MAX_QUERY_TERMS = 64
_WORD = re.compile(r"\w+", re.UNICODE)


def query_words(text: str) -> list[str]:
    """User text -> distinct lower-cased words (each becomes one ``plainto_tsquery``)."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    return words[:MAX_QUERY_TERMS]


def _jsonpath(path: tuple[str, ...]) -> str:
    return "strict $" + "".join(f'."{part}"' for part in path)


def _nest(path: tuple[str, ...], leaf: object) -> Jsonb:
    value: object = leaf
    for part in reversed(path):
        value = {part: value}
    return Jsonb(value)


def _equals(column: str, path: tuple[str, ...], value: Scalar, params: list[object]) -> str:
    params.extend([_nest(path, value), _nest(path, [value])])
    return f"({column} @> %s OR {column} @> %s)"


def _range(column: str, path: tuple[str, ...], op: str, value: Scalar, params: list[object]) -> str:
    cond = f"? (@ {_RANGE_OP[op]} $v)"
    base = _jsonpath(path)
    variables = Jsonb({"v": value})
    params.extend([f"{base} {cond}", variables, f"{base}[*] {cond}", variables])
    return (
        f"(coalesce(jsonb_path_exists({column}, %s::jsonpath, %s, true), false) OR "
        f"coalesce(jsonb_path_exists({column}, %s::jsonpath, %s, true), false))"
    )


def to_sql(node: Filter, column: str, params: list[object]) -> str:
    """A boolean SQL expression for ``node`` over the ``jsonb`` in ``column``.

    Appends the bound values to ``params`` in placeholder (``%s``) order.
    """
    if isinstance(node, And | Or):
        joiner = " AND " if isinstance(node, And) else " OR "
        return "(" + joiner.join(to_sql(c, column, params) for c in node.clauses) + ")"
    if isinstance(node, Exists):
        params.append(_jsonpath(node.path))
        found = f"coalesce(jsonb_path_exists({column}, %s::jsonpath, '{{}}', true), false)"
        return f"({found})" if node.exists else f"(NOT {found})"
    if isinstance(node, In):
        # One bound jsonb[] of both containment forms of every value: any length, two
        # placeholders, and still a bitmap scan of the GIN index (one per array element).
        docs = [doc for v in node.values for doc in (_nest(node.path, v), _nest(node.path, [v]))]
        params.append(docs)
        sql = f"({column} @> ANY(%s::jsonb[]))"
        return f"(NOT {sql})" if node.negate else sql
    assert isinstance(node, Compare)
    if node.op == "$eq":
        return _equals(column, node.path, node.value, params)
    if node.op == "$ne":
        return f"(NOT {_equals(column, node.path, node.value, params)})"
    return _range(column, node.path, node.op, node.value, params)
