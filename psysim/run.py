"""``psysim run``: score every human response of every participant, per model × format × condition.

Writes ``trials.parquet`` (one row per model × format × condition ×
participant × response; columns documented in docs/results.md) and a
``manifest.json`` describing exactly what was run. Models are loaded one at a
time; all prompts of a model (every condition and format) are scored together,
so batches sorted by length mix conditions freely.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from .backends import Backend, ScoreRequest, get_backend
from .errors import ModelError, Problem, PsysimError
from .experiment import Experiment, Prompt
from .files import display_path
from .metrics import predicted_option

__all__ = ["COLUMNS", "RunResult", "check_writable", "run_experiment"]

#: The public columns of trials.parquet, in order (documented in docs/results.md).
COLUMNS = [
    "model",
    "format",
    "condition",
    "participant",
    "experiment",
    "trial",
    "response",
    "logprob",
    "n_tokens",
    "options",
    "option_logprobs",
    "option_probs",
    "predicted",
    "correct",
    "persona_of",
    "context_dropped",
]


class RunResult:
    """What a run produced: the trials table, where it was written, and the manifest."""

    def __init__(self, trials, out: Path, manifest: dict[str, Any]):
        self.trials = trials
        self.out = out
        self.manifest = manifest


def check_writable(folder: Path) -> None:
    """Fail before any model is loaded if results cannot be written to ``folder``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".psysim-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PsysimError(
            f"the results folder is not writable: {display_path(folder)}",
            [Problem(f"{exc.strerror or exc}; choose another with --out or the experiment's output key")],
        ) from None


def _fit(exp: Experiment, backend: Backend, pid: str, condition: str, fmt: str, model: str) -> tuple[Prompt, int]:
    """The prompt, with the oldest trials dropped if the model's context demands it (per the experiment's policy)."""
    prompt = exp.render(pid, condition, format=fmt, model=model)
    limit = backend.max_length
    # Every token covers at least one character, so a text shorter than the limit (with room for
    # special tokens) fits without tokenizing it here; the backend tokenizes it once anyway.
    if not limit or len(prompt.text) + 16 <= limit:
        return prompt, 0
    length = backend.count_tokens(prompt.text, prompt.spans, fmt == "raw")
    if length <= limit:
        return prompt, 0
    if exp.config.context_policy == "error":
        raise ModelError(
            f"participant {pid}'s transcript ({condition}, {fmt}) is {length} tokens, longer than the context of "
            f"model {model!r} ({limit} tokens)",
            [
                Problem(
                    "set `scoring: {context: drop_oldest}` in the experiment file to drop the oldest trials",
                    file=display_path(exp.config.path),
                )
            ],
        )
    n = len(exp.transcript(pid).responses)
    lo, hi = 1, n - 1  # the fewest dropped trials that fit: binary search (token count grows with kept trials)
    while lo < hi:
        mid = (lo + hi) // 2
        p = exp.render(pid, condition, format=fmt, model=model, drop_oldest=mid)
        if backend.count_tokens(p.text, p.spans, fmt == "raw") <= limit:
            hi = mid
        else:
            lo = mid + 1
    prompt = exp.render(pid, condition, format=fmt, model=model, drop_oldest=lo)
    if backend.count_tokens(prompt.text, prompt.spans, fmt == "raw") > limit:
        raise ModelError(
            f"participant {pid}: even the last trial alone does not fit the context of model {model!r} ({limit} tokens)"
        )
    return prompt, lo


