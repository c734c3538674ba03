"""The ``vllm`` backend: the vLLM serving engine behind the same contract as ``hf``.

psysim tokenises (:class:`~psysim.backends.encoding.TokenReader`, the one
rule) and hands vLLM *token ids*, never text, so both backends read exactly
the same tokens. Two kinds of engine request give every number:

- **A response's log-probability** comes from one request per transcript with
  ``prompt_logprobs=0``: vLLM returns each prompt token's own log-probability
  (full-vocabulary log-softmax of the raw logits), and a response's is the sum
  over its tokens, as in :mod:`psysim.backends.forward`.
- **An option's log-probability** (option + closing text, as ``hf`` scores it)
  comes from *next-token* requests: for every distinct token prefix of the
  trial's options, the text before the response plus that prefix, asking for
  the log-probabilities of exactly the tokens that follow it among the options
  (``logprob_token_ids``). The options' token lists form a trie, so ``Z>>``
  and ``V>>`` need three requests, not a pass over the whole transcript per
  option; vLLM's prefix cache serves the shared text before them.

vLLM's ``prompt_logprob_token_ids`` (0.32+, V2 model runner only) scores one
token per position, so it cannot give an option that is several tokens long
(``Z`` then ``>>``) in one pass; the trie requests above are exact for any length.

Closed-loop simulation uses the same next-token requests on each session's
tokens so far (every session of a lock-step group in one engine call).
Adapters are merged into the base model once, into psysim's cache
(:func:`merged_model`): vLLM on CPU cannot apply a LoRA to prompt log-probabilities.

vLLM pins its own torch and transformers, so it usually lives in its own
virtual environment with psysim installed beside it (``make vllm-env``;
docs/scale.md). ``psysim models check`` compares this backend with ``hf``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data.transcripts import CLOSE
from ..errors import ModelError, Problem
from . import Backend, ResponseScore, ScoreRequest, ScoreResult, Session
from .encoding import ReadingSession, TokenizedBackend

__all__ = ["INSTALL", "VLLMBackend", "VLLMSession", "available", "merged_model", "option_requests"]

#: How to get vLLM, said wherever it is missing.
INSTALL = (
    "pip install 'psysim[vllm]' where vLLM's pins fit your environment, or give it its own: "
    "`make vllm-env` (CPU) and run psysim from .venv-vllm/bin/psysim (docs/scale.md)"
)

#: Transcripts per engine call: progress is reported after each, and a call's requests are scheduled together.
CHUNK = 16


@contextlib.contextmanager
def _captured_stderr():
    """Hold what the engine prints while it starts (C++ warnings, weight-loading bars, deprecation notices).

    vLLM and the libraries under it write to file descriptor 2 directly, past
    Python's warnings filters, so the descriptor itself is redirected; the text
    is shown only if start-up fails.
    """
    import io
    import tempfile
    import warnings

    said = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.write(sink.read().decode("utf-8", "replace"))


def available() -> bool:
    """Whether the vLLM package can be imported here (without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def option_requests(options: Sequence[Sequence[int]]) -> list[tuple[tuple[int, ...], list[int]]]:
    """The next-token requests that give every option's log-probability: ``(token prefix, tokens that follow it)``.

    Every proper prefix of an option's token list is a node of the trie the
    options form; a request at that node asks for the log-probability of
    each token that follows it in some option. Sorted, so the requests (and
    their order) depend only on the options.
    """
    children: dict[tuple[int, ...], set[int]] = {}
    for tokens in options:
        for k, tok in enumerate(tokens):
            children.setdefault(tuple(tokens[:k]), set()).add(tok)
    return [(node, sorted(nxt)) for node, nxt in sorted(children.items())]


def _option_logprobs(options: Sequence[Sequence[int]], got: dict[tuple[int, ...], dict[int, float]]) -> list[float]:
    """Each option's log-probability: the sum, along its path through the trie, of each next token's."""
    return [math.fsum(got[tuple(tokens[:k])][tok] for k, tok in enumerate(tokens)) for tokens in options]


class VLLMBackend(TokenizedBackend, Backend):
    """A vLLM engine (``vllm.LLM``) and its tokenizer behind the backend contract."""

    def __init__(self, llm, tokenizer, *, name: str, identity: dict[str, Any], max_length: int | None):
        self.llm = llm
        self.tokenizer = tokenizer
        self.name = name
        self._identity = identity
        self.max_length = max_length

    @classmethod
    def from_config(cls, model_cfg, base: Path, **overrides) -> VLLMBackend:
        """Start the engine of a ``models:`` entry (its ``vllm:`` settings, dtype and adapter)."""
        from ..registry import resolve

        if not available():
            raise ModelError(f"model {model_cfg.name!r} has backend: vllm, but vLLM is not installed here: {INSTALL}")
        settings = model_cfg.vllm_settings()
        dtype = overrides.get("dtype") or model_cfg.dtype
        resolved = resolve(model_cfg.source, base)
        if resolved.kind == "gguf":
            raise ModelError(
                f"model {model_cfg.name!r}: the vllm backend reads a transformers folder (safetensors), not a .gguf "
                f"file; use the pulled registry model or the hf backend"
            )
        path = resolved.path
        identity: dict[str, Any] = {**resolved.identity, "backend": "vllm"}
        if model_cfg.adapter:
            path, identity["adapter"] = merged_model(resolved, Path(base, model_cfg.adapter), model_cfg.name)
        # The engine runs in this process (no spawned engine core re-importing the caller's __main__), with a
        # bounded KV cache on CPU (unset, vLLM takes most of the machine's memory) and only its errors printed.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings['kv_cache_gb']:g}")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        started = time.perf_counter()
        try:
            with _captured_stderr() as said:
                import vllm
                from vllm import LLM

                llm = LLM(
                    model=str(path),
                    tokenizer=str(path),
                    dtype=dtype,
                    seed=0,
                    max_model_len=settings["max_model_len"],
                    tensor_parallel_size=settings["tensor_parallel_size"],
                    gpu_memory_utilization=settings["gpu_memory_utilization"],
                    enforce_eager=settings["enforce_eager"],
                    enable_prefix_caching=True,
                    trust_remote_code=bool(model_cfg.trust_remote_code),
                )
        except Exception as exc:  # engine start-up raises many types; all mean "this engine cannot run this model here"
            lines = [line for line in str(exc).splitlines() if line.strip()]
            tail = [line for line in said.getvalue().splitlines() if line.strip()][-5:]
            raise ModelError(
                f"vLLM could not start model {model_cfg.name!r} from {path}: {type(exc).__name__}: "
                f"{lines[0] if lines else exc!r}",
                [Problem(f"the engine said: {line}") for line in tail],
            ) from None
        # One position is kept free: the engine generates (at least) one token after every prompt.
        max_length = llm.llm_engine.model_config.max_model_len - 1
        identity.update(
            dtype=dtype,
            vllm=vllm.__version__,
            engine={k: v for k, v in settings.items()},
            load_seconds=round(time.perf_counter() - started, 2),
        )
        return cls(llm, llm.get_tokenizer(), name=model_cfg.name, identity=identity, max_length=max_length)

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def _generate(self, prompts: list[list[int]], params: list) -> list:
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)

    def next_token_logprobs(self, requests: Sequence[tuple[list[int], list[int]]]) -> list[dict[int, float]]:
        """For each ``(prompt ids, token ids)``: log p(token | prompt) of each token, in one engine call."""
        from vllm import SamplingParams

        params = [
            SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(toks), detokenize=False) for _, toks in requests
        ]
        outs = self._generate([list(p) for p, _ in requests], params)
        got = []
        for (_, toks), out in zip(requests, outs, strict=True):
            [step] = out.outputs[0].logprobs[:1]
            got.append({t: step[t].logprob for t in toks})
        return got

    def score(self, requests: Sequence[ScoreRequest], progress: Callable[[int], None] | None = None) -> list[ScoreResult]:
        from vllm import SamplingParams

        encoded = self.prepare(requests)
        whole = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        results: list[ScoreResult] = []
        for first in range(0, len(encoded), CHUNK):
            part = encoded[first : first + CHUNK]
            outs = self._generate([enc.ids for enc in part], [whole] * len(part))
            asked, where = [], []
            for k, enc in enumerate(part):
                for t, opts in enumerate(enc.options or ()):
                    if opts:
                        before = enc.ids[: enc.ranges[t][0]]
                        for node, nxt in option_requests(opts):
                            asked.append((before + list(node), nxt))
                            where.append((k, t, node))
            got: dict[tuple[int, int], dict[tuple[int, ...], dict[int, float]]] = {}
            for (k, t, node), lps in zip(where, self.next_token_logprobs(asked) if asked else [], strict=True):
                got.setdefault((k, t), {})[node] = lps
            for k, (enc, out) in enumerate(zip(part, outs, strict=True)):
                per_token = out.prompt_logprobs
                responses = []
                for t, (s, e) in enumerate(enc.ranges):
                    lp = math.fsum(per_token[p][enc.ids[p]].logprob for p in range(s, e))
                    opts = enc.options[t] if enc.options else None
                    option_lps = tuple(_option_logprobs(opts, got[(k, t)])) if opts else None
                    responses.append(ResponseScore(lp, e - s, option_lps))
                req = requests[first + k]
                results.append(ScoreResult(req.key, responses, len(enc.ids), enc.forced))
            if progress:
                progress(len(results))
        return results

    def session(self, add_special_tokens: bool = True, key: Any = None, closer: str = CLOSE) -> VLLMSession:
        return VLLMSession(self, add_special_tokens, key, closer)

    def options_batch(self, sessions, options) -> list[list[float]]:
        """Every session's options in one engine call (next-token requests on each session's tokens so far)."""
        plans = [s._plan(o) for s, o in zip(sessions, options, strict=True)]
        asked, where = [], []
        for b, (s, tokens) in enumerate(zip(sessions, plans, strict=True)):
            for node, nxt in option_requests(tokens):
                asked.append((s.ids + list(node), nxt))
                where.append((b, node))
        got: list[dict[tuple[int, ...], dict[int, float]]] = [{} for _ in sessions]
        for (b, node), lps in zip(where, self.next_token_logprobs(asked), strict=True):
            got[b][node] = lps
        return [_option_logprobs(tokens, g) for tokens, g in zip(plans, got, strict=True)]


