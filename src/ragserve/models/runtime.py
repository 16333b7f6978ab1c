"""The one place that builds ONNX Runtime sessions and tokenizers.

Graph optimization (fusions, constant folding, quantized MatMul fusions) is most of the time it
takes to open a model: 0.5-0.9 s of a 0.8-1.1 s load for the 12-layer int8 models on two cores.
So the first session built for a model saves its optimized graph next to it
(``.model.onnx.<key>.opt.onnx``); later loads read that file with optimizations off and take a
third of the time. The key covers everything the optimized graph depends on: the source file
(size and mtime), the ONNX Runtime version, the optimization level, the provider and the CPU's
instruction set (level "all" may pick hardware-specific kernels). The file is derived data:
written atomically, ignored when it cannot be written (a read-only cache), and deleted and rebuilt
when it does not load.

ONNX Runtime is imported on the first session built, not with this module: a process whose models
all run on a model server (``--role api`` with remote models) never loads it (23 MB of RSS). The
``tokenizers`` library likewise, by the first tokenizer loaded (3.8 MB).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from ragserve.errors import ModelIntegrityError

if TYPE_CHECKING:
    import onnxruntime as ort
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)


@cache
def _ort() -> ModuleType:
    import onnxruntime

    module: ModuleType = onnxruntime
    return module


Spinning = Literal["off", "in_run", "always"]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """How sessions are built. ``threads`` is intra-op parallelism for one run (0: all cores)."""

    threads: int = 0
    graph_optimization: str = "all"  # "disable" | "basic" | "extended" | "all"
    provider: str = "CPUExecutionProvider"
    #: Save the optimized graph next to the model and reuse it on later loads.
    save_optimized: bool = True
    #: Idle intra-op threads: "off" sleep at once; "in_run" spin between the operators of one
    #: run and stop when it returns; "always" keep spinning between runs too (ONNX Runtime's
    #: default). Spinning between runs takes the CPU from concurrent requests; within a run it
    #: cuts single-query latency (figures in docs/models.md).
    spinning: Spinning = "in_run"
    #: ONNX Runtime's memory pattern: it plans one block per input shape seen and keeps it in
    #: the arena. Good for one shape run often (queries); for the reranker's varied batches of
    #: long pairs it only holds memory (RSS after 32 reranked searches: 388 MB with it, 330
    #: without, at the same speed: docs/service.md).
    memory_pattern: bool = True


_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@cache
def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags (Linux), or the machine type elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return os.uname().machine
    wanted = ("model name", "flags", "Features")
    lines = sorted({ln.strip() for ln in text.splitlines() if ln.startswith(wanted)})
    return "\n".join(lines)


def optimized_path(model_path: Path, config: SessionConfig) -> Path:
    """Where the optimized graph of ``model_path`` under ``config`` is saved."""
    st = model_path.stat()
    key = "|".join(
        (
            str(st.st_size),
            str(st.st_mtime_ns),
            _ort().__version__,
            config.graph_optimization,
            config.provider,
            _cpu_signature(),
        )
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return model_path.with_name(f".{model_path.name}.{digest}.opt.onnx")


def _options(config: SessionConfig, level: str) -> ort.SessionOptions:
    """Session options for ``config`` at optimization ``level``."""
    rt = _ort()
    options = rt.SessionOptions()
    if config.threads:
        options.intra_op_num_threads = config.threads
    options.inter_op_num_threads = 1
    options.execution_mode = rt.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(rt.GraphOptimizationLevel, _LEVELS[level])
    options.enable_mem_pattern = config.memory_pattern
    options.log_severity_level = 3
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "0" if config.spinning == "off" else "1"
    )
    if config.spinning == "in_run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def _session(path: Path, options: ort.SessionOptions, provider: str) -> ort.InferenceSession:
    session: ort.InferenceSession = _ort().InferenceSession(
        str(path), sess_options=options, providers=[provider]
    )
    return session


def build_session(model_path: Path, config: SessionConfig) -> ort.InferenceSession:
    """An inference session for ``model_path``; a damaged file becomes a clear error."""
    try:
        if config.save_optimized and config.graph_optimization != "disable":
            return _build_with_saved_graph(model_path, config)
        return _session(model_path, _options(config, config.graph_optimization), config.provider)
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for bad files
        raise ModelIntegrityError(f"cannot load ONNX model {model_path}: {exc}") from None


def _build_with_saved_graph(model_path: Path, config: SessionConfig) -> ort.InferenceSession:
    saved = optimized_path(model_path, config)
    if saved.exists():
        try:
            return _session(saved, _options(config, "disable"), config.provider)
        except Exception as exc:  # noqa: BLE001 - a damaged derived file: rebuild it
            log.warning("optimized graph %s does not load (%s); rebuilding it", saved, exc)
            with contextlib.suppress(OSError):
                saved.unlink()
    options = _options(config, config.graph_optimization)
    tmp = saved.with_name(f"{saved.name}.{os.getpid()}.tmp")
    writable = os.access(model_path.parent, os.W_OK)
    if writable:
        options.optimized_model_filepath = str(tmp)
    session = _session(model_path, options, config.provider)
    if writable:
        try:
            tmp.replace(saved)
            for stale in model_path.parent.glob(f".{model_path.name}.*.opt.onnx"):
                if stale != saved:
                    stale.unlink(missing_ok=True)
        except OSError as exc:
            log.info("cannot save the optimized graph of %s: %s", model_path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
    return session


def load_tokenizer(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception
        raise ModelIntegrityError(f"cannot load tokenizer {path}: {exc}") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
