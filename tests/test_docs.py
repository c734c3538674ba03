"""Every psysim command shown in README.md and docs/ runs, as written, in its dry-run form.

The commands are read from the documents themselves (shell and console
blocks), so an example that rots (a renamed option, a moved experiment file, a
YAML key the schema no longer accepts) fails here. Runs and simulations get
``--dry-run`` and a small ``--limit`` (10) / ``--n`` (2) (the mock model: no weights, no
network) and write under a temporary folder, where the ``report`` and
``export`` commands that follow them find their folders. What cannot run here
is skipped with its reason: pulling models (network), ``make`` targets (they
are what CI itself runs), fine-tuning (tests/test_finetune.py trains on a tiny
model), and files a document only shows (``broken.yaml``). The real-model
numbers the README prints are checked by tests/test_readme.py and
tests/test_cli.py.
"""

from __future__ import annotations

import re
import shlex

from conftest import REPO, SHARED_DATA

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]


def commands() -> list[tuple[str, int, list[str]]]:
    """(document, block number, argv after `psysim`) for every psysim command in a shell or console block."""
    out = []
    for doc in DOCUMENTS:
        text = (REPO / doc).read_text("utf-8")
        for k, block in enumerate(re.findall(r"```(?:console|bash|sh)\n(.*?)```", text, flags=re.S)):
            for line in block.splitlines():
                line = line.removeprefix("$ ").strip()
                if not line.startswith(("psysim ", ".venv/bin/psysim ")):
                    continue  # output lines, make targets, other tools
                for part in line.split("&&"):
                    argv = shlex.split(part, comments=True)
                    if argv and argv[0] in ("psysim", ".venv/bin/psysim"):
                        out.append((doc, k, argv[1:]))
    return out


def skip_reason(argv: list[str]) -> str | None:
    if argv[:2] == ["models", "pull"]:
        return "pulls weights over the network"
    if argv[0] == "finetune" or any("finetune_eval" in a for a in argv):
        return "trains a model, or needs the adapter training writes (tests/test_finetune.py trains a tiny one)"
    files = [a for a in argv if a.endswith(".yaml")]
    if any(not (REPO / f).exists() for f in files):
        return f"a file the document only shows: {files}"
    if any("holt_laury" in a or "big5" in a for a in argv) and not SHARED_DATA.exists():
        return "reads ../shared/data, absent here"
    return None


def test_the_documents_show_commands():
    shown = {argv[0] for _, _, argv in commands()}
    assert {"validate", "run", "report", "render", "simulate", "export", "models", "finetune"} <= shown


def test_every_documented_command_runs_in_its_dry_run_form(run_cli, tmp_path, monkeypatch):
    from psysim.config import load_config
    from psysim.files import display_path

    monkeypatch.chdir(REPO)
    ran, skipped = [], []
    for doc, _block, argv in commands():
        reason = skip_reason(argv)
        if reason:
            skipped.append((doc, argv, reason))
            continue
        args = list(argv)
        if args[0] in ("run", "simulate"):
            config = load_config(REPO / args[1])
            default = config.output if args[0] == "run" else config.output.with_name(config.output.name + "-simulated")
            if "--out" in args:  # the document's own folder, under tmp_path
                args[args.index("--out") + 1] = str(tmp_path / args[args.index("--out") + 1])
                args += ["--dry-run", "-q"]
            else:
                args += ["--dry-run", "-q", "--out", str(tmp_path / display_path(default))]
            if args[0] == "run" and "--limit" not in args:
                args += ["--limit", "10"]  # enough people for the experiments' folds
            if args[0] == "simulate" and "--n" in args:
                args[args.index("--n") + 1] = "2"
        elif args[0] in ("report", "export"):
            args[1] = str(tmp_path / args[1])  # the folder the dry run above wrote
            if not (tmp_path / argv[1]).exists():
                skipped.append((doc, argv, "reports on a run skipped above"))
                continue
        r = run_cli(*args)
        assert r.exit_code == 0, f"{doc}: psysim {' '.join(argv)}\n{r.stderr}"
        assert "Traceback" not in r.stderr
        ran.append(argv[0])
    # simulate and export are shown on experiments that read ../shared/data: run wherever it is present.
    needed = {"validate", "run", "report", "render"} | ({"simulate", "export"} if SHARED_DATA.exists() else set())
    assert needed <= set(ran), skipped