class VLLMSession(ReadingSession, Session):
    """Closed-loop reading for the vllm backend: the session's token ids, read by the one rule as ``hf`` reads them.

    The engine keeps no per-session state psysim manages: each trial's
    requests carry the whole token history, and vLLM's prefix cache makes the
    shared history cost (almost) nothing.
    """

    def __init__(self, backend: VLLMBackend, add_special_tokens: bool, key: Any, closer: str):
        self.backend = backend
        self.key = key
        self.closer = closer
        self.read_text = ""  # everything read and tokenized so far
        self.text = ""  # read but not yet tokenized
        self.ids: list[int] = list(backend.reader.bos) if add_special_tokens else []
        self.tokens_read = 0

    def _take(self, ids: list[int]) -> None:
        self.ids += ids
        self.tokens_read += len(ids)

    def options(self, options) -> list[float]:
        return self.backend.options_batch([self], [options])[0]

    def _plan(self, options) -> list[list[int]]:
        """Read what is pending; each option's tokens (with the closing text), checked against the context."""
        self._tokenize()
        if not self.ids:
            raise ModelError(f"{self.key or 'a simulated transcript'}: nothing was read before the first response")
        tokens, _ = self.backend.reader.continuations(self.read_text, [o + self.closer for o in options])
        empty = [o for o, t in zip(options, tokens, strict=True) if not t]
        if empty:
            raise ModelError(f"option {empty[0]!r} tokenizes to nothing")
        longest = len(self.ids) + max(len(t) for t in tokens)
        limit = self.backend.max_length
        if limit and longest > limit:
            raise ModelError(
                f"{self.key or 'the simulated transcript'} grew to {longest} tokens, "
                f"longer than the context of model {self.backend.name!r} ({limit} tokens)"
            )
        return tokens


