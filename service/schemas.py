"""Request and response bodies of the API, and the one conversion the routes need:
request events to the packed history records the encoder and the stores use."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StrictBool

from model.contract import HISTORY_EVENT, MAX_PLAYED_RATIO, MAX_TIMESTAMP
from service.settings import Mode


def json_integer(value: Any) -> Any:
    """A JSON integer as JSON Schema counts them (``7`` or ``7.0``), never a boolean or text: a
    client that sends ``true`` or ``"2502"`` for an id has a bug worth hearing about."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a JSON integer, not {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


def json_integers(values: Any) -> Any:
    """:func:`json_integer` of every entry of a list, in one call: a list of plain integers (the
    usual case, and a thousand of them in a /score) costs one type check per entry."""
    if not isinstance(values, list) or all(type(v) is int for v in values):
        return values  # pydantic names anything else that is wrong
    out = []
    for index, value in enumerate(values):
        try:
            out.append(json_integer(value))
        except ValueError as error:
            raise ValueError(f"entry {index} {error}") from None
    return out


# Ids and counts are JSON integers and flags JSON booleans: a 422 naming the field otherwise,
# never a silent conversion. Every id is stored as int64: a larger value is a 422 too, never a 500.
JsonInt = BeforeValidator(json_integer)
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), JsonInt]
# A list of ids, checked as a whole (the bounds still per entry, by pydantic itself)
Int64s = Annotated[
    list[Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]], BeforeValidator(json_integers)
]
ArtistId = Annotated[int, Field(ge=-1, le=2**63 - 1), JsonInt]  # -1: unknown
Source = Annotated[int, Field(ge=0, le=32_767), JsonInt]
Count = Annotated[int, Field(ge=1), JsonInt]
# The data contract's ranges, applied to live events: seconds since the epoch, and a finite play
# ratio (a time gap from an absurd timestamp would overflow the encoder's inputs).
Timestamp = Annotated[int, Field(ge=0, le=MAX_TIMESTAMP), JsonInt]
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
