from __future__ import annotations

from dataclasses import dataclass

import pytest

from model.config import apply_overrides


@dataclass(frozen=True)
class Example:
    steps: int = 10
    rate: float = 0.1
    name: str = "a"
    compile: bool = False
    shares: tuple[float, ...] = (0.5, 0.5)
    limit: int | None = None


def test_overrides_parse_each_type() -> None:
    got = apply_overrides(
        Example(), ["steps=3", "rate=2e-3", "name=b", "compile=true", "shares=0.2, 0.8", "limit=7"]
    )
    assert got == Example(steps=3, rate=0.002, name="b", compile=True, shares=(0.2, 0.8), limit=7)
    assert apply_overrides(got, ["limit=none"]).limit is None
    assert apply_overrides(Example(), []) == Example()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("step=3", "'step' is not a setting"),
        ("steps=3.5", "steps='3.5': expected int"),
        ("rate=fast", "rate='fast': expected float"),
        ("compile=maybe", "compile='maybe': expected a boolean"),
        ("shares=0.1,x", "shares='x': expected float"),
        ("steps", "expected key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(Example(), [override])
