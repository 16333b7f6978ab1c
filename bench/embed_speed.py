"""Embedding and reranking speed: ragserve (ONNX Runtime) vs sentence-transformers on torch fp32.

Run: ``python -m bench.embed_speed`` (needs torch==2.13.0 + sentence-transformers for the torch
side, the default models and the exported ``all-MiniLM-L6-v2-opt`` in the model cache:
``ragserve models pull && ragserve models export all-MiniLM-L6-v2``). Prints JSON and rewrites the
generated part of ``docs/models.md``.

Everything is measured in one process, on the same SciFact passages (``title + " " + text`` read
from the BEIR corpus, never copied into the repository), with both engines on the same number of
threads; timed rounds alternate between the engines so that background load hits both alike.
Figures are medians with the 10th-90th percentile spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragserve.config import Settings
from ragserve.models.cache import CachedModel
from ragserve.models.catalog import Catalog
from ragserve.models.embedder import Batching, OnnxEmbedder
from ragserve.models.export import fetch_known_source
from ragserve.models.manager import model_cache
from ragserve.models.reranker import OnnxReranker
from ragserve.models.runtime import SessionConfig

DEFAULT_CORPUS = Path("/work/shared/eval/scifact")
DOC = Path(__file__).resolve().parent.parent / "docs" / "models.md"
BEGIN, END = "<!-- bench:embed_speed:begin -->", "<!-- bench:embed_speed:end -->"


def spread(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.median(arr)), 3),
        "p10": round(float(np.percentile(arr, 10)), 3),
        "p90": round(float(np.percentile(arr, 90)), 3),
        "n": len(values),
    }


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def read_corpus(root: Path, n_passages: int, n_queries: int) -> tuple[list[str], list[str]]:
    passages: list[str] = []
    with (root / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            passages.append(f"{doc.get('title', '')} {doc['text']}".strip())
            if len(passages) >= n_passages:
                break
    queries: list[str] = []
    with (root / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            queries.append(json.loads(line)["text"])
            if len(queries) >= n_queries:
                break
    return passages, queries


def bulk_session(threads: int) -> SessionConfig:
    """Sessions as `ragserve ingest` builds them (RAGSERVE_ONNX_SPINNING=always)."""
    return SessionConfig(threads=threads, spinning="always")


def serve_session(threads: int) -> SessionConfig:
    """Sessions as `ragserve serve` builds them (threads spin within a run only)."""
    return SessionConfig(threads=threads, spinning="in_run")


def load_model(settings: Settings, catalog: Catalog, name: str) -> CachedModel:
    return model_cache(settings).verify(catalog.get(name), full=False)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- parts


def compare_with_torch(
    settings: Settings,
    catalog: Catalog,
    passages: list[str],
    queries: list[str],
    *,
    threads: int,
    repeats: int,
    variants: Sequence[str],
) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    fp32_dir = fetch_known_source("all-MiniLM-L6-v2", settings.model_dir / ".sources")
    st = SentenceTransformer(str(fp32_dir), device="cpu")
    batching = Batching(settings.batch_tokens, settings.max_batch_size)
    # Passages as `ragserve ingest` embeds them (one bulk caller: idle threads keep spinning),
    # queries as the server does (spinning within a run only: it would starve other requests).
    ours = {
        name: OnnxEmbedder(load_model(settings, catalog, name), bulk_session(threads), batching)
        for name in variants
    }
    serving = {
        name: OnnxEmbedder(load_model(settings, catalog, name), serve_session(threads), batching)
        for name in variants
    }

    def torch_docs() -> np.ndarray:
        return np.asarray(st.encode(passages, batch_size=32, normalize_embeddings=True))

    ref = torch_docs()  # warm-up and the fp32 reference
    ref_q = np.asarray(st.encode(queries, batch_size=32, normalize_embeddings=True))
    rates: dict[str, list[float]] = {"torch": [], **{n: [] for n in ours}}
    for emb in ours.values():
        emb.embed_documents(passages[:8])
    for r in range(repeats):
        order: list[str] = ["torch", *ours]
        for name in order if r % 2 == 0 else order[::-1]:
            fn = (
                torch_docs
                if name == "torch"
                else (lambda e=ours[name]: e.embed_documents(passages))
            )
            rates[name].append(len(passages) / timed(fn))
    latency: dict[str, list[float]] = {name: [] for name in rates}
    for q in queries * 2:
        latency["torch"].append(1000 * timed(lambda q=q: st.encode([q])))
        for name, emb in serving.items():
            latency[name].append(1000 * timed(lambda q=q, e=emb: e.embed_queries([q])))
    out: dict[str, Any] = {"torch": {"passages_per_s": spread(rates["torch"])}}
    out["torch"]["query_ms"] = spread(latency["torch"])
    for name, emb in ours.items():
        vecs = emb.embed_documents(passages)
        qv = emb.embed_queries(queries)
        cos = np.sum(vecs * ref, axis=1)
        qcos = np.sum(qv * ref_q, axis=1)
        p = spread(rates[name])
        lat = spread(latency[name])
        out[name] = {
            "passages_per_s": p,
            "query_ms": lat,
            "speedup_passages": round(p["p50"] / out["torch"]["passages_per_s"]["p50"], 2),
            "speedup_query": round(out["torch"]["query_ms"]["p50"] / lat["p50"], 2),
            "cosine_passages": {
                "min": round(float(cos.min()), 4),
                "mean": round(float(cos.mean()), 4),
            },
            "cosine_queries": {
                "min": round(float(qcos.min()), 4),
                "mean": round(float(qcos.mean()), 4),
            },
        }
    return out


def default_embedder(
    settings: Settings,
    catalog: Catalog,
    passages: list[str],
    queries: list[str],
    *,
    threads: int,
    repeats: int,
) -> dict[str, Any]:
    model = load_model(settings, catalog, settings.embedder)
    batching = Batching(settings.batch_tokens, settings.max_batch_size)
    emb = OnnxEmbedder(model, bulk_session(threads), batching)
    emb.embed_documents(passages[:8])
    rates = [len(passages) / timed(lambda: emb.embed_documents(passages)) for _ in range(repeats)]
    server = OnnxEmbedder(model, serve_session(threads), batching)
    lat = [1000 * timed(lambda q=q: server.embed_queries([q])) for q in queries * 2]
    return {"model": emb.name, "passages_per_s": spread(rates), "query_ms": spread(lat)}


def reranker_latency(
    settings: Settings,
    catalog: Catalog,
    passages: list[str],
    queries: list[str],
    *,
    threads: int,
    candidates: int,
) -> dict[str, Any]:
    rr = OnnxReranker(
        load_model(settings, catalog, settings.reranker),
        serve_session(threads),
        max_length=settings.rerank_max_length,
    )
    tokens = [
        len(e.ids)
        for e in rr._tokenizer.encode_batch([(queries[0], p) for p in passages[:candidates]])
    ]
    rr.score(queries[0], passages[:candidates])
    times = []
    for i, q in enumerate(queries):
        start = (i * candidates) % max(1, len(passages) - candidates)
        cands = passages[start : start + candidates]
        times.append(1000 * timed(lambda q=q, c=cands: rr.score(q, c)))
    return {
        "model": rr.name,
        "candidates": candidates,
        "max_length": rr.max_length,
        "mean_pair_tokens": round(float(np.mean(tokens)), 1),
        "ms": spread(times),
    }


_LOAD_SNIPPET = """
import json, sys, time
from ragserve.config import Settings
from ragserve.models.manager import ModelManager
m = ModelManager.from_settings(Settings())
kind, name = sys.argv[1], sys.argv[2]
(m.embedder if kind == "embedder" else m.reranker)(name)
print(json.dumps(m.loads[m.catalog.get(name).name].seconds))
"""


def load_times(catalog: Catalog, names: Sequence[str], runs: int) -> dict[str, Any]:
    """Each model loaded in fresh processes (full sha256 verify + session + tokenizer)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = {}
    for name in names:
        spec = catalog.get(name)
        secs = []
        for _ in range(runs):
            proc = subprocess.run(
                [sys.executable, "-c", _LOAD_SNIPPET, spec.kind.value, name],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            secs.append(float(proc.stdout.strip().splitlines()[-1]))
        out[name] = spread(secs)
    return out


# ----------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    import onnxruntime

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import torch

        info["torch"] = str(torch.__version__)
    except ImportError:
        pass
    return info


def markdown(res: dict[str, Any]) -> str:
    def fmt(s: dict[str, float], unit: str = "") -> str:
        return f"{s['p50']:.1f}{unit} ({s['p10']:.1f}-{s['p90']:.1f})"

    cmp_ = res["minilm_vs_torch"]
    lines = [
        BEGIN,
        "",
        f"Generated by `{res['command']}` on {res['date']} "
        f"({res['machine']['cpu']}, {res['machine']['cores']} cores, "
        f"onnxruntime {res['machine']['onnxruntime']}, torch {res['machine'].get('torch', '-')}; "
        f"{res['threads']} threads for both engines; {res['passages']} SciFact passages, "
        f"{res['repeats']} alternating rounds; load average before/after "
        f"{res['loadavg_before']} / {res['loadavg_after']}). Medians, (p10-p90).",
        "",
        "### all-MiniLM-L6-v2: ragserve vs sentence-transformers (torch fp32)",
        "",
        "| engine | passages/s | query ms | speed-up passages | speed-up query "
        "| cosine to fp32 (min / mean) |",
        "|---|---|---|---|---|---|",
        f"| torch fp32 (sentence-transformers) | {fmt(cmp_['torch']['passages_per_s'])} "
        f"| {fmt(cmp_['torch']['query_ms'])} | 1 | 1 | 1 |",
    ]
    for name, r in cmp_.items():
        if name == "torch":
            continue
        lines.append(
            f"| ragserve `{name}` | {fmt(r['passages_per_s'])} | {fmt(r['query_ms'])} "
            f"| {r['speedup_passages']} | {r['speedup_query']} "
            f"| {r['cosine_passages']['min']} / {r['cosine_passages']['mean']} |"
        )
    d = res["default_embedder"]
    rr = res["reranker"]
    lines += [
        "",
        "### Default models",
        "",
        "| model | figure |",
        "|---|---|",
        f"| `{d['model']}` (default embedder) | {fmt(d['passages_per_s'])} passages/s; "
        f"query {fmt(d['query_ms'], ' ms')} |",
        f"| `{rr['model']}` (default reranker) | {rr['candidates']} candidates, "
        f"max_length {rr['max_length']} (mean {rr['mean_pair_tokens']} tokens per pair): "
        f"{fmt(rr['ms'], ' ms')} |",
    ]
    for name, s in res["load_seconds"].items():
        lines.append(f"| `{name}` load (fresh process, HF_HUB_OFFLINE=1) | {fmt(s, ' s')} |")
    lines += ["", END]
    return "\n".join(lines)


def write_doc(res: dict[str, Any], path: Path) -> None:
    block = markdown(res)
    text = path.read_text(encoding="utf-8") if path.exists() else f"# Models\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--passages", type=int, default=96)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--load-runs", type=int, default=5)
    parser.add_argument(
        "--variants", nargs="+", default=["all-MiniLM-L6-v2-opt", "all-MiniLM-L6-v2"]
    )
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)

    settings = Settings()
    catalog = Catalog.load(settings.custom_models_path)
    passages, queries = read_corpus(args.corpus, args.passages, args.queries)
    res: dict[str, Any] = {
        "command": "python -m bench.embed_speed "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "threads": args.threads,
        "passages": len(passages),
        "repeats": args.repeats,
        "loadavg_before": loadavg(),
    }
    res["command"] = res["command"].strip()
    res["load_seconds"] = load_times(
        catalog, [settings.embedder, settings.reranker, *args.variants[:1]], args.load_runs
    )
    res["minilm_vs_torch"] = compare_with_torch(
        settings,
        catalog,
        passages,
        queries,
        threads=args.threads,
        repeats=args.repeats,
        variants=args.variants,
    )
    res["default_embedder"] = default_embedder(
        settings,
        catalog,
        passages,
        queries,
        threads=args.threads,
        repeats=max(3, args.repeats // 2),
    )
    res["reranker"] = reranker_latency(
        settings, catalog, passages, queries, threads=args.threads, candidates=args.candidates
    )
    res["loadavg_after"] = loadavg()
    print(json.dumps(res, indent=2))
    if not args.no_doc:
        write_doc(res, args.doc)


if __name__ == "__main__":
    main()
