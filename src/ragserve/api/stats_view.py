"""``ragserve stats``: fetch ``/v1/stats`` from a running server and print it with rich.

Uses only the standard library for HTTP (the server's dependencies carry no HTTP client).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console
from rich.table import Table

from ragserve.errors import RagserveError, Unavailable


def fetch_stats(url: str, api_key: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """GET ``{url}/v1/stats`` (``url`` is the server's base URL)."""
    target = url.rstrip("/") + "/v1/stats"
    if not target.startswith(("http://", "https://")):
        raise RagserveError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(target, headers={"accept": "application/json"})
    if api_key:
        request.add_header("authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode("utf-8", "replace")
        raise Unavailable(f"{target} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise Unavailable(f"cannot reach {target}: {exc}") from None
    except ValueError as exc:
        raise Unavailable(f"{target} did not answer JSON: {exc}") from None
    return data


def _ms(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


def _pct(value: Any) -> str:
    return f"{value * 100:.1f} %" if isinstance(value, int | float) else "-"


def _latency_table(title: str, rows: dict[str, dict[str, Any]], first: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(first)
    for name in ("count", "p50 ms", "p95 ms", "p99 ms", "mean ms", "max ms"):
        table.add_column(name, justify="right")
    for name, r in rows.items():
        table.add_row(
            name,
            str(r.get("count", "-")),
            _ms(r.get("p50_ms")),
            _ms(r.get("p95_ms")),
            _ms(r.get("p99_ms")),
            _ms(r.get("mean_ms")),
            _ms(r.get("max_ms")),
        )
    return table


def render_stats(data: dict[str, Any], console: Console) -> None:
    """Print the stats as a few tables."""
    window = data.get("window", {})
    requests = data.get("requests", {})
    rss = data.get("memory_rss_bytes")
    memory = f"{rss / 2**20:.0f} MiB" if isinstance(rss, int) else "-"
    console.print(
        f"[bold]ragserve[/bold] {'ready' if data.get('ready') else 'not ready'}, "
        f"up {data.get('uptime_seconds', 0):.0f} s, memory (RSS) {memory}",
        highlight=False,
    )
    console.print(
        f"window: last {window.get('max_observations')} observations per series, "
        f"at most {window.get('max_age_seconds')} s old; "
        f"{requests.get('recent', 0)} requests, {requests.get('recent_errors', 0)} errors "
        f"({_pct(requests.get('error_rate'))})",
        highlight=False,
    )
    console.print(_latency_table("routes", data.get("routes", {}), "route"))
    console.print(_latency_table("search stages", data.get("stages", {}), "stage"))

    caches = Table(title="caches", title_justify="left")
    for name in ("cache", "entries", "capacity", "hits", "misses", "hit rate"):
        caches.add_column(name, justify="left" if name == "cache" else "right")
    for name, c in data.get("caches", {}).items():
        caches.add_row(
            name,
            str(c["entries"]),
            str(c["capacity"]),
            str(c["hits"]),
            str(c["misses"]),
            _pct(c.get("hit_rate")),
        )
    console.print(caches)

    batchers = Table(title="batchers", title_justify="left")
    for name in ("batcher", "pending", "batches", "items", "mean", "p50", "p95", "largest", "429s"):
        batchers.add_column(name, justify="left" if name == "batcher" else "right")
    for name, b in data.get("batchers", {}).items():
        batchers.add_row(
            name,
            str(b["pending"]),
            str(b["batches"]),
            str(b["items"]),
            _ms(b.get("mean_size")),
            _ms(b.get("recent_p50_size")),
            _ms(b.get("recent_p95_size")),
            str(b["largest"]),
            str(b["rejected"]),
        )
    console.print(batchers)

    models = Table(title="models", title_justify="left")
    models.add_column("model")
    models.add_column("kind")
    models.add_column("load s", justify="right")
    for name, m in data.get("models", {}).items():
        models.add_row(name, m["kind"], f"{m['load_seconds']:.3f}")
    console.print(models)

    collections = Table(title="collections", title_justify="left")
    collections.add_column("collection")
    collections.add_column("documents", justify="right")
    collections.add_column("chunks", justify="right")
    for name, c in data.get("collections", {}).items():
        collections.add_row(name, str(c["documents"]), str(c["chunks"]))
    console.print(collections)