def run_experiment(
    exp: Experiment,
    *,
    out: str | os.PathLike | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    progress: bool = True,
    backends: dict[str, Backend] | None = None,
) -> RunResult:
    """Score the experiment and write ``trials.parquet`` and ``manifest.json`` into the output folder.

    ``limit`` keeps the first N participants (in cohort order); ``dry_run``
    uses the deterministic mock backend for every model (no weights);
    ``backends`` supplies ready backends by model name (for notebooks and tests).
    """
    import pandas as pd

    folder = Path(out) if out is not None else exp.config.output
    check_writable(folder)
    participants = [p for p in exp.participants if p in exp.transcripts]
    if limit is not None:
        if limit < 1:
            raise PsysimError(f"--limit must be at least 1, found {limit}")
        participants = participants[:limit]
    started = time.time()
    rows: list[dict[str, Any]] = []
    identities: dict[str, Any] = {}
    for model in exp.config.models:
        if backends and model.name in backends:
            backend = backends[model.name]
        elif dry_run:
            from .backends.mock import MockBackend

            backend = MockBackend(model.name)
        else:
            _quiet_transformers(progress)
            backend = get_backend(model, exp.config.folder)
        identities[model.name] = backend.identity()
        prompts: list[tuple[Prompt, int]] = []
        for fmt in model.formats:
            for cond in exp.config.conditions:
                for pid in participants:
                    prompts.append(_fit(exp, backend, pid, cond.name, fmt, model.name))
        requests = [
            ScoreRequest(
                key=f"participant {p.participant} ({p.condition}, {p.format})",
                text=p.text,
                spans=p.spans,
                options=p.options,
                add_special_tokens=p.format == "raw",
            )
            for p, _ in prompts
        ]
        bar = _progress(len(requests), f"{model.name}", enabled=progress)
        results = backend.score(requests, progress=bar.update_to if bar else None)
        if bar:
            bar.close()
        for (prompt, dropped), result in zip(prompts, results, strict=True):
            rows += _rows(model.name, prompt, dropped, result)
        del backend, results  # free this model's weights before the next model loads
    trials = pd.DataFrame(rows, columns=COLUMNS)
    manifest = _manifest(exp, identities, participants, started, dry_run, limit)
    tmp = folder / "trials.parquet.tmp"
    trials.to_parquet(tmp, index=False)
    tmp.replace(folder / "trials.parquet")  # atomic: a crash never leaves a half-written table
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return RunResult(trials, folder, manifest)


def _rows(model: str, prompt: Prompt, dropped: int, result) -> list[dict[str, Any]]:
    rows = []
    for t, score in enumerate(result.responses):
        options = prompt.options[t] if prompt.options else None
        row = {
            "model": model,
            "format": prompt.format,
            "condition": prompt.condition,
            "participant": prompt.participant,
            "experiment": prompt.experiment,
            "trial": prompt.indices[t],
            "response": prompt.responses[t],
            "logprob": score.logprob,
            "n_tokens": score.n_tokens,
            "options": list(options) if options else None,
            "option_logprobs": None,
            "option_probs": None,
            "predicted": None,
            "correct": None,
            "persona_of": prompt.persona_of,
            "context_dropped": dropped,
        }
        if options and score.option_logprobs is not None:
            lps = list(score.option_logprobs)
            top = max(lps)
            norm = top + math.log(math.fsum(math.exp(x - top) for x in lps))
            probs = [math.exp(x - norm) for x in lps]
            predicted = predicted_option(options, lps)
            row.update(option_logprobs=lps, option_probs=probs, predicted=predicted, correct=predicted == prompt.responses[t])
        rows.append(row)
    return rows


def _quiet_transformers(progress: bool) -> None:
    """transformers' own warnings are not the user's business here; its progress bars follow ``progress``."""
    try:
        from transformers.utils import logging as tlog
    except ImportError:
        return
    tlog.set_verbosity_error()
    if progress:
        tlog.enable_progress_bar()
    else:
        tlog.disable_progress_bar()


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for pkg in ("psysim", "torch", "transformers", "peft", "pandas", "pyarrow", "jsonschema", "Jinja2"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _manifest(exp: Experiment, identities, participants, started, dry_run, limit) -> dict[str, Any]:
    cfg = exp.config
    return {
        "psysim_run": 1,
        "experiment": cfg.name,
        "config_path": str(cfg.path),
        "config_sha256": cfg.sha256,
        "config": cfg.raw,
        "seed": cfg.seed,
        "dry_run": dry_run,
        "limit": limit,
        "participants": len(participants),
        "models": identities,
        "versions": _versions(),
        "python": platform.python_version(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "started": _dt.datetime.fromtimestamp(started, _dt.UTC).isoformat(),
        "seconds": round(time.time() - started, 2),
    }


class _Bar:
    def __init__(self, total: int, desc: str):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit="transcript", dynamic_ncols=True)

    def update_to(self, n: int) -> None:
        self._bar.update(n - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def _progress(total: int, desc: str, enabled: bool) -> _Bar | None:
    if not enabled:
        return None
    try:
        return _Bar(total, desc)
    except ImportError:
        return None
