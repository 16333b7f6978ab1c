"""Docs that drift from the code are bugs: the README's settings table and commands."""

from __future__ import annotations

import re
from pathlib import Path

from ragserve.config import Settings, settings_table

ROOT = Path(__file__).resolve().parent.parent
TABLE_MARKER = "<!-- settings-table:"


def _readme_settings_table(readme: str) -> str:
    """The table after the marker comment, up to the first blank line."""
    after = readme.split(TABLE_MARKER, 1)[1].split("\n", 1)[1]
    return after.split("\n\n", 1)[0].rstrip("\n") + "\n"


def test_readme_settings_table_is_generated_from_the_settings() -> None:
    """Names, defaults and descriptions: the Field(description=...) strings are the source."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert _readme_settings_table(readme) == settings_table(), (
        "README.md's settings table differs from ragserve.config.Settings; regenerate it with "
        "`python -m ragserve.config` and paste it under the settings-table comment"
    )


def test_settings_table_lists_every_setting_with_its_description() -> None:
    table = settings_table()
    documented = re.findall(r"^\| `RAGSERVE_([A-Z_]+)` \|", table, flags=re.M)
    assert documented == [name.upper() for name in Settings.model_fields]
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
    assert "| `RAGSERVE_DATA_DIR` | `~/.local/share/ragserve` |" in table
    assert "| `RAGSERVE_POSTGRES_DSN` | none |" in table
    assert "| `RAGSERVE_CHUNK_TITLE_PREFIX` | `true` |" in table


def test_readme_commands_are_make_targets_and_ci_runs_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("serve", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
