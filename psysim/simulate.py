"""``psysim simulate``: synthetic participants, trial by trial, in closed loop.

For every model × condition × synthetic participant the model reads the
experiment as a participant would: the persona (per condition), the
instructions, then one trial at a time. At each trial it gives a probability
to every option; psysim samples the response from that distribution (with the
experiment's temperature and a seeded generator per participant), renders the
trial's feedback for the *sampled* choice (so outcome columns of the chosen and
the forgone option are looked up as for a person), and the history grows.

The model's key/value cache is kept between trials (:class:`psysim.backends.Session`),
so every token is processed once: the cost per participant grows with the
transcript's length, not its square (bench/bench_cache.py measures it).
Scoring the finished synthetic transcript with ``psysim run``'s method gives
back exactly the option probabilities seen while simulating (tested).

Who is simulated:

* without ``cohort.generate``, each real participant (in cohort order, the
  first ``simulation.n``) gets a synthetic *twin* with the same profile doing
  the same trials (``design: own``);
* with ``cohort.generate``, ``simulation.n`` profiles are drawn from the
  spec (:mod:`psysim.cohorts`), each doing the trial sequence of a seeded
  random real participant (``design: resample``) or of one named participant.

Simulation reads the raw format (the transcript as text, as Psych-201's main
analysis does) or, with ``simulation.format: chat``, each model's chat
template: the text up to a response is the user's turn and the response the
assistant's, read turn by turn exactly as scoring the finished conversation
reads it (tested).

Participants advance in lock-step groups (:func:`lock_step`): at each trial
one forward pass reads every member's new text and options; a group holds as
many participants as ``simulation.batch_tokens`` allows, those who finish
leave and the next join the running group, and each participant's numbers
and draws are those it would get alone.

Results go to a run folder (:mod:`psysim.store`) saved per batch of
participants, so an interrupted simulation resumes without duplicating or
losing anyone: ``simulated.parquet`` (one row per model × condition ×
participant × trial), ``transcripts.parquet`` (every synthetic transcript,
Psych-201 style) and ``participants.parquet`` (the synthetic profiles).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import Backend
from .data.studies import normalise, trial_item
from .data.transcripts import CLOSE, OPEN
from .errors import ConfigError, Problem, PsysimError
from .experiment import Experiment
from .metrics import option_probs
from .participants import Profile
from .render.persona import derangement, render_persona

__all__ = [
    "SIM_COLUMNS",
    "SimParticipant",
    "SimulationResult",
    "Walk",
    "human_table",
    "lock_step",
    "new_walk",
    "plan",
    "simulate_experiment",
    "simulate_participant",
    "trial_items",
]

#: Columns of simulated.parquet, in order (documented in docs/results.md).
SIM_COLUMNS = [
    "model",
    "condition",
    "participant",
    "experiment",
    "trial",
    "trial_number",
    "design_of",
    "persona_of",
    "item",
    "item_code",
    "options",
    "option_logprobs",
    "option_probs",
    "sampling_probs",
    "response",
    "human_response",
]
TRANSCRIPT_COLUMNS = [
    "model",
    "condition",
    "participant",
    "experiment",
    "design_of",
    "persona_of",
    "persona",
    "text",
    "tokens_read",
]


@dataclass(frozen=True)
class SimParticipant:
    """One synthetic participant: id, profile, whose trial sequence they do, and where the profile came from."""

    id: str
    profile: Profile
    design_of: str
    #: The real participant whose profile this is (twin) or was resampled from; None when drawn field by field.
    source: str | None
    #: A twin: a real participant's own profile doing that participant's own trials (their responses are known).
    twin: bool = False


@dataclass
class SimulationResult:
    """What a simulation produced: its tables, where they were written, and the manifest."""

    simulated: Any
    transcripts: Any
    participants: Any
    out: Path
    manifest: dict[str, Any]
    #: Batches saved by an earlier session and reused (all of them when the folder was already complete).
    reused: int = 0


def _structured(exp: Experiment):
    if exp.task is None:
        raise ConfigError(
            "psysim simulate needs a structured experiment (data.format: trials)",
            [
                exp.config.problem(
                    ("data", "format"),
                    "expected trials (a trial table and templates the model can answer trial by trial), "
                    f"found {exp.config.data.format}: a Psych-201 transcript cannot be re-rendered for new responses",
                )
            ],
        )
    return exp.task


def plan(exp: Experiment, n: int | None = None) -> list[SimParticipant]:
    """The synthetic participants of the experiment (see the module docstring), ``n`` overriding ``simulation.n``."""
    import numpy as np

    cfg = exp.config
    task = _structured(exp)
    sim = cfg.simulation
    n = n if n is not None else sim.n
    if n is not None and n < 1:
        raise ConfigError(f"the number of synthetic participants must be at least 1, found {n}")
    fmt = sim.format
    missing = [m for m in cfg.models if fmt not in m.formats]
    if missing:
        raise ConfigError(
            f"simulation.format is {fmt}: every model must read the experiment in that format",
            [
                cfg.problem(
                    ("models", m.index, "formats"),
                    f"expected {fmt} among the formats of {m.name!r}, found {list(m.formats)}"
                    + (" (chat needs the model's chat template, which psysim finds and checks there)" if fmt == "chat" else ""),
                )
                for m in missing
            ],
        )
    designs = [p for p in exp.participants if p in task.trials]
    if not designs:
        raise ConfigError(
            "nobody to simulate: no participant of the cohort has trials in the trial table",
            [cfg.problem(("cohort",), "expected at least one participant with trials (their trials are the design)")],
        )
    if sim.scale == "ordinal":
        from .metrics import ordinal_values

        words = next(
            (t.options for pid in designs for t in task.trials[pid] if t.options and ordinal_values(t.options) is None), None
        )
        if words is not None:
            raise ConfigError(
                "simulation.scale: ordinal needs numeric options",
                [
                    cfg.problem(
                        ("simulation", "scale"), f"expected options that are numbers (a rating scale), found {list(words)}"
                    )
                ],
            )
    generated = cfg.cohort.generate is not None
    design = sim.design or ("resample" if generated else "own")
    if design not in ("own", "resample") and design not in task.trials:
        raise ConfigError(
            "unknown simulation design",
            [
                cfg.problem(
                    ("simulation", "design"),
                    f"expected own, resample or a participant id of the trial table, found {design!r}",
                )
            ],
        )
    if not generated:
        n = len(designs) if n is None else n
        if n > len(designs):
            raise ConfigError(
                f"simulation.n is {n}, but the cohort has {len(designs)} participants",
                [
                    cfg.problem(
                        ("simulation", "n") if sim.n is not None else ("cohort",),
                        "twins of real participants are at most as many as the cohort; "
                        "add cohort.generate to draw more synthetic profiles",
                    )
                ],
            )
        if design == "resample":
            rng = np.random.default_rng([cfg.seed, 1])
            picks = [designs[i] for i in rng.integers(0, len(designs), size=n)]
        else:
            picks = designs[:n] if design == "own" else [design] * n
        return [SimParticipant(pid, exp.profile(pid), d, pid, twin=d == pid) for pid, d in zip(designs[:n], picks, strict=True)]

    from .cohorts import check_spec, generate_profiles

    problems = check_spec(cfg, exp.schema)
    if problems:
        raise ConfigError("cohort.generate cannot produce valid profiles", problems)
    n = len(exp.participants) if n is None else n
    profiles, sources = generate_profiles(cfg, exp.schema, exp.cohort, n, cfg.seed)
    if design == "own":
        raise ConfigError(
            "generated participants have no trials of their own",
            [cfg.problem(("simulation", "design"), "expected resample or a participant id with cohort.generate, found own")],
        )
    if design == "resample":
        rng = np.random.default_rng([cfg.seed, 1])
        picks = [designs[i] for i in rng.integers(0, len(designs), size=n)]
    else:
        picks = [design] * n
    return [SimParticipant(p.participant, p, d, sources.get(p.participant)) for p, d in zip(profiles, picks, strict=True)]


def check_feedback(exp: Experiment, designs) -> None:
    """Render every trial of every design participant with every option, before any model loads.

    A person can choose any option, so the templates (feedback above all, e.g.
    ``row['payoff_' ~ response]``) must work for each: an outcome column missing
    for one option is an error now, located, not a crash hours into a run.
    """
    from .errors import Problem, TemplateError

    task = exp.task
    problems: list[Problem] = []
    for pid in dict.fromkeys(designs):
        for trial in task.trials[pid]:
            for option in trial.options or ():
                try:
                    task.render_trial(trial, option)
                except PsysimError as exc:
                    problems += [
                        Problem(
                            f"with response {option!r}: {p.message}", file=p.file, where=p.where, line=p.line, column=p.column
                        )
                        for p in exc.problems
                    ] or [Problem(f"with response {option!r}: {exc.message}", where=f"participant {pid}, trial {trial.number}")]
                    break
            if len(problems) >= 5:
                break  # a few located examples are enough to act on
        if len(problems) >= 5:
            break
    if problems:
        raise TemplateError("the templates cannot render every option a synthetic participant may choose", problems)


class Walk:
    """One synthetic participant's closed loop, one trial at a time, so that many can advance together.

    :meth:`ask` reads the next trial (up to the response) into the session and
    returns its options; :meth:`answer` takes the session's log-probabilities
    of those options, samples the response, and reads the feedback for it.
    """

    def __init__(self, exp: Experiment, session, who: SimParticipant, persona: str, *, temperature: float, rng, chat=None):
        task = exp.task
        self.exp, self.session, self.who, self.temperature, self.rng = exp, session, who, temperature, rng
        #: A :class:`psysim.render.chat.ChatTemplate` for chat-format simulation (the session reads its rendering), or None.
        self.chat = chat
        self.messages: list[dict[str, str]] = []
        self.consumed = ""  # the chat text read so far
        self.trials = task.trials[who.design_of]
        self.items = trial_items(exp, who.design_of)
        self.sep = task.config.separator
        self.persona, self.persona_of = persona, None  # whose profile the persona is: set by the caller
        self.text = persona
        if "instructions" in task.templates:
            self.text += task.instructions(who.design_of) + self.sep
        self.user = self.text  # the user's turn so far (chat): persona, instructions, the trial up to its response
        if chat is None:
            session.read(self.text)
        self.rows: list[dict[str, Any]] = []
        self.spans: list[tuple[int, int]] = []
        self.k = 0
        self.since = ""  # the text since the previous response: where an item pattern reads an unanswered trial's item
        self._before = ""

    def _read_chat(self) -> None:
        """Read the chat rendering up to where the next response goes: what scoring the finished chat reads there.

        The conversation so far plus this user turn and a placeholder answer is
        rendered; the text before the placeholder must extend what was read
        (templates that rewrite earlier turns once more follow cannot be read
        turn by turn, and are refused rather than read differently).
        """
        from .errors import TemplateError

        turns = [*self.messages, {"role": "user", "content": self.user}, {"role": "assistant", "content": "x"}]
        rendering = self.chat.render(turns, where=f"participant {self.who.id}, trial {self.k + 1}")
        prefix = rendering.text[: rendering.spans[-1][0]]
        if not prefix.startswith(self.consumed):
            raise TemplateError(
                f"chat template {self.chat.name} renders earlier turns differently once more turns follow",
                [Problem("closed-loop chat simulation reads the conversation turn by turn; use simulation.format: raw")],
            )
        self.session.read(prefix[len(self.consumed) :])
        self.consumed = prefix

    @property
    def done(self) -> bool:
        return self.k >= len(self.trials)

    def ask(self) -> list[str]:
        """Read trial ``k`` up to its response; its options."""
        trial = self.trials[self.k]
        if not trial.options:
            raise PsysimError(
                f"trial {trial.number} of participant {self.who.design_of} has no options: a synthetic response is "
                "sampled from the options (set data.options)"
            )
        before, _ = self.exp.task.render_trial(trial, trial.options[0])  # the text before the response does not depend on it
        if self.chat is None:
            self.session.read(before + OPEN)
        else:
            self.user += before
            self._read_chat()
        self.text += before + OPEN
        self.since += before
        self._before = before
        return list(trial.options)

    def answer(self, lps: list[float]) -> None:
        """Sample the response from the options' log-probabilities, read it and its feedback."""
        trial, k = self.trials[self.k], self.k
        item = self.items[k]
        if item is None:  # no human answered this trial: its item by the same rule, on the synthetic text
            rendered = normalise(self._before)
            item = trial_item(self.exp.config.data, self.since, row=trial.row, number=trial.number, rendered=rendered) or rendered
        probs = option_probs(lps)
        sampling = option_probs(lps, self.temperature)
        choice = trial.options[int(self.rng.choice(len(sampling), p=sampling))]
        self.session.respond(choice)
        self.spans.append((len(self.text), len(self.text) + len(choice)))
        _, after = self.exp.task.render_trial(trial, choice)  # feedback for the sampled choice
        last = k == len(self.trials) - 1
        tail = CLOSE + after + ("" if last else self.sep)
        if self.chat is None:
            self.session.read(tail)
        else:
            self.consumed += choice
            self.messages += [{"role": "user", "content": self.user}, {"role": "assistant", "content": choice}]
            self.user = after + ("" if last else self.sep)
        self.text += choice + tail
        self.since = after + ("" if last else self.sep)
        self.rows.append(
            {
                "trial": k,
                "trial_number": trial.number,
                "design_of": self.who.design_of,
                "item": item,
                "item_code": self.exp.task.item_code(trial),
                "options": list(trial.options),
                "option_logprobs": lps,
                "option_probs": probs,
                "sampling_probs": sampling,
                "response": choice,
                "human_response": trial.response if self.who.twin else None,
            }
        )
        self.k += 1


