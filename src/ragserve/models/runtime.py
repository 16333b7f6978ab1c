"""The one place that builds ONNX Runtime sessions and tokenizers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from tokenizers import Tokenizer

from ragserve.errors import ModelIntegrityError


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """How sessions are built. ``threads`` is intra-op parallelism for one run."""

    threads: int = 0
    graph_optimization: str = "all"  # "disable" | "basic" | "extended" | "all"
    provider: str = "CPUExecutionProvider"


_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def build_session(model_path: Path, config: SessionConfig) -> ort.InferenceSession:
    """An inference session for ``model_path``; a damaged file becomes a clear error."""
    options = ort.SessionOptions()
    if config.threads:
        options.intra_op_num_threads = config.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _LEVELS[config.graph_optimization]
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(model_path), sess_options=options, providers=[config.provider]
        )
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for bad files
        raise ModelIntegrityError(f"cannot load ONNX model {model_path}: {exc}") from None


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception
        raise ModelIntegrityError(f"cannot load tokenizer {path}: {exc}") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
