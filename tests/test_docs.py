"""The docs stay in step with the code: every setting in the configuration table with its real
default, every `argus` command shown runs against the real CLI's commands and options, every
relative link resolves, and nothing sends a reader outside the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from argus.cli import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SERVING = ROOT / "docs" / "serving.md"


def rendered(default: object) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


def test_every_setting_is_in_the_configuration_table_with_its_default() -> None:
    lines = SERVING.read_text().splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| `ARGUS_")}
    environment = Settings.environment()
    for name, default in environment.items():
        variable = f"`{name}`"
        assert variable in rows, f"{variable} is missing from docs/serving.md's configuration"
        assert rows[variable].split("|")[2].strip() == f"`{rendered(default)}`", name
    assert len(rows) == len(environment), "the table lists a setting that is gone"


def shell_commands(path: Path) -> list[str]:
    """The `argus …` commands of a file's bash blocks, continuation lines joined."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if re.match(r"^(\.venv/bin/)?argus ", line):
                commands.append(line)
    return commands


COMMANDS = [(path, line) for path in DOCS for line in shell_commands(path)]


def resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command ``words`` name, and the words after its name. Typer may carry its own
    click, so groups are told by their ``commands``."""
    command: Any = typer.main.get_command(app)
    rest = words
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize(
    ("path", "line"), COMMANDS, ids=[f"{p.name}:{line[:60]}" for p, line in COMMANDS]
)
def test_every_command_shown_exists_with_its_options(path: Path, line: str) -> None:
    words = shlex.split(line.replace("$(", "").replace(")", ""), posix=True)[1:]
    command, rest = resolve(words)
    assert not hasattr(command, "commands"), f"{path.name}: no such command: {line}"
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for word in rest:
        if word.startswith("--"):
            option = word.split("=")[0]
            assert option in known, f"{path.name}: `{line}`: {option} is not an option"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_resolve_and_stay_inside_the_repository(path: Path) -> None:
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
        if re.match(r"^(https?|mailto):", target):
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.exists(), f"{path.name}: a link to {target} that does not exist"
        assert resolved.is_relative_to(ROOT), f"{path.name}: a link outside the repository"
    for outside in ("DESIGN.md", "STYLE.md", "../shared"):
        assert outside not in text, f"{path.name} sends the reader to {outside}"