def lock_step(
    backend: Backend, walks: Sequence[Walk], sizes: Sequence[int] | None = None, budget: int | None = None
) -> Iterator[int]:
    """Advance every walk to its end in lock-step, one :meth:`~psysim.backends.Backend.options_batch` call per trial;
    yields each walk's index as it finishes.

    The group holds walks, in order, while their ``sizes`` (estimated tokens
    of each whole transcript) sum to at most ``budget`` (always at least one);
    a walk that finishes closes its session, which frees its row, and the next
    walks join the running group. Each walk samples with its own generator, so
    what it draws does not depend on the group.
    """
    sizes = sizes if sizes is not None else [0] * len(walks)
    waiting = collections.deque(range(len(walks)))
    active: list[int] = []
    total = 0
    while waiting or active:
        while waiting and admits(total, sizes[waiting[0]], budget):
            total += sizes[waiting[0]]
            active.append(waiting.popleft())
        asking = [i for i in active if not walks[i].done]  # a walk may have no trials left from the start
        if asking:
            options = [walks[i].ask() for i in asking]
            for i, lps in zip(asking, backend.options_batch([walks[i].session for i in asking], options), strict=True):
                walks[i].answer(lps)
        for i in [i for i in active if walks[i].done]:
            walks[i].session.close()
            active.remove(i)
            total -= sizes[i]
            yield i


