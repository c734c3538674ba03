"""The ``hf`` backend: a transformers causal language model, optionally with a peft adapter.

Loads from a local folder, a pulled registry model, or a ``.gguf`` file
(transformers' GGUF support, through the ``gguf`` package), reads text with
:class:`~psysim.backends.encoding.TokenReader` and scores with
:mod:`psysim.backends.forward` (one forward pass per transcript, batches sorted by length).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..data.transcripts import CLOSE
from ..errors import ModelError, Problem
from . import Backend, ResponseScore, ScoreRequest, ScoreResult, Session
from .encoding import ReadingSession, TokenizedBackend
from .lockstep import options_pass

_DTYPES = ("float32", "bfloat16", "float16")


def _require(module: str, install: str):
    """Import ``module`` or say exactly what to install (``install`` is the pip argument)."""
    try:
        return __import__(module)
    except ImportError:
        raise ModelError(f"the hf backend needs the {module} package: pip install {install}") from None


#: Environment variable that sets torch's CPU threads (e.g. ``PSYSIM_THREADS=1`` on a busy shared machine).
THREADS_ENV = "PSYSIM_THREADS"


def cpu_threads() -> int:
    """Threads for torch on CPU: ``PSYSIM_THREADS`` if set, else the CPUs this process may actually use.

    torch's default is every core of the machine, which oversubscribes a
    container limited by CPU affinity or a cgroup quota (a 2-core quota on a
    64-core host, or a shared laptop): threads then wait on each other and
    scoring runs several times slower. This counts the CPUs in the process's
    affinity mask and caps them by the cgroup's quota.
    """
    import os

    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ModelError(f"{THREADS_ENV}: expected a whole number of threads of at least 1, found {value!r}")
        return n
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # cgroup v2: "max 100000" (no limit) or "200000 100000" (two CPUs' worth of time)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


class HFBackend(TokenizedBackend, Backend):
    """A transformers model and tokenizer behind the backend contract."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str,
        identity: dict[str, Any],
        batch_tokens: int = ModelConfig.batch_tokens,
        max_length: int | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self._identity = identity
        self.batch_tokens = batch_tokens
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def from_config(cls, model_cfg, base: Path, **overrides) -> HFBackend:
        """Load the model of a ``models:`` entry (dtype, device, adapter, trust_remote_code from the entry)."""
        from ..registry import resolve

        _require("torch", "torch (the CPU build: see README, Installing)")
        _require("transformers", "transformers")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        settings = {
            "dtype": model_cfg.dtype,
            "device": model_cfg.device,
            "adapter": model_cfg.adapter,
            "trust_remote_code": model_cfg.trust_remote_code,
            "batch_tokens": model_cfg.batch_tokens,
        }
        settings.update({k: v for k, v in overrides.items() if v is not None})
        resolved = resolve(model_cfg.source, base)
        dtype = getattr(torch, settings["dtype"])
        device = settings["device"]
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        threads = cpu_threads()
        torch.set_num_threads(threads)
        started = time.perf_counter()
        try:
            if resolved.kind == "gguf":
                _require("gguf", "'psysim[gguf]'")
                folder, file = str(resolved.path.parent), resolved.path.name
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=dtype)
            else:
                kwargs = {"trust_remote_code": bool(settings["trust_remote_code"])}
                tokenizer = AutoTokenizer.from_pretrained(str(resolved.path), **kwargs)
                model = AutoModelForCausalLM.from_pretrained(str(resolved.path), dtype=dtype, **kwargs)
        except Exception as exc:  # corrupt files raise many types (OSError, SafetensorError, ...): all mean "cannot load"
            raise ModelError(
                f"cannot load model {model_cfg.name!r} from {resolved.path}",
                [
                    Problem(
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}; the files may be corrupt "
                        f"or truncated: delete them and pull again (psysim models pull)"
                    )
                ],
            ) from None
        identity = dict(resolved.identity)
        if settings["adapter"]:
            model, adapter_identity = load_adapter(model, Path(base, settings["adapter"]), model_cfg.name)
            identity["adapter"] = adapter_identity
        model.to(device).eval()
        identity.update(
            dtype=settings["dtype"], device=device, threads=threads, load_seconds=round(time.perf_counter() - started, 2)
        )
        return cls(model, tokenizer, name=model_cfg.name, identity=identity, batch_tokens=int(settings["batch_tokens"]))

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def score(self, requests: Sequence[ScoreRequest], progress: Callable[[int], None] | None = None) -> list[ScoreResult]:
        import torch

        encoded = list(zip(requests, self.prepare(requests), strict=True))
        # Batches of similar length waste little on padding; the budget bounds memory. Rows with options
        # (which keep a key/value cache) are batched apart from rows without.
        order = sorted(range(len(encoded)), key=lambda i: (bool(encoded[i][1].options), len(encoded[i][1].ids)))
        results: dict[int, ScoreResult] = {}
        done = 0
        i = 0
        with torch.inference_mode():
            while i < len(order):
                size = 1
                while (
                    i + size < len(order)
                    and bool(encoded[order[i + size]][1].options) == bool(encoded[order[i]][1].options)
                    and (size + 1) * len(encoded[order[i + size]][1].ids) <= self.batch_tokens
                ):
                    size += 1
                chunk = order[i : i + size]
                for idx, scores in zip(chunk, self._score_chunk([encoded[j][1] for j in chunk]), strict=True):
                    req, enc = encoded[idx]
                    responses = [ResponseScore(lp, n, tuple(o) if o is not None else None) for lp, n, o in scores]
                    results[idx] = ScoreResult(req.key, responses, len(enc.ids), enc.forced)
                i += size
                done += size
                if progress:
                    progress(done)
        return [results[k] for k in range(len(encoded))]

    def session(self, add_special_tokens: bool = True, key: Any = None, closer: str = CLOSE) -> HFSession:
        return HFSession(self, add_special_tokens, key, closer)

    def options_batch(self, sessions, options) -> list[list[float]]:
        """Every session's pending text and options in one forward pass (:func:`options_pass`)."""
        return options_pass(self, sessions, options) if sessions else []

    def _score_chunk(self, chunk):
        """Score a batch; on out-of-memory, halve it and go on."""
        import torch

        from .forward import score_encoded

        try:
            return score_encoded(self.model, chunk, self.pad_id)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if "out of memory" not in str(exc).lower() or len(chunk) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(chunk) // 2
            return self._score_chunk(chunk[:half]) + self._score_chunk(chunk[half:])