def merged_model(resolved, adapter: Path, name: str) -> tuple[Path, dict[str, Any]]:
    """The base model with the adapter merged into its weights, in psysim's cache (made once, then reused).

    vLLM on CPU cannot apply a LoRA adapter to prompt log-probabilities, so
    psysim merges it (peft's ``merge_and_unload``) into a folder named by the
    hashes of base and adapter: the same pair always maps to the same folder,
    and a changed adapter to a new one. Written to a temporary folder and
    renamed, so an interrupted merge never leaves a half-written model.
    """
    import hashlib

    from ..registry import cache_dir, file_sha256
    from .hf import load_adapter

    weights = next((p for p in (adapter / "adapter_model.safetensors", adapter / "adapter_model.bin") if p.is_file()), None)
    if weights is None:
        raise ModelError(f"model {name!r}: adapter folder {adapter} has no adapter_model.safetensors")
    key = hashlib.sha256(f"{resolved.sha256}\n{file_sha256(weights)}".encode()).hexdigest()[:16]
    folder = cache_dir() / "merged" / key
    identity = {"path": str(adapter), "sha256": file_sha256(weights), "merged_into": str(folder)}
    if (folder / "psysim-merged.json").is_file():
        return folder, identity
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, kwargs = resolved.pretrained_args()
    model = AutoModelForCausalLM.from_pretrained(source, dtype="float32", **kwargs)
    wrapped, adapter_identity = load_adapter(model, adapter, name)
    merged = wrapped.merge_and_unload()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(partial)
    AutoTokenizer.from_pretrained(source, **kwargs).save_pretrained(partial)
    (partial / "psysim-merged.json").write_text(
        json.dumps({"base": resolved.identity, "adapter": adapter_identity}, indent=2, default=str) + "\n", "utf-8"
    )
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder, identity