def admits(total: int, size: int, budget: int | None) -> bool:
    """Whether a walk of ``size`` tokens joins a group holding ``total``: within the budget, or the group is empty."""
    return total == 0 or budget is None or total + size <= budget


def check_budget(sizes: list[int], budget: int, names: list[str]) -> None:
    """A participant larger than ``budget`` alone cannot be simulated: an error naming both."""
    too_big = [(n, s) for n, s in zip(names, sizes, strict=True) if s > budget]
    if too_big:
        name, size = too_big[0]
        raise ConfigError(
            f"simulation.batch_tokens ({budget}) is smaller than one participant's transcript",
            [Problem(f"participant {name}: about {size} tokens; expected simulation.batch_tokens of at least {size}")],
        )


def simulate_participant(exp: Experiment, session, who: SimParticipant, persona: str, *, temperature: float, rng):
    """Run one synthetic participant through the task in ``session``; returns (rows, transcript text, spans).

    ``rows`` are dicts with the per-trial columns of :data:`SIM_COLUMNS` that
    do not depend on the model or condition. The text is what the model read
    (persona included), with every response in ``<<…>>``.
    """
    walk = Walk(exp, session, who, persona, temperature=temperature, rng=rng)
    while not walk.done:
        walk.answer(session.options(walk.ask()))
    return walk.rows, walk.text, walk.spans


