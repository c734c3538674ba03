"""``psysim run``: score every human response of every participant, per model × format × condition.

Writes a run folder (:mod:`psysim.store`): ``trials.parquet`` (one row per
model × format × condition × participant × response; columns documented in
docs/results.md), ``participants.parquet``, ``baselines.parquet`` and a
``manifest.json`` describing exactly what was run. Models are loaded one at a
time; within a batch of participants all prompts of a model (every condition
and format) are scored together, so length-sorted batches mix conditions.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from .backends import Backend, ScoreRequest, get_backend
from .errors import Problem, PsysimError
from .experiment import Experiment, Prompt
from .files import display_path
from .metrics import CONDITION_KEYS, option_probs, predicted_option
from .progress import progress_bar, quiet_libraries
from .record import manifest_base, now, study_manifest
from .render.context import fit_prompt
from .store import RunFolder

__all__ = ["COLUMNS", "RunResult", "baseline_table", "check_writable", "participant_table", "run_experiment"]

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

    def __init__(self, trials, out: Path, manifest: dict[str, Any], resumed: bool = False):
        self.trials = trials
        self.out = out
        self.manifest = manifest
        #: Whether saved batches of an earlier, interrupted session were reused.
        self.resumed = resumed


def check_engines(exp: Experiment, *, dry_run: bool, backends: dict[str, Backend] | None = None, engine: str = "local") -> None:
    """Fail before anything is written or loaded if the work cannot run as asked.

    ``engine`` must be ``local`` or ``ray`` (ready ``backends`` live in this
    process, so not with ``ray``), and every model's engine must be installed
    here (e.g. ``backend: vllm`` without vLLM).
    """
    from .backends import engine_problems
    from .errors import ConfigError, raise_if

    if engine not in ("local", "ray"):
        raise PsysimError(f"engine: expected local or ray, found {engine!r}")
    if engine == "ray" and backends:
        raise PsysimError("ready backends (backends=...) live in this process: they cannot be used with engine='ray'")
    if dry_run:
        return  # a dry run uses the mock backend for every model
    raise_if(
        engine_problems(exp.config, ready=set(backends or ())), ConfigError, f"cannot run {display_path(exp.config.path)} here"
    )


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


def run_experiment(
    exp: Experiment,
    *,
    out: str | os.PathLike | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    progress: bool = True,
    backends: dict[str, Backend] | None = None,
    restart: bool = False,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
) -> RunResult:
    """Score the experiment into its run folder, resuming a saved run of the same configuration.

    Scored rows are saved per batch of ``scoring.save_every`` participants as
    soon as they exist (:mod:`psysim.store`), so an interrupted run resumes
    with the same call and recomputes nothing that was saved. When every batch
    is scored, writes ``trials.parquet``, ``participants.parquet`` and
    ``baselines.parquet`` and marks the manifest complete; calling it again on
    a complete run reads the saved tables back.

    ``limit`` keeps the first N participants (in cohort order); ``dry_run``
    uses the deterministic mock backend for every model (no weights);
    ``backends`` supplies ready backends by model name (for notebooks and
    tests); ``restart`` discards a run saved in the folder. ``engine="ray"``
    scores the batches on Ray workers (:mod:`psysim.distributed`; ``address``
    joins a running head, ``workers`` sets how many): same folder, same tables.
    """
    import pandas as pd

    folder = Path(out) if out is not None else exp.config.output
    check_engines(exp, dry_run=dry_run, backends=backends, engine=engine)
    check_writable(folder)
    participants = [p for p in exp.participants if p in exp.transcripts]
    if limit is not None:
        if limit < 1:
            raise PsysimError(f"--limit must be at least 1, found {limit}")
        participants = limited(exp, participants, limit)
    cfg = exp.config
    folds = cfg.evaluation.folds
    if folds is not None and folds > len(participants):
        raise PsysimError(
            f"cannot make {folds} folds of {len(participants)} participants",
            [
                cfg.problem(
                    ("evaluation", "cross_validation"),
                    f"expected at most {len(participants)} folds (one participant each), found {folds}",
                )
            ],
        )
    size = cfg.save_every
    batches = [participants[i : i + size] for i in range(0, len(participants), size)]
    started = time.time()
    store = RunFolder.open(folder, _manifest(exp, participants, batches, dry_run, limit), restart=restart)
    if store.complete:
        return RunResult(pd.read_parquet(folder / "trials.parquet"), folder, store.manifest, resumed=True)
    todo = {m.index: [b for b in range(len(batches)) if b not in store.saved_batches(m.index)] for m in cfg.models}
    resumed = sum(len(batches) - len(t) for t in todo.values())
    store.begin_session(now(started), resumed)
    try:
        with compute_engine(engine, address, workers) as pool:
            if pool is not None:
                store.record_engine(pool.describe())
            for model in cfg.models:
                if todo[model.index]:
                    _score_model(exp, model, batches, todo[model.index], store, backends, dry_run, progress, pool)
        trials = _canonical(store.saved_rows(), cfg, participants)
        store.write_table("trials.parquet", trials)
        store.write_table("participants.parquet", participant_table(exp, trials))
        store.write_table("baselines.parquet", baseline_table(exp, participants, progress=progress))
    finally:
        store.end_session(time.time() - started)
    store.finish({"finished": now(time.time())})
    return RunResult(trials, folder, store.manifest, resumed=resumed > 0)


def compute_engine(engine: str, address: str | None, workers: int | None):
    """Where batches are computed: a Ray engine (``engine="ray"``; :mod:`psysim.distributed`), or None: this process."""
    import contextlib

    if engine != "ray":  # "local" (check_engines refused anything else)
        return contextlib.nullcontext(None)
    from .backends.hf import THREADS_ENV, cpu_threads
    from .distributed import ray_engine

    # Each worker gets the threads a single-process run would use only if asked (--threads); else one, so that
    # workers fill the machine's CPUs instead of oversubscribing them.
    threads = cpu_threads() if os.environ.get(THREADS_ENV) else 1
    return ray_engine(address, workers, threads)


def limited(exp: Experiment, participants: list[str], limit: int) -> list[str]:
    """``--limit N``: the first N participants (cohort order) of each study."""
    seen: dict[str, int] = {}
    out = []
    for pid in participants:
        study = exp.study(pid)
        if seen.get(study, 0) < limit:
            seen[study] = seen.get(study, 0) + 1
            out.append(pid)
    return out


def backend_for(model, base: Path, backends: dict[str, Backend] | None, dry_run: bool, progress: bool) -> Backend:
    """The backend of one model entry: a ready one by name, the mock for a dry run, else loaded (once per model)."""
    if backends and model.name in backends:
        return backends[model.name]
    if dry_run:
        from .backends.mock import MockBackend

        return MockBackend(model.name)
    quiet_libraries(progress)
    return get_backend(model, base)


def _score_model(exp, model, batches, todo, store: RunFolder, backends, dry_run, progress, engine=None) -> None:
    """Score one model's unsaved batches, saving each as soon as it is scored (here, or on ``engine``'s workers)."""

    def prompts_of(batch):
        return len(model.formats) * sum(len(exp.conditions_for(pid)) for pid in batch)

    total = sum(prompts_of(b) for b in batches)
    done = total - sum(prompts_of(batches[b]) for b in todo)
    bar = progress_bar(total, model.name + (" (Ray)" if engine is not None else ""), enabled=progress, initial=done)
    if engine is not None:
        results = engine.batches(
            model,
            exp.config.folder,
            exp,
            [(b, batches[b]) for b in todo],
            method="score",
            dry_run=dry_run,
            on_identity=lambda i: store.record_model(model.name, i),
        )
    else:
        backend = backend_for(model, exp.config.folder, backends, dry_run, progress)
        store.record_model(model.name, backend.identity())
        # Lazy: each batch is scored when the loop below asks for it, so `done` is the count before that batch.
        results = ((b, score_batch(exp, model, backend, batches[b], progress=bar.offset(done) if bar else None)) for b in todo)
    for b, frame in results:
        store.save_batch(model.index, b, frame)
        done += prompts_of(batches[b])
        if bar:
            bar.update_to(done)
    if bar:
        bar.close()


def score_batch(exp: Experiment, model, backend: Backend, pids, progress=None):
    """One batch of participants scored by one model: its rows of ``trials.parquet`` (every format and condition).

    The unit of work a run saves (and a Ray worker computes): the same batch
    gives the same rows wherever it is scored.
    """
    import pandas as pd

    prompts = [
        fit_prompt(exp, pid, cond.name, fmt, model.name, limit=backend.max_length, count=backend.count_tokens)
        for fmt in model.formats
        for cond in exp.config.conditions
        for pid in pids
        if cond in exp.conditions_for(pid)  # a study without profiles is scored without a persona only
    ]
    results = backend.score(score_requests([p for p, _ in prompts]), progress=progress)
    rows = []
    for (prompt, dropped), result in zip(prompts, results, strict=True):
        rows += _rows(model.name, prompt, dropped, result)
    return pd.DataFrame(rows, columns=COLUMNS)


def score_requests(prompts: list[Prompt]) -> list[ScoreRequest]:
    """The backend's requests for rendered prompts: text, response spans, each trial's options and closing text."""
    return [
        ScoreRequest(
            key=f"participant {p.participant} ({p.condition}, {p.format})",
            text=p.text,
            spans=p.spans,
            options=p.options,
            add_special_tokens=p.format == "raw",
            closers=p.closers,
        )
        for p in prompts
    ]


def _canonical(rows, cfg, participants):
    """Saved rows in the documented order: model, format, condition, participant (cohort order), trial.

    Batches are saved in whatever order they were scored (a resumed run differs
    from an uninterrupted one there); the final table must not.
    """
    if rows is None:
        import pandas as pd

        return pd.DataFrame(columns=COLUMNS)
    model_rank = {m.name: m.index for m in cfg.models}
    formats = {f: i for m in cfg.models for i, f in enumerate(m.formats)}
    conditions = {c.name: i for i, c in enumerate(cfg.conditions)}
    keys = rows.assign(
        _m=rows["model"].map(model_rank),
        _f=rows["format"].map(formats),
        _c=rows["condition"].map(conditions),
    )
    keys["_p"] = keys["participant"].map({p: i for i, p in enumerate(participants)})
    ordered = keys.sort_values(["_m", "_f", "_c", "_p", "trial"], kind="stable")
    return ordered[COLUMNS].reset_index(drop=True)


def _rows(model: str, prompt: Prompt, dropped: int, result) -> list[dict[str, Any]]:
    rows = []
    for t, score in enumerate(result.responses):
        if prompt.excluded and prompt.excluded[t]:
            continue  # outside its trial's options under outside_options: drop: read as context, not scored
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
            probs = option_probs(lps)
            predicted = predicted_option(options, lps)
            row.update(option_logprobs=lps, option_probs=probs, predicted=predicted, correct=predicted == prompt.responses[t])
        rows.append(row)
    return rows


def _manifest(exp: Experiment, participants, batches, dry_run, limit) -> dict[str, Any]:
    cfg = exp.config
    return {
        **manifest_base(exp, limit=limit, dry_run=dry_run),
        "participants": len(participants),
        "participant_ids": list(participants),
        "batches_total": len(batches) * len(cfg.models),
        "evaluation": {
            "baselines": list(cfg.evaluation.baselines),
            "cross_validation": cfg.evaluation.folds or "leave_one_out",
            "bootstrap": cfg.evaluation.bootstrap,
            "post_training": [{"base": b, "post_trained": p} for b, p in cfg.evaluation.post_training],
            "fine_tuning": [{"base": b, "fine_tuned": t} for b, t in cfg.evaluation.fine_tuning],
        },
        "formats": {m.name: list(m.formats) for m in cfg.models},
        "studies": study_manifest(exp, participants),
    }


def participant_table(exp: Experiment, trials):
    """``participants.parquet``: per model × format × condition × participant, the metrics beside the profile.

    Profile columns are ``profile.<field>``, typed as the schema says (missing
    values are null).
    """
    from .metrics import participant_metrics

    table = participant_metrics(trials) if len(trials) else None
    if table is None:
        import pandas as pd

        return pd.DataFrame(columns=[*CONDITION_KEYS, "experiment", "participant"])
    persona_of = trials.groupby([*CONDITION_KEYS, "participant"], sort=False)["persona_of"].first()
    table["persona_of"] = [persona_of.get(tuple(k)) for k in table[[*CONDITION_KEYS, "participant"]].itertuples(index=False)]
    fields = list(exp.schema.fields)
    profiles = {pid: exp.profile(pid).values for pid in dict.fromkeys(table["participant"])}
    for f in fields:
        table[f"profile.{f}"] = profile_column([profiles[pid].get(f) for pid in table["participant"]])
    return table


def profile_column(values):
    """A profile field's values as a table column: whole numbers stay integers (nullable Int64) beside missing ones."""
    known = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if known and all(isinstance(v, int) and not isinstance(v, bool) for v in known):
        import pandas as pd

        return pd.array(values, dtype="Int64")
    return values


def baseline_table(exp: Experiment, participants, *, progress: bool = False):
    """``baselines.parquet``: every baseline's cross-validated prediction of every response with options."""
    from .baselines import cross_validate, default_baselines, response_table

    ev = exp.config.evaluation
    table = response_table(exp)
    table = table[table["participant"].isin(set(participants))].reset_index(drop=True)
    columns = ["baseline", "experiment", "participant", "trial", "options", "response", "option_probs", "correct", "note"]
    if not len(table) or table["options"].isna().all():
        import pandas as pd

        return pd.DataFrame(columns=columns)
    out = cross_validate(table, default_baselines(ev.baselines), folds=ev.folds, seed=exp.config.seed, progress=progress)
    return out[columns]
