"""Request bodies: ids and counts are JSON integers, checked by pydantic-core alone."""

from __future__ import annotations

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from service.schemas import CandidatesRequest, Event, ScoreRequest


def errors(model: type[BaseModel], body: dict) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as raised:
        model.model_validate_json(orjson.dumps(body))
    return [(e["loc"], e["msg"]) for e in raised.value.errors(include_url=False)]


EVENT = {"item_id": 1, "timestamp": 1_700_000_000}


def test_an_integer_or_a_whole_number_with_a_point_is_taken() -> None:
    body = CandidatesRequest.model_validate_json(
        orjson.dumps({"user_id": 7.0, "k": 5, "exclude_item_ids": [1, 2.0, -(2**63)]})
    )
    assert (body.user_id, body.k, body.exclude_item_ids) == (7, 5, [1, 2, -(2**63)])
    assert all(type(x) is int for x in (body.user_id, body.k, *body.exclude_item_ids))
    event = Event.model_validate_json(orjson.dumps({**EVENT, "artist_id": -1, "source": 3.0}))
    assert (event.artist_id, event.source) == (-1, 3) and type(event.source) is int


@pytest.mark.parametrize("value", [True, "7", 7.5, [7], {"id": 7}, None])
def test_anything_else_is_refused_naming_the_field_and_the_problem(value: object) -> None:
    assert errors(CandidatesRequest, {"user_id": value}) == [
        (("user_id",), "must be a JSON integer")
    ]
    found = errors(ScoreRequest, {"user_id": 1, "item_ids": [1, value]})
    assert found == [(("item_ids", 1), "must be a JSON integer")]
    found = errors(CandidatesRequest, {"user_id": 1, "history": [{**EVENT, "source": value}]})
    assert found == [(("history", 0, "source"), "must be a JSON integer")]


@pytest.mark.parametrize(
    ("body", "loc", "msg"),
    [
        ({"user_id": 2**63}, ("user_id",), "less than or equal to 9223372036854775807"),
        ({"user_id": 1e300}, ("user_id",), "less than or equal to 9223372036854775807"),
        ({"user_id": 1, "k": 0}, ("k",), "greater than or equal to 1"),
        (
            {"user_id": 1, "history": [{**EVENT, "timestamp": 2**32}]},
            ("history", 0, "timestamp"),
            "less than or equal to 4294967295",
        ),
        (
            {"user_id": 1, "history": [{**EVENT, "artist_id": -2.0}]},
            ("history", 0, "artist_id"),
            "greater than or equal to -1",
        ),
    ],
)
def test_an_integer_out_of_its_range_is_refused_naming_the_bound(
    body: dict, loc: tuple, msg: str
) -> None:
    [(found_loc, found_msg)] = errors(CandidatesRequest, body)
    assert found_loc == loc and msg in found_msg
