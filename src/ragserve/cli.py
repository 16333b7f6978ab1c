"""The command line: a thin shell over the library core."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ragserve.config import Settings
from ragserve.errors import RagserveError
from ragserve.models.catalog import Catalog, Kind, Pooling, custom_spec, save_custom
from ragserve.models.manager import model_cache

app = typer.Typer(no_args_is_help=True, add_completion=False, help="ragserve: retrieval for RAG.")
models_app = typer.Typer(no_args_is_help=True, help="Pull, list and register models.")
app.add_typer(models_app, name="models")

console = Console()
err = Console(stderr=True)


class _State:
    config_file: Path | None = None


def settings() -> Settings:
    if _State.config_file is not None:
        return Settings(_env_file=_State.config_file)
    return Settings()


def fail(exc: RagserveError | str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
    return typer.Exit(code)


@app.callback()
def main(
    config: Annotated[
        Path | None, typer.Option("--config", help="A settings file (RAGSERVE_* lines).")
    ] = None,
) -> None:
    if config is not None and not config.is_file():
        raise fail(f"config file {config} does not exist", 2)
    _State.config_file = config


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


@models_app.command("list")
def models_list() -> None:
    """Show every model: kind, whether it is cached, its size and source."""
    s = settings()
    try:
        catalog = Catalog.load(s.custom_models_path)
    except RagserveError as exc:
        raise fail(exc) from None
    cache = model_cache(s)
    table = Table(title=f"models (cache: {s.model_dir})")
    for col in ("name", "kind", "dim", "pooling", "cached", "size", "source", "licence"):
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
) -> None:
    """Pull models into the persistent cache and verify them (the preload step)."""
    s = settings()
    try:
        catalog = Catalog.load(s.custom_models_path)
        if all_models:
            specs = list(catalog)
        else:
            wanted = names or [s.embedder] + ([s.reranker] if s.reranker_load != "off" else [])
            specs = [catalog.get(n) for n in wanted]
        cache = model_cache(s)
        for spec in specs:
            with console.status(f"pulling {spec.name}…"):
                result = cache.pull(spec, force=force, source_dir=from_dir, progress=err.print)
            verb = {"cached": "already cached", "pulled": "pulled", "repaired": "repaired"}
            console.print(
                f"{spec.name}: {verb[result.status]} ({_size(result.size_bytes)}, "
                f"{result.source}, {result.seconds:.1f} s)"
            )
    except RagserveError as exc:
        raise fail(exc) from None


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
    try:
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
    except RagserveError as exc:
        raise fail(exc) from None
