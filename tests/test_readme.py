"""The README's configuration table lists every service setting with its real default."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def rendered(default: object) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


def test_every_setting_is_in_the_readme_table_with_its_default() -> None:
    lines = README.read_text().splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| `ARGUS_")}
    environment = Settings.environment()
    for name, default in environment.items():
        variable = f"`{name}`"
        assert variable in rows, f"{variable} is missing from the README's configuration table"
        assert rows[variable].split("|")[2].strip() == f"`{rendered(default)}`", name
    assert len(rows) == len(environment), "the table lists a setting that is gone"