def simulate_batches(
    exp: Experiment, backend: Backend, model, ci: int, batches, by_id, shuffle, rank, progress=None
) -> Iterator[tuple[Any, Any, Any]]:
    """Batches of synthetic participants under one model and condition; yields ``(batch, rows, transcripts)`` tables
    as each batch's last participant finishes.

    ``batches`` are ``(batch, people)`` pairs. Every participant of every batch
    walks in one stream of lock-step groups bounded by
    ``simulation.batch_tokens`` (a group is not cut at a batch's end: the next
    batch's participants join it), each with its own seeded generator, so a
    batch gives the same tables wherever, however and with whomever it is
    computed. A batch is the unit a simulation saves (and a Ray worker
    computes). ``progress(n)`` after n participants finished.
    """
    import pandas as pd

    cond = exp.config.conditions[ci]
    walks, member = [], []
    for b, people in batches:
        walks += [new_walk(exp, backend, model, ci, cond, who, by_id, shuffle, rank[who.id]) for who in people]
        member += [b] * len(people)
    sizes = [backend.count_tokens(w.text + _rest(exp, w.who), ()) for w in walks]
    budget = exp.config.simulation.batch_tokens
    check_budget(sizes, budget, [w.who.id for w in walks])
    left = collections.Counter(member)
    for n, i in enumerate(lock_step(backend, walks, sizes, budget), start=1):
        if progress:
            progress(n)
        b = member[i]
        left[b] -= 1
        if left[b]:
            continue
        rows, transcripts = [], []
        for j in [j for j, m in enumerate(member) if m == b]:  # in the batch's order, whatever order they finished in
            r, t = _finish(walks[j], model, cond)
            rows += r
            transcripts.append(t)
            walks[j] = None  # saved by the caller: its rows need not stay in memory
        yield b, pd.DataFrame(rows, columns=SIM_COLUMNS), pd.DataFrame(transcripts, columns=TRANSCRIPT_COLUMNS)


