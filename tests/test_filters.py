"""Filter parsing (the AST, every error) and the reference evaluator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ragserve.errors import InvalidInput
from ragserve.filters import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_IN_VALUES,
    And,
    Compare,
    Exists,
    In,
    Or,
    coerce_filter,
    matches,
    parse_filter,
)
from ragserve.store.sqlite.filters import json_path, to_sql


def test_empty_filters_match_everything() -> None:
    assert parse_filter(None) is None
    assert parse_filter({}) is None
    assert matches(None, {"a": 1})


def test_shorthand_and_operators_parse_to_the_ast() -> None:
    assert parse_filter({"a": 1}) == Compare(("a",), "$eq", 1)
    assert parse_filter({"a.b": {"$gte": 2, "$lt": 5}}) == And(
        (Compare(("a", "b"), "$gte", 2), Compare(("a", "b"), "$lt", 5))
    )
    assert parse_filter({"t": {"$in": ["x", 2]}}) == In(("t",), ("x", 2))
    assert parse_filter({"t": {"$nin": [True]}}) == In(("t",), (True,), negate=True)
    assert parse_filter({"t": {"$exists": False}}) == Exists(("t",), False)
    assert parse_filter({"$or": [{"a": 1}, {"b": "x"}], "c": {"$ne": 2}}) == And(
        (Or((Compare(("a",), "$eq", 1), Compare(("b",), "$eq", "x"))), Compare(("c",), "$ne", 2))
    )


def test_coerce_accepts_an_ast_or_json() -> None:
    node = Compare(("a",), "$eq", 1)
    assert coerce_filter(node) is node
    assert coerce_filter({"a": 1}) == node
    assert coerce_filter(None) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"a": 1}], "must be a JSON object"),
        ("a = 1", "must be a JSON object"),
        ({"$not": {"a": 1}}, "unknown top-level operator"),
        ({"a": {"$regex": "x"}}, "unknown operator '\\$regex'"),
        ({"a": {}}, "empty operator object"),
        ({"a": None}, "null is not a valid value"),
        ({"a": [1, 2]}, "expected a string, number or boolean"),
        ({"a": {"$eq": {"b": 1}}}, "expected a string, number or boolean"),
        ({"a": {"$gt": False}}, "range operators need a number or a string"),
        ({"a": {"$in": "x"}}, "non-empty list"),
        ({"a": {"$in": []}}, "non-empty list"),
        ({"a": {"$in": list(range(2000))}}, "more than"),
        ({"a": {"$exists": "yes"}}, "true or false"),
        ({"$and": []}, "non-empty list"),
        ({"$or": {"a": 1}}, "non-empty list"),
        ({"$or": [1]}, "must be a JSON object"),
        ({"a": float("nan")}, "finite"),
        ({"a": {"$lt": float("inf")}}, "finite"),
        ({"": 1}, "invalid field name"),
        ({"a..b": 1}, "invalid field name"),
        ({"a'); DROP TABLE chunks; --": 1}, "invalid field name"),
        ({'a"]': 1}, "invalid field name"),
        ({"$.a": 1}, "unknown top-level operator"),
        ({"x" * 65: 1}, "invalid field name"),
        ({"a": {"$in": list(range(1025))}}, r"filter\.a\.\$in has more than 1024 values"),
        ({"a": {"$lt": 10**20}}, r"filter\.a\.\$lt: integer out of range"),
        ({"a": 2**63}, "integer out of range"),
        ({"a": -(2**63) - 1}, "integer out of range"),
        ({"a": {"$in": [1, 10**30]}}, r"\$in\[1\]: integer out of range"),
        ({"a": "\ud800"}, "lone surrogate"),
        ({"a": {"$nin": ["ok", "x\udc00"]}}, r"\$nin\[1\]: string is not valid Unicode"),
        ({"a": "a\x00"}, "NUL"),
    ],
)
def test_malformed_filters_name_the_problem(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_filter(raw)


def test_values_at_the_limits_are_accepted() -> None:
    assert parse_filter({"a": 2**63 - 1}) == Compare(("a",), "$eq", 2**63 - 1)
    assert parse_filter({"a": {"$gt": -(2**63)}}) == Compare(("a",), "$gt", -(2**63))
    assert parse_filter({"a": 1e300}) == Compare(("a",), "$eq", 1e300)
    assert parse_filter({"a": "\U0001f600 é"}) == Compare(("a",), "$eq", "\U0001f600 é")
    node = parse_filter({"a": {"$in": list(range(MAX_IN_VALUES))}})
    assert isinstance(node, In) and len(node.values) == MAX_IN_VALUES


def test_the_number_of_conditions_is_bounded() -> None:
    def wide(n: int) -> dict[str, Any]:
        groups = [[{"a": {"$ne": g * 256 + i}} for i in range(256)] for g in range(n // 256)]
        rest = [{"b": i} for i in range(n % 256)]
        return {"$or": [{"$and": g} for g in groups] + ([{"$and": rest}] if rest else [])}

    parse_filter(wide(MAX_CONDITIONS))
    with pytest.raises(InvalidInput, match=f"more than {MAX_CONDITIONS} field conditions"):
        parse_filter(wide(MAX_CONDITIONS + 1))


def test_sqlite_in_lists_are_bound_json_arrays() -> None:
    """``$in`` compiles to one parameter per type, not an OR chain as long as the list."""
    params: list[object] = []
    sql = to_sql(parse_filter({"a": {"$in": [*range(1000), "x", "y", True]}}), "m", params)  # type: ignore[arg-type]
    assert sql.count("?") == 4 and " OR " in sql and sql.count(" OR ") == 2
    assert params == ['$."a"', '$."a"', '["x", "y"]', json.dumps(list(range(1000)))]


def test_nesting_is_bounded() -> None:
    raw: dict[str, Any] = {"a": 1}
    for _ in range(MAX_DEPTH + 2):
        raw = {"$and": [raw]}
    with pytest.raises(InvalidInput, match="nested"):
        parse_filter(raw)


def test_error_messages_point_at_the_clause() -> None:
    with pytest.raises(InvalidInput, match=r"filter\.\$or\[1\]\.b\.\$gt"):
        parse_filter({"$or": [{"a": 1}, {"b": {"$gt": None}}]})


META = {
    "year": 2020,
    "score": 0.5,
    "kind": "paper",
    "tags": ["bio", "med", 3],
    "flag": True,
    "date": "2020-03-04",
    "when": "2020-03-04T10:00:00",
    "obj": {"a": {"b": 1}},
    "nothing": None,
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"year": 2020}, True),
        ({"year": 2020.0}, True),
        ({"year": "2020"}, False),  # types never mix
        ({"flag": 1}, False),
        ({"flag": True}, True),
        ({"year": {"$gt": 2019, "$lte": 2020}}, True),
        ({"year": {"$gt": "2019"}}, False),
        ({"score": {"$lt": 1}}, True),
        ({"kind": {"$gte": "paper"}}, True),
        ({"kind": {"$ne": "paper"}}, False),
        ({"missing": {"$ne": "x"}}, True),  # $ne matches documents without the field
        ({"missing": {"$nin": ["x"]}}, True),
        ({"missing": "x"}, False),
        ({"tags": "bio"}, True),  # any element of an array
        ({"tags": 3}, True),
        ({"tags": {"$ne": "bio"}}, False),
        ({"tags": {"$in": ["x", "med"]}}, True),
        ({"tags": {"$nin": ["x", "y"]}}, True),
        ({"date": {"$gte": "2020-01-01", "$lt": "2020-04-01"}}, True),  # ISO dates
        ({"when": {"$gt": "2020-03-04"}}, True),
        ({"when": {"$lt": "2020-03-04T09:59:59"}}, False),
        ({"obj.a.b": 1}, True),
        ({"obj.a": 1}, False),  # an object never equals a scalar
        ({"obj": {"$exists": True}}, True),
        ({"nothing": {"$exists": True}}, True),  # null is a value
        ({"nothing": "x"}, False),
        ({"nope": {"$exists": False}}, True),
        ({"$or": [{"year": 1999}, {"kind": "paper"}]}, True),
        ({"$and": [{"year": 2020}, {"kind": "note"}]}, False),
    ],
)
def test_reference_semantics(raw: dict[str, Any], expected: bool) -> None:
    assert matches(parse_filter(raw), META) is expected


def test_json_paths_are_quoted() -> None:
    assert json_path(("a", "b-c")) == '$."a"."b-c"'
