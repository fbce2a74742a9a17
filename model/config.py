"""Command-line overrides for typed dataclass configs.

``apply_overrides(SimConfig(), ["n_genres=32", "surface_share=0.6,0.4"])`` returns a new config;
an unknown key or a value that does not parse as the field's type raises ``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")

# Learning rates the library and the CLI share: the backbone's, when pretraining and when
# fine-tuning (a pretrained backbone needs a gentler rate than one trained from scratch).
PRETRAIN_LR = 1e-3
FINETUNE_LR = 3e-4

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _parse(text: str, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item, *_) = typing.get_args(kind)
        return tuple(_parse(part.strip(), item, key) for part in text.split(",") if part.strip())
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if text.lower() in {"none", "null"} and len(options) < len(typing.get_args(kind)):
            return None
        return _parse(text, options[0], key)
    if kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{key}={text!r}: expected a boolean (true/false)")
    if kind in (int, float, str):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{key}={text!r}: expected {kind.__name__}") from None
    raise ValueError(f"{key}: cannot be set from the command line (type {kind})")


def apply_overrides(config: T, overrides: Iterable[str]) -> T:
    """A copy of the dataclass ``config`` with ``key=value`` overrides applied and type-checked."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config) if f.init}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"{override!r}: expected key=value")
        if key not in names:
            raise ValueError(f"{key!r} is not a setting; known: {', '.join(sorted(names))}")
        changes[key] = _parse(value.strip(), hints[key], key)
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]
