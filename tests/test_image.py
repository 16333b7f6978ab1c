"""The container image's files, checked statically (the real build is scripts/image-check).

Building the image takes minutes and needs PyPI, so `make test` does not; these checks read the
Dockerfile, the scripts and docker-compose.yml and catch what would otherwise show up only in a
build: a runtime stage running as root, build tools or pip in it, a compose file that passes
build arguments the Dockerfile does not declare.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("scripts/image-check", "scripts/make-base-image")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = "global"
    for word, rest in _instructions((ROOT / "Dockerfile").read_text(encoding="utf-8")):
        if word == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            current = match.group(2)
        stages.setdefault(current, []).append((word, rest))
    return stages


def _args(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for w, rest in stage if w == word]


def test_two_stages_from_declared_bases() -> None:
    stages = _stages()
    assert list(stages) == ["global", "build", "runtime"]
    declared = {a.split("=", 1)[0] for a in _args(stages["global"], "ARG")}
    assert {"BASE", "BUILD_BASE"} <= declared
    assert _args(stages["build"], "FROM") == ["${BUILD_BASE} AS build"]
    assert _args(stages["runtime"], "FROM") == ["${BASE} AS runtime"]
    assert any(a.startswith("EXTRAS=") for a in _args(stages["build"], "ARG"))


def test_build_stage_bakes_the_models_and_drops_the_installer() -> None:
    runs = " ".join(_args(_stages()["build"], "RUN"))
    assert "pip install" in runs and "${EXTRAS:+[$EXTRAS]}" in runs
    assert "[dev" not in runs  # never the dev extras
    assert "ragserve models pull --warm" in runs
    assert "pip uninstall" in runs and "setuptools" in runs


def test_runtime_stage_runs_offline_as_a_non_root_user() -> None:
    runtime = _stages()["runtime"]
    users = _args(runtime, "USER")
    assert users, "the runtime stage sets a USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    env = " ".join(_args(runtime, "ENV"))
    assert "HF_HUB_OFFLINE=1" in env
    healthchecks = _args(runtime, "HEALTHCHECK")
    assert len(healthchecks) == 1 and "/readyz" in healthchecks[0]
    # Only the virtualenv and the models come from the build stage; nothing is installed here.
    copies = _args(runtime, "COPY")
    assert sorted(copies) == [
        "--from=build /opt/models /opt/models",
        "--from=build /opt/ragserve /opt/ragserve",
    ]
    runs = " ".join(_args(runtime, "RUN"))
    for tool in ("apt-get install", "pip install", "gcc", "build-essential"):
        assert tool not in runs


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".venv", ".git", "tests", "bench"} <= ignored


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_bash(script: str) -> None:
    path = ROOT / script
    assert path.is_file()
    assert os.access(path, os.X_OK), f"chmod +x {script}"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    bash = shutil.which("bash")
    if bash:
        subprocess.run([bash, "-n", str(path)], check=True)


def test_image_check_covers_what_it_promises() -> None:
    text = (ROOT / "scripts/image-check").read_text(encoding="utf-8")
    for needle in ("--network=none", "{{.Size}}", "/readyz", "/search", " id)", "gcc", "g++"):
        assert needle in text, needle


def test_compose_builds_the_same_dockerfile_with_declared_args() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    build = compose["services"]["ragserve"]["build"]
    assert build["context"] == "."
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    stages = _stages()
    declared = {a.split("=", 1)[0] for stage in stages.values() for a in _args(stage, "ARG")}
    assert set(build["args"]) <= declared, set(build["args"]) - declared
    assert "postgres" in build["args"]["EXTRAS"]
    assert compose["services"]["ragserve"]["environment"]["RAGSERVE_STORE"] == "postgres"


def test_models_compose_runs_a_model_service_api_replicas_and_postgres() -> None:
    """docker-compose.models.yml: the same image as docker-compose.yml, a `--role models`
    service the `--role api` replicas reach by its service name, and only real settings."""
    yaml = pytest.importorskip("yaml")
    from ragserve.config import Settings

    split = yaml.safe_load((ROOT / "docker-compose.models.yml").read_text(encoding="utf-8"))
    single = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = split["services"]
    assert set(services) == {"postgres", "models", "api"}
    for name in ("models", "api"):
        assert services[name]["build"] == single["services"]["ragserve"]["build"]
        env = services[name]["environment"]
        unknown = {
            k for k in env if k.removeprefix("RAGSERVE_").lower() not in Settings.model_fields
        }
        assert not unknown, unknown
    assert services["models"]["environment"]["RAGSERVE_ROLE"] == "models"
    assert "ports" not in services["models"], "the model service is reached only by the API"
    api = services["api"]["environment"]
    assert api["RAGSERVE_ROLE"] == "api" and api["RAGSERVE_STORE"] == "postgres"
    for kind in ("EMBEDDER", "RERANKER"):
        assert api[f"RAGSERVE_{kind}_URL"] == "http://models:8000"
    assert set(services["api"]["depends_on"]) == {"postgres", "models"}