def simulate_batch(exp: Experiment, backend: Backend, model, ci: int, people, by_id, shuffle, rank, progress=None):
    """One batch of synthetic participants under one model and condition: ``(rows, transcripts)`` as tables
    (:func:`simulate_batches` of one batch; what a Ray worker computes)."""
    [(_, rows, transcripts)] = simulate_batches(exp, backend, model, ci, [(0, people)], by_id, shuffle, rank, progress)
    return rows, transcripts


def simulate_experiment(
    exp: Experiment,
    *,
    out: str | os.PathLike | None = None,
    n: int | None = None,
    dry_run: bool = False,
    progress: bool = True,
    backends: dict[str, Backend] | None = None,
    restart: bool = False,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
) -> SimulationResult:
    """Simulate every model × condition × synthetic participant into a resumable run folder (module docstring).

    ``engine="ray"`` computes the batches on Ray workers, as :func:`psysim.run.run_experiment` does.
    """
    import pandas as pd

    from .progress import progress_bar
    from .record import now
    from .run import backend_for, check_engines, check_writable, compute_engine
    from .store import RunFolder

    cfg = exp.config
    folder = Path(out) if out is not None else cfg.output.with_name(cfg.output.name + "-simulated")
    check_engines(exp, dry_run=dry_run, backends=backends, engine=engine)
    check_writable(folder)
    people = plan(exp, n)
    check_feedback(exp, [p.design_of for p in people])
    ids = [p.id for p in people]
    rank = {pid: i for i, pid in enumerate(ids)}
    shuffle = derangement(ids, cfg.seed) if any(c.type == "shuffled_persona" for c in cfg.conditions) else {}
    by_id = {p.id: p for p in people}
    size = cfg.save_every
    batches = [people[i : i + size] for i in range(0, len(people), size)]
    units = [(m, ci, c) for m in cfg.models for ci, c in enumerate(cfg.conditions)]
    manifest = _manifest(exp, people, len(batches) * len(units), dry_run, n)
    started = time.time()
    store = RunFolder.open(folder, manifest, restart=restart)
    if store.complete:
        return _load(folder, store.manifest)
    todo = {u: [b for b in range(len(batches)) if b not in store.saved_batches(u)] for u in range(len(units))}
    resumed = sum(len(batches) - len(t) for t in todo.values())
    store.begin_session(now(started), resumed)
    try:
        with compute_engine(engine, address, workers) as pool:
            if pool is not None:
                store.record_engine(pool.describe())
            for model in cfg.models:
                mine = [u for u, (m, _, _) in enumerate(units) if m is model and todo[u]]
                if not mine:
                    continue
                total = len(people) * len([u for u, (m, _, _) in enumerate(units) if m is model])
                done = total - sum(len(batches[b]) for u in mine for b in todo[u])
                bar = progress_bar(total, model.name + (" (Ray)" if pool is not None else ""), enabled=progress, initial=done)
                backend = None
                if pool is not None:
                    results = pool.batches(
                        model,
                        cfg.folder,
                        (exp, by_id, shuffle, rank),
                        [(u, b, units[u][1], batches[b]) for u in mine for b in todo[u]],
                        method="simulate",
                        dry_run=dry_run,
                        on_identity=lambda i, name=model.name: store.record_model(name, i),
                    )
                else:
                    backend = backend_for(model, cfg.folder, backends, dry_run, progress)
                    store.record_model(model.name, backend.identity())
                    # Lazy: each unit's stream starts when the loop below has saved the one before, so `done` is the
                    # count before it.
                    results = (
                        (u, b, rows, transcripts)
                        for u in mine
                        for b, rows, transcripts in simulate_batches(
                            exp,
                            backend,
                            model,
                            units[u][1],
                            [(b, batches[b]) for b in todo[u]],
                            by_id,
                            shuffle,
                            rank,
                            progress=bar.offset(done) if bar else None,
                        )
                    )
                for u, b, rows, transcripts in results:
                    store.save_batch(u, b, rows, extra={"transcripts": transcripts})
                    done += len(batches[b])
                    if bar:
                        bar.update_to(done)
                if bar:
                    bar.close()
                results = backend = None  # the model's memory is freed before the next model loads
        simulated = store.saved_rows()
        transcripts = store.saved_rows("transcripts")
        order = {(m.name, c.name): i for i, (m, _, c) in enumerate(units)}

        def canonical(frame, by):
            keys = frame.assign(
                _u=[order[(a, b)] for a, b in zip(frame["model"], frame["condition"], strict=True)],
                _p=frame["participant"].map(rank),
            )
            return keys.sort_values(["_u", "_p", *by], kind="stable").drop(columns=["_u", "_p"]).reset_index(drop=True)

        simulated = canonical(simulated, ["trial"])[SIM_COLUMNS]
        transcripts = canonical(transcripts, [])[TRANSCRIPT_COLUMNS]
        store.write_table("simulated.parquet", simulated)
        store.write_table("transcripts.parquet", transcripts)
        store.write_table("participants.parquet", participant_profiles(exp, people))
        store.write_table("humans.parquet", human_table(exp))
    finally:
        store.end_session(time.time() - started)
    store.finish({"finished": now(time.time())})
    return SimulationResult(
        simulated, transcripts, pd.read_parquet(folder / "participants.parquet"), folder, store.manifest, resumed
    )