def load_adapter(model, folder: Path, name: str):
    """Wrap ``model`` with the peft adapter in ``folder``; refuse an adapter made for another base model."""
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise ModelError(f"model {name!r}: adapter folder {folder} has no adapter_config.json")
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelError("adapters need the peft package: pip install peft") from None
    config = json.loads(config_path.read_text("utf-8"))
    try:
        wrapped = PeftModel.from_pretrained(model, str(folder))
    except Exception as exc:  # peft/torch raise several types for a mismatched adapter
        raise ModelError(
            f"model {name!r}: the adapter in {folder} does not fit this base model",
            [Problem(f"the adapter was trained on {config.get('base_model_name_or_path')!r}; {_first_useful_line(exc)}")],
        ) from None
    from ..registry import file_sha256

    weights = next((p for p in (folder / "adapter_model.safetensors", folder / "adapter_model.bin") if p.is_file()), None)
    identity = {
        "path": str(folder),
        "base_model": config.get("base_model_name_or_path"),
        "sha256": file_sha256(weights) if weights else None,
    }
    return wrapped, identity


def _first_useful_line(exc: Exception) -> str:
    """The informative line of a long loading error (e.g. torch's "size mismatch for ...")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "size mismatch" in line or "Missing key" in line or "Unexpected key" in line:
            return line
    return lines[0] if lines else type(exc).__name__


class HFSession(ReadingSession, Session):
    """Closed-loop reading with a key/value cache: every token passes through the model once.

    Text read between two responses is one piece, tokenized when the model
    next has to predict (at :meth:`options`); each response is another. Both
    are read with the backend's :class:`~psysim.backends.encoding.TokenReader`
    as the continuation of everything read before, exactly as scoring reads
    the finished transcript. Each trial is one forward pass: the new text and
    every option (with the closing text) together, under a block-causal mask.
    Its cache is a row of a lock-step group's batched cache
    (:mod:`psysim.backends.lockstep`), shared with the sessions asked with it.
    """

    def __init__(self, backend: HFBackend, add_special_tokens: bool, key: Any, closer: str):
        self.backend = backend
        self.key = key
        self.closer = closer
        self.read_text = ""  # everything read and tokenized so far
        self.text = ""  # read but not yet tokenized
        self.pending: list[int] = list(backend.reader.bos) if add_special_tokens else []
        self.group = None  # the lock-step group whose batched cache holds this session's (psysim.backends.lockstep)
        self.row = None  # this session's row in it
        self.saved = None  # its cache while in no group (per layer keys and values), or None
        self.closed = False
        self.length = 0  # tokens in the cache
        self.last_hidden = None
        self.tokens_read = 0

    def _take(self, ids: list[int]) -> None:
        self.pending += ids  # read into the cache at the next pass

    def options(self, options) -> list[float]:
        """Read what is pending and every option (with the closing text) in one forward pass over the cache.

        The pending tokens are read causally after the cache; each option's
        tokens attend to the cache, all pending tokens and their own earlier
        tokens (a block-causal mask), so every number equals a separate pass
        over the transcript so far plus the option. The cache keeps only the
        pending tokens: the options leave no trace.
        """
        return options_pass(self.backend, [self], [options])[0]

    def close(self) -> None:
        """Leave the group and forget the cache: the session reads no more (its row goes to the others)."""
        if self.group is not None:
            self.group.leave(self, keep=False)
        self.saved, self.last_hidden, self.closed = None, None, True

    def step_plan(self, options) -> dict[str, Any]:
        """This session's part of a pass: pending tokens, option tokens, and where each goes."""
        self._tokenize()
        pending, start = self.pending, self.length
        if not pending and self.last_hidden is None:
            raise ModelError(f"{self.key or 'a simulated transcript'}: nothing was read before the first response")
        tokens, _ = self.backend.reader.continuations(self.read_text, [o + self.closer for o in options])
        empty = [o for o, t in zip(options, tokens, strict=True) if not t]
        if empty:
            raise ModelError(f"option {empty[0]!r} tokenizes to nothing")
        end = start + len(pending)  # where every option starts
        limit = self.backend.max_length
        if limit and end + max(len(t) for t in tokens) > limit:
            raise ModelError(
                f"{self.key or 'the simulated transcript'} grew to {end + max(len(t) for t in tokens)} tokens, "
                f"longer than the context of model {self.backend.name!r} ({limit} tokens)"
            )
        feed, positions, targets, blocks = list(pending), list(range(start, end)), [], []
        for t in tokens:
            first = len(feed)
            feed += t[:-1]
            positions += range(end, end + len(t) - 1)
            targets += t[1:]
            blocks.append((first, len(feed)))  # each option sees the cache and all pending text
        return {
            "start": start,
            "pending": len(pending),
            "tokens": tokens,
            "feed": feed,
            "positions": positions,
            "targets": targets,
            "blocks": blocks,
        }
