"""How the routes answer: orjson bodies (numpy arrays natively), base64 vectors, and errors in
the shape FastAPI gives validation errors."""

from __future__ import annotations

import base64
from collections.abc import Sized
from typing import Any

import numpy as np
import orjson
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None = None


class Problem(BaseModel):
    """Every error answer: a message, or a list of them each naming where (as in a 422)."""

    detail: str | list[ErrorItem]


ANSWERS = {
    400: "The body could not be read (the client went away mid-body, or it is not JSON text).",
    401: "A write without 'Authorization: Bearer <ARGUS_EVENTS_TOKEN>' (or with a wrong one).",
    403: "Writes are closed: no ARGUS_EVENTS_TOKEN is set and ARGUS_EVENTS_OPEN is false.",
    408: "The body did not arrive within ARGUS_BODY_TIMEOUT_S of the headers.",
    413: "The body is over ARGUS_MAX_BODY_BYTES.",
    422: "The body does not validate, or asks past a limit: each error names its field.",
    503: "No bundle is loaded yet (or, for /events, the live-history store is unavailable).",
}


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error answers ``codes`` a route gives besides 422."""
    return {code: {"model": Problem, "description": ANSWERS[code]} for code in codes}


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    """orjson with numpy arrays serialised natively (cheap ``return_vectors``)."""
    data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(data, status_code=status, media_type="application/json")


def base64_f32(array: np.ndarray) -> str:
    """``array`` as base64 of its little-endian float32 bytes, row-major (numpy reads it back
    with ``np.frombuffer(base64.b64decode(text), "<f4")``)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def problem(status: int, field: str, message: str, kind: str = "limit_exceeded") -> HTTPException:
    """An error in the shape FastAPI documents for validation errors (``/openapi.json``'s
    ``ValidationError``: location, message and type), so clients parse every 422 alike."""
    return HTTPException(status, detail=[{"loc": ["body", field], "msg": message, "type": kind}])


def check_length(values: Sized | None, limit: int, field: str, what: str) -> None:
    """A 422 naming ``field`` when ``values`` holds more than ``limit`` entries."""
    if values is not None and len(values) > limit:
        raise problem(422, field, f"{len(values)} {what} is over the limit of {limit}")


async def validation_error(request: Request, error: Exception) -> Response:
    """422 with each error's location, message and type (and nothing of the input)."""
    assert isinstance(error, RequestValidationError)
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
    return json_response({"detail": details}, 422)