def trial_items(exp: Experiment, participant: str) -> list[str | None]:
    """The item of each of a participant's trials as run and the baselines define it; ``None`` where no human answered.

    Items come from the participant's transcript, where the study's rules
    (:func:`psysim.data.studies.apply_rules`) set them: one definition for scoring,
    baselines, simulation and export.
    """
    trials = exp.task.trials[participant]
    human = exp.transcripts.get(participant)
    answered = [t.index for t in trials if t.response is not None]
    known = {i: r.item for i, r in zip(answered, human.responses, strict=True)} if human is not None else {}
    return [known.get(t.index) for t in trials]


def human_table(exp: Experiment):
    """``humans.parquet``: every real response of the experiment's participants, its item and profile beside it.

    What ``psysim report`` compares the synthetic cohort with: items are the
    study's items (:func:`trial_items`), the same keys as the simulated rows';
    responses outside their trial's options (``outside_options: drop``) are left out.
    """
    import pandas as pd

    task = exp.task
    fields = list(exp.schema.fields)
    rows = []
    for pid in exp.participants:
        profile = exp.profile(pid).values
        human = exp.transcripts.get(pid)
        if human is None:
            continue
        answered = [(k, t) for k, t in enumerate(task.trials.get(pid, [])) if t.response is not None]
        for (k, trial), r in zip(answered, human.responses, strict=True):
            if not r.options or r.excluded:
                continue
            rows.append(
                {
                    "participant": pid,
                    "experiment": task.experiment,
                    "trial": k,
                    "trial_number": trial.number,
                    "item": r.item,
                    "item_code": task.item_code(trial),
                    "options": list(r.options),
                    "response": r.text,
                    **{f"profile.{f}": profile.get(f) for f in fields},
                }
            )
    columns = ["participant", "experiment", "trial", "trial_number", "item", "item_code", "options", "response"]
    return pd.DataFrame(rows, columns=[*columns, *(f"profile.{f}" for f in fields)]).astype(
        {f"profile.{f}": "object" for f in fields}
    )


