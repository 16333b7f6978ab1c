"""Tiny model files and wheels built at test time (shared by the model tests and fixtures)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from ragserve.models.catalog import Kind, ModelSpec, Pooling, SourceFile, WheelSource

MODEL_BYTES = b"not really onnx, but bytes the cache must carry intact" * 100
TOKENIZER_BYTES = b'{"version": "1.0", "model": {"type": "WordLevel"}}'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_wheel(wheelhouse: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal but valid wheel that pip can download from a --find-links directory."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = wheelhouse / f"{dist}-py3-none-any.whl"
    meta = {
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ).encode(),
        f"{dist}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    entries = {**files, **meta}
    record_lines = []
    for arc, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record_lines.append(f"{arc},sha256={digest},{len(data)}")
    record_lines.append(f"{dist}.dist-info/RECORD,,")
    entries[f"{dist}.dist-info/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    wheelhouse.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for arc, data in entries.items():
            zf.writestr(arc, data)
    return path


def spec_with(sources: tuple[object, ...], name: str = "tiny-embedder") -> ModelSpec:
    return ModelSpec(
        name=name,
        kind=Kind.EMBEDDER,
        description="test model",
        licence="MIT",
        max_length=32,
        dimension=4,
        pooling=Pooling.MEAN,
        sources=sources,  # type: ignore[arg-type]
    )


def wheel_source(model_sha: str | None = None) -> WheelSource:
    req = "tiny-model-weights==1.0.0"
    return WheelSource(
        (
            SourceFile(
                "model.onnx", "tiny_model_weights/m/model.onnx", model_sha or sha(MODEL_BYTES), req
            ),
            SourceFile(
                "tokenizer.json", "tiny_model_weights/m/tokenizer.json", sha(TOKENIZER_BYTES), req
            ),
        )
    )
