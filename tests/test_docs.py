"""Docs that drift from the code are bugs: the README's settings table and commands."""

from __future__ import annotations

import re
from pathlib import Path

from ragserve.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_table_lists_every_setting_and_nothing_else() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `RAGSERVE_([A-Z_]+)` \|", readme, flags=re.M))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_readme_commands_are_make_targets_and_ci_runs_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("serve", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