def new_walk(exp: Experiment, backend, model, ci: int, cond, who: SimParticipant, by_id, shuffle, index: int) -> Walk:
    """A participant's walk under one model and condition, its persona read, ready for its first trial.

    ``by_id`` maps participant ids to :class:`SimParticipant`, ``shuffle`` each
    id to whose profile its ``shuffled_persona`` reads, and ``index`` is the
    participant's place in the plan (its generator's key).
    """
    import numpy as np

    cfg = exp.config
    if cond.type == "no_persona":
        persona_of, persona = None, ""
    else:
        persona_of = shuffle[who.id] if cond.type == "shuffled_persona" else who.id
        template = exp.persona_templates[cond.name]
        persona = render_persona(template, by_id[persona_of].profile, exp.schema, experiment=exp.task.experiment)
    # One generator per (model, condition, participant): the same draws however the work is batched or resumed.
    rng = np.random.default_rng([cfg.seed, model.index, ci, index])
    chat = exp.chat_templates[model.name] if cfg.simulation.format == "chat" else None
    # Chat text carries its own special tokens; the raw text gets the tokenizer's (a BOS), as scoring does.
    key = f"participant {who.id} ({cond.name})"
    if chat is None:
        session = backend.session(add_special_tokens=True, key=key)
    else:
        session = backend.session(add_special_tokens=False, key=key, closer=chat.closer)
    walk = Walk(exp, session, who, persona, temperature=cfg.simulation.temperature, rng=rng, chat=chat)
    walk.persona, walk.persona_of = persona, persona_of
    return walk


def _rest(exp: Experiment, who: SimParticipant) -> str:
    """The design participant's trials as a person answered them: how long the walk will grow, about."""
    human = exp.transcripts.get(who.design_of)
    return human.text if human is not None else ""


def _finish(walk: Walk, model, cond):
    """A finished walk's rows of simulated.parquet and its row of transcripts.parquet."""
    exp = walk.exp
    common = {"model": model.name, "condition": cond.name, "participant": walk.who.id, "experiment": exp.task.experiment}
    rows = [{**common, "persona_of": walk.persona_of, **r} for r in walk.rows]
    transcript = {
        **common,
        "design_of": walk.who.design_of,
        "persona_of": walk.persona_of,
        "persona": walk.persona,
        "text": walk.text,
        "tokens_read": walk.session.tokens_read,
    }
    return rows, transcript


def participant_profiles(exp: Experiment, people: list[SimParticipant]):
    """``participants.parquet`` of a simulation: id, design_of, source and ``profile.<field>`` columns (typed)."""
    import pandas as pd

    from .run import profile_column

    fields = list(exp.schema.fields)
    table = pd.DataFrame(
        {
            "participant": [p.id for p in people],
            "design_of": [p.design_of for p in people],
            "source": [p.source for p in people],
        }
    )
    for f in fields:
        table[f"profile.{f}"] = profile_column([p.profile.values.get(f) for p in people])
    return table


def _manifest(exp: Experiment, people, batches_total: int, dry_run: bool, n: int | None) -> dict[str, Any]:
    from .record import manifest_base

    cfg = exp.config
    return {
        **manifest_base(exp, limit=n, dry_run=dry_run, kind="simulation"),
        "participants": len(people),
        "participant_ids": [p.id for p in people],
        "batches_total": batches_total,
        "simulation": {
            "n": len(people),
            "temperature": cfg.simulation.temperature,
            "scale": cfg.simulation.scale,
            "format": cfg.simulation.format,
            "design": cfg.simulation.design or ("resample" if cfg.cohort.generate else "own"),
            "generated": cfg.cohort.generate is not None,
        },
    }


def _load(folder: Path, manifest: dict[str, Any]) -> SimulationResult:
    import pandas as pd

    return SimulationResult(
        pd.read_parquet(folder / "simulated.parquet"),
        pd.read_parquet(folder / "transcripts.parquet"),
        pd.read_parquet(folder / "participants.parquet"),
        folder,
        manifest,
        reused=manifest.get("batches_total", 0),
    )
