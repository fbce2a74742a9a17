"""Request and response bodies of the API, and the one conversion the routes need:
request events to the packed history records the encoder and the stores use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool
from pydantic_core import core_schema

from model.contract import HISTORY_EVENT, MAX_PLAYED_RATIO, MAX_TIMESTAMP
from service.settings import Mode


def whole_number(value: float) -> int:
    """A JSON number with nothing after the point (``7.0``) as the integer it equals (any other
    is refused, as :class:`JsonInt` words it)."""
    if not value.is_integer():
        raise ValueError("not a whole number")
    return int(value)


@dataclass(frozen=True)
class JsonInt:
    """``Annotated[int, JsonInt(ge, le)]``: an id or count, a JSON integer as JSON Schema counts
    them (``7`` or ``7.0``) in ``[ge, le]``, never a boolean or text (a client that sends
    ``true`` or ``"2502"`` for an id has a bug worth hearing about: a 422 naming the field, never
    a silent conversion).

    Built from pydantic-core's own schemas, so an integer is checked without Python: a history
    of 50 events holds 200 such fields, and a Python validator on each took 40% of its parsing.
    Only a number written with a point calls back into Python. The published schema says
    ``integer``."""

    ge: int
    le: int | None = None

    def __get_pydantic_core_schema__(self, _source: Any, _handler: Any) -> core_schema.CoreSchema:
        exact = core_schema.int_schema(strict=True)
        pointed = core_schema.no_info_after_validator_function(
            whole_number, core_schema.float_schema(strict=True, allow_inf_nan=False)
        )
        number = core_schema.union_schema(
            [exact, pointed],
            mode="left_to_right",
            custom_error_type="json_integer",
            custom_error_message="must be a JSON integer",
        )
        return core_schema.chain_schema([number, core_schema.int_schema(ge=self.ge, le=self.le)])

    def __get_pydantic_json_schema__(self, _schema: Any, _handler: Any) -> dict[str, Any]:
        published: dict[str, Any] = {"type": "integer", "minimum": self.ge}
        if self.le is not None:
            published["maximum"] = self.le
        return published


# Every id is stored as int64: a larger value is a 422 too, never a 500.
Int64 = Annotated[int, JsonInt(-(2**63), 2**63 - 1)]
Int64s = list[Int64]
ArtistId = Annotated[int, JsonInt(-1, 2**63 - 1)]  # -1: unknown
Source = Annotated[int, JsonInt(0, 32_767)]
Count = Annotated[int, JsonInt(1)]
# The data contract's ranges, applied to live events: seconds since the epoch, and a finite play
# ratio (a time gap from an absurd timestamp would overflow the encoder's inputs).
Timestamp = Annotated[int, JsonInt(0, MAX_TIMESTAMP)]
PlayedRatio = Annotated[float, Strict(), Field(ge=0, le=MAX_PLAYED_RATIO, allow_inf_nan=False)]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: Int64
    timestamp: Timestamp
    source: Source = 0
    artist_id: ArtistId = -1
    played_ratio: PlayedRatio | None = None
    liked: StrictBool = False
    disliked: StrictBool = False


class UserRequest(BaseModel):
    """What a request says of its user: the id, optionally the live history, the mode."""

    model_config = ConfigDict(extra="forbid")
    user_id: Int64
    history: list[Event] | None = None
    mode: Mode | None = None


class CandidatesRequest(UserRequest):
    k: Count = 100
    exclude_seen: StrictBool = True  # leave out the items of the live history
    exclude_item_ids: Int64s = []
    # "items": leave out the live history's items (whatever exclude_seen says); "artists": also
    # every item of an artist in it (the setting where ARGUS gains most, per the paper)
    unfamiliar: Literal["items", "artists"] | None = None


class Candidate(BaseModel):
    item_id: int
    score: float | None  # retrieval score (None: the popularity fallback)
    ranking_score: float | None  # the /score dot product <u, v> of this item


class CandidatesResponse(BaseModel):
    user_id: int
    model_version: str
    source: str
    degraded: bool
    items: list[Candidate]
    took_ms: float


class ScoreRequest(UserRequest):
    item_ids: Annotated[Int64s, Field(min_length=1)]
    return_vectors: StrictBool = False
    # "base64": each vector array as base64 of little-endian float32 (rows of unknown items are
    # zeros): about 10x cheaper to produce and parse than JSON numbers, half the bytes.
    vectors_format: Literal["json", "base64"] = "json"


class ScoreResponse(BaseModel):
    user_id: int
    model_version: str
    source: str
    degraded: bool
    scores: list[float | None]
    unknown_item_ids: list[int]
    user_vector: list[float] | str | None = None
    item_vectors: list[list[float] | None] | str | None = None
    took_ms: float


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Int64
    events: list[Event] = Field(min_length=1)


def as_history(events: list[Event]) -> np.ndarray:
    """The events as HISTORY_EVENT records, oldest first."""
    records = [
        (
            e.item_id,
            e.artist_id,
            e.timestamp,
            e.source,
            np.nan if e.played_ratio is None else e.played_ratio,
            e.liked,
            e.disliked,
        )
        for e in events
    ]
    out = np.array(records, dtype=HISTORY_EVENT)
    return out[np.argsort(out["timestamp"], kind="stable")]
