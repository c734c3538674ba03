"""psysim finetune: loss on responses only, a split by participant, determinism, resume, and held-out evaluation.

A tiny random-weight Llama (tests/models_tiny.py) is fine-tuned on 12 real
participants of the shipped thoma2025riskychoice study; the adapter's card,
`psysim run` on the held-out participants, and a reference computation of the
loss must agree exactly.
"""

from __future__ import annotations

import hashlib
import json
import math

import pandas as pd
import pytest
from test_run import error_of, save_tiny

THOMA = "participants/thoma2025riskychoice"

YAML = """\
name: ft
seed: 3
data:
  format: psych201
  path: {repo}/{thoma}/prompts.jsonl
  options: pooled
cohort:
  schema: {repo}/{thoma}/schema.json
  sample: 20
models:
  - name: tiny
    source: tiny-model
conditions: [no_persona]
finetune:
  epochs: 2
  batch_size: 4
  learning_rate: 0.001
  split: {{train: 0.6, validation: 0.2, test: 0.2}}
"""


@pytest.fixture
def ft(tmp_path, monkeypatch, hf):
    from conftest import REPO

    monkeypatch.chdir(tmp_path)
    save_tiny(tmp_path / "tiny-model", hf)
    (tmp_path / "experiment.yaml").write_text(YAML.format(repo=REPO, thoma=THOMA), encoding="utf-8")
    return tmp_path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loss_is_the_mean_nll_of_response_tokens_only(ft, hf):
    """batch_loss equals the reference NLL per response token; text after the last response changes nothing."""
    import torch

    import psysim
    from psysim.backends.forward import reference_scores
    from psysim.finetune import batch_loss, training_example

    exp = psysim.load_experiment("experiment.yaml")
    tok = hf.tokenizer()
    model = hf.model(len(tok))
    prompts = [exp.render(pid, "no_persona") for pid in exp.participants[:3]]
    examples = [training_example(tok, p.text, p.spans) for p in prompts]
    for (ids, labels), p in zip(examples, prompts, strict=True):
        kept = [t for t, label in zip(ids, labels, strict=True) if label != -100]
        assert tok.decode(kept) == "".join(p.responses)  # the labels are exactly the response tokens
    with torch.no_grad():
        loss = float(batch_loss(model, examples, tok.pad_token_id))
        ref = [reference_scores(model, tok, p.text, p.spans) for p in prompts]
    total = -math.fsum(lp for r in ref for lp, _ in r)
    tokens = sum(n for r in ref for _, n in r)
    assert loss == pytest.approx(total / tokens, abs=1e-5)
    # A non-response token after the last response is neither a target nor context for any response.
    changed = [training_example(tok, p.text + " Thank you for taking part!", p.spans) for p in prompts]
    with torch.no_grad():
        assert float(batch_loss(model, changed, tok.pad_token_id)) == pytest.approx(loss, abs=1e-6)


def test_loss_and_gradients_equal_the_plain_masked_full_logits_loss(ft, hf):
    """Projecting only response positions, without a mask, gives the loss and LoRA gradients of the textbook loss:
    ``model(input_ids, attention_mask).logits`` everywhere, shifted, cross-entropy where a label is a response token."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    import psysim
    from psysim.finetune import batch_loss, training_example

    exp = psysim.load_experiment("experiment.yaml")
    tok = hf.tokenizer()
    torch.manual_seed(0)
    # A copy: hf.model is shared between tests, and peft injects its layers into the model it is given.
    model = get_peft_model(copy.deepcopy(hf.model(len(tok))), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in model.named_parameters():  # LoRA's B starts at zero: give it values so gradients reach A
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    examples = [training_example(tok, p.text, p.spans) for p in (exp.render(pid, "no_persona") for pid in exp.participants[:4])]
    assert len({len(ids) for ids, _ in examples}) > 1  # padding is exercised

    def reference(batch):
        length = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [tok.pad_token_id] * (length - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (length - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (length - len(i)) for i, _ in batch])
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )

    model.eval()  # no dropout: both losses see the same network
    grads = []
    for loss_of in (reference, lambda b: batch_loss(model, b, tok.pad_token_id)):
        model.zero_grad()
        loss = loss_of(examples)
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (ref_loss, ref_grads), (loss, got) = grads
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    assert ref_grads.keys() == got.keys() and len(got) > 0
    for name, g in got.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-5, rtol=1e-4), name


def test_micro_batches_accumulate_the_whole_batchs_gradient(ft, hf):
    """finetune.batch_tokens: parts of a batch, backpropagated one by one, give the whole batch's loss and gradient."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    import psysim
    from psysim.finetune import accumulate, batch_loss, micro_batches, training_example

    exp = psysim.load_experiment("experiment.yaml")
    tok = hf.tokenizer()
    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(hf.model(len(tok))), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    model.eval()
    batch = [training_example(tok, p.text, p.spans) for p in (exp.render(pid, "no_persona") for pid in exp.participants[:4])]
    lengths = [len(ids) for ids, _ in batch]
    assert [len(part) for part in micro_batches(batch, max(lengths))] == [1, 1, 1, 1]
    assert [len(part) for part in micro_batches(batch, 10**6)] == [4]
    assert [len(part) for part in micro_batches(batch, 1)] == [1, 1, 1, 1]  # one example at least, however long

    def grads(step):
        model.zero_grad()
        value = step()
        return value, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    def whole():
        loss = batch_loss(model, batch, tok.pad_token_id)
        loss.backward()
        return loss.item()

    full, full_grads = grads(whole)
    parts, part_grads = grads(lambda: accumulate(model, batch, tok.pad_token_id, max(lengths)))
    assert parts == pytest.approx(full, abs=1e-6)
    for name, g in part_grads.items():
        assert torch.allclose(g, full_grads[name], atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize(("alpha", "dropout"), [(8, 0.0), (6, 0.0), (8, 0.1)])
def test_fused_adapters_give_peft_s_loss_and_gradients(ft, hf, alpha, dropout):
    """The training step's fused adapters equal peft's ``result + B(A(dropout(x))) * scaling``.

    The loss bit for bit where the scaling (alpha / rank) is a power of two (the
    same forward arithmetic), to float rounding otherwise; the gradients to float
    rounding (the adapter's products are summed in another order). Without
    dropout every layer is one ``AdapterLinear`` node; with dropout each adds its
    adapter in one ``addmm`` (bit for bit, gradients included, at a power of two).
    peft's forward is back after the block.
    """
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    import psysim
    from psysim.finetune import batch_loss, fused_adapters, training_example

    exp = psysim.load_experiment("experiment.yaml")
    tok = hf.tokenizer()
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear")
    model = get_peft_model(copy.deepcopy(hf.model(len(tok))), config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    batch = [training_example(tok, p.text, p.spans) for p in (exp.render(pid, "no_persona") for pid in exp.participants[:3])]
    adapted = [m for m in model.modules() if hasattr(m, "lora_A")]

    def nodes(loss):
        seen, todo = set(), [loss.grad_fn]
        while todo:
            node = todo.pop()
            if node is not None and node not in seen:
                seen.add(node)
                todo.extend(n for n, _ in node.next_functions)
        return [type(n).__name__ for n in seen]

    def step():
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        loss = batch_loss(model, batch, tok.pad_token_id)
        names = nodes(loss)
        loss.backward()
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, names

    peft_loss, peft_grads, _ = step()
    with fused_adapters(model):
        assert all("forward" in vars(m) for m in adapted)  # every LoRA layer of this model is fused ...
        loss, grads, names = step()
    assert not any("forward" in vars(m) for m in adapted)  # ... and only within the block
    assert names.count("AdapterLinearBackward") == (0 if dropout else len(adapted))
    assert grads.keys() == peft_grads.keys() and len(grads) == 2 * len(adapted)
    if alpha == 8:
        assert torch.equal(loss, peft_loss)
    assert loss.item() == pytest.approx(peft_loss.item(), abs=1e-6)
    if alpha == 8 and dropout:
        assert all(torch.equal(grads[n], peft_grads[n]) for n in grads)
    assert all(torch.allclose(grads[n], peft_grads[n], atol=1e-6, rtol=1e-5) for n in grads)

    # A LoRA variant (DoRA here) keeps peft's own forward.
    dora = get_peft_model(copy.deepcopy(hf.model(len(tok))), LoraConfig(r=4, use_dora=True, target_modules="all-linear"))
    with fused_adapters(dora):
        assert not any("forward" in vars(m) for m in dora.modules() if hasattr(m, "lora_A"))


@pytest.mark.parametrize("fused", [False, True], ids=["peft", "fused"])
def test_gradient_checkpointing_gives_the_same_gradients(ft, hf, fused):
    """finetune.gradient_checkpointing trades time for memory only: none, selective and full give identical gradients.

    With peft's adapter modules and with the training step's fused ones (:func:`psysim.finetune.fused_adapters`).

    And each recomputes what it says: counted by torch's FLOP counter during the
    backward pass, ``selective`` recomputes only the adapters' rank-r products
    (no product with the model's weights), ``full`` the whole forward pass.
    """
    import contextlib
    import copy

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import psysim
    from psysim.config import FinetuneConfig
    from psysim.finetune import batch_loss, fused_adapters, lora_model, training_example

    class ProductFlops(TorchDispatchMode):
        """FLOPs of the matrix products run while active (torch's FlopCounterMode also hooks modules, which
        selective checkpointing's op-by-op replay does not tolerate)."""

        def __init__(self, rank):
            super().__init__()
            self.rank, self.wide, self.thin = rank, 0, 0  # products over more than `rank` terms, and the adapters'

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                left, right = args[-2:]
                flops = 2 * left.shape[0] * left.shape[1] * right.shape[1]
                if left.shape[1] > self.rank:
                    self.wide += flops
                else:
                    self.thin += flops
            return func(*args, **(kwargs or {}))

    exp = psysim.load_experiment("experiment.yaml")
    tok = hf.tokenizer()
    batch = [training_example(tok, p.text, p.spans) for p in (exp.render(pid, "no_persona") for pid in exp.participants[:3])]
    out = {}
    for checkpointing in ("none", "selective", "full"):
        torch.manual_seed(0)
        model = lora_model(
            copy.deepcopy(hf.model(len(tok))), FinetuneConfig(rank=4, alpha=8, gradient_checkpointing=checkpointing)
        )
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05)
        model.train()  # checkpointing acts in training mode only
        assert model.get_base_model().model.layers[0].gradient_checkpointing == (checkpointing != "none")
        losses, backward_flops = [], [0, 0]
        for example in batch:
            with fused_adapters(model) if fused else contextlib.nullcontext():  # recomputation runs the same forward
                loss = batch_loss(model, [example], tok.pad_token_id, reduction="sum")
                with ProductFlops(rank=4) as counter:
                    loss.backward()
            losses.append(loss.item())
            backward_flops = [backward_flops[0] + counter.wide, backward_flops[1] + counter.thin]
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        out[checkpointing] = (losses, grads, backward_flops)
        adapters_b = [p.shape for n, p in model.named_parameters() if "lora_B" in n]  # (out_features, r) each
    plain_losses, plain_grads, plain_flops = out["none"]
    assert plain_grads
    for checkpointing in ("selective", "full"):
        losses, grads, _ = out[checkpointing]
        assert losses == plain_losses and grads.keys() == plain_grads.keys()
        for name, g in grads.items():
            assert torch.equal(g, plain_grads[name]), (checkpointing, name)
    # The forward pass's products with the weights: 2 FLOPs per weight of the decoder layers per token.
    base = hf.model(len(tok))
    weights = sum(p.numel() for n, p in base.model.layers.named_parameters() if p.dim() == 2)
    tokens = sum(len(ids) for ids, _ in batch)
    forward = 2 * weights * tokens
    (wide, thin), (plain_wide, plain_thin) = out["selective"][2], plain_flops
    # selective recomputes no product with the weights, only (some of) the adapters' second, r-wide products ...
    assert wide == plain_wide
    assert 0 < thin - plain_thin <= sum(2 * tokens * r * n_out for n_out, r in adapters_b)
    # ... full recomputes the forward pass, its products with the weights included.
    assert out["full"][2][0] - plain_wide >= 0.9 * forward


@pytest.mark.parametrize(("attention", "tied"), [("sdpa", False), ("eager", False), ("sdpa", True)])
def test_auto_checkpointing_measures_activations_and_chooses(ft, hf, attention, tied):
    """gradient_checkpointing: auto measures what a part keeps and checkpoints only when it exceeds the budget.

    The measurement (on fake tensors: nothing allocated) equals a direct count of
    what a real pass saves: for torch's fused attention, which keeps O(L) per
    layer, and for eager attention, which keeps each layer's L x L weights, tied
    embeddings or not. Within the budget
    auto runs ``none``; above it ``selective``, whose gradients are the same bit
    for bit; the card-ready record says which and why.
    """
    import copy

    import torch

    from psysim.config import FinetuneConfig
    from psysim.finetune import activation_mib, batch_loss, choose_checkpointing, fused_adapters, lora_model

    tok = hf.tokenizer()
    base = copy.deepcopy(hf.model(len(tok)))  # (hf.model is cached: other tests get it unchanged)
    base.config._attn_implementation = attention
    if tied:  # the head is the embeddings' matrix (SmolLM2's): its transpose, saved for the backward pass, is a weight
        base.lm_head.weight = base.model.embed_tokens.weight
    model = lora_model(copy.deepcopy(base), FinetuneConfig(rank=4, alpha=8))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    model.train()
    n, pad = 300, tok.pad_token_id
    labels = [pad if i % 10 == 9 else -100 for i in range(n)]
    saved = {}

    def count(t):
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t), fused_adapters(model):
        batch_loss(model, [([pad] * n, labels)], pad, reduction="sum")
    direct = sum(saved.values()) / 2**20
    assert activation_mib(model, n, pad, 0.1) == direct
    assert not any(p.grad is not None for p in model.parameters())  # the probe leaves no gradient behind
    if attention == "eager":  # the attention weights' quadratic term is there
        assert activation_mib(model, 2 * n, pad, 0.1) > 2.2 * direct

    examples = [([5] * 200, [-100] * 190 + [5] * 10)] * 4
    unchecked = activation_mib(model, 800, pad, 0.05)  # (measured before any checkpointing is set)
    grads = {}
    for budget, mode in ((2048, "none"), (0, "selective")):
        torch.manual_seed(0)
        model = lora_model(copy.deepcopy(base), FinetuneConfig(rank=4, alpha=8, activation_budget_mib=budget))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05)
        chosen = choose_checkpointing(model, FinetuneConfig(rank=4, alpha=8, activation_budget_mib=budget), examples, pad)
        assert chosen["setting"] == "auto" and chosen["mode"] == mode
        assert chosen["part_tokens"] == 800  # four 200-token examples fit one part of at most 1024 tokens
        assert chosen["activation_mib_without_checkpointing"] == round(unchecked)
        model.train()
        assert model.get_base_model().model.layers[0].gradient_checkpointing == (mode != "none")
        with fused_adapters(model):
            batch_loss(model, examples[:1], pad, reduction="sum").backward()
        grads[mode] = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(grads["none"], grads["selective"], strict=True))
    fixed = FinetuneConfig(gradient_checkpointing="full")
    assert choose_checkpointing(None, fixed, examples, pad) == {"setting": "full", "mode": "full"}


def test_validate_says_what_finetune_will_train(ft, run_cli):
    """psysim validate shows the finetune: section in words (a file without one shows no such line)."""
    shown = run_cli("validate", "experiment.yaml").stdout
    assert (
        "  finetune     LoRA rank 8, alpha 16, dropout 0 on all-linear of tiny, trained on the no_persona prompts of 60% "
        "of the participants (validation 20%, test 20%)\n"
        "    training   2 epochs, batches of 4 in parts of at most 1024 tokens, learning rate 0.001, patience 1, "
        "max length 2048, gradient checkpointing auto (none while a part keeps at most 2048 MiB of activations, "
        "else selective)\n"
    ) in shown
    (ft / "plain.yaml").write_text((ft / "experiment.yaml").read_text("utf-8").split("finetune:")[0], encoding="utf-8")
    assert "finetune" not in run_cli("validate", "plain.yaml").stdout


def test_finetune_then_run_on_held_out_people(ft, run_cli):
    """Split, card, curve; psysim run with cohort.split reproduces the card's held-out NLLs exactly."""
    r = run_cli("finetune", "experiment.yaml", "--out", "out", "-q")
    assert r.exit_code == 0, r.stderr
    split = json.loads((ft / "out" / "split.json").read_text("utf-8"))
    assert [len(split[k]) for k in ("train", "validation", "test")] == [12, 4, 4]
    assert not set(split["train"]) & set(split["test"]) and not set(split["validation"]) & set(split["test"])
    card = json.loads((ft / "out" / "adapter" / "psysim_card.json").read_text("utf-8"))
    assert [c["epoch"] for c in card["curve"]] == [0, 1, 2]
    assert card["split"] == {"train": 12, "validation": 4, "test": 4}
    assert card["base_model"]["sha256"] and card["hyperparameters"]["rank"] == 8
    assert card["best_validation_nll"] == min(c["validation_nll"] for c in card["curve"])
    assert "| fine-tuned |" in (ft / "out" / "adapter" / "README.md").read_text("utf-8")
    assert f"held-out participants (4): NLL {card['test_nll']['base']:.4f} (base)" in r.stdout

    evaluation = (
        (ft / "experiment.yaml")
        .read_text("utf-8")
        .split("models:")[0]
        .replace("  sample: 20\n", "  sample: 20\n  split: {file: out/split.json, part: test}\n")
    )
    evaluation += (
        "models:\n  - name: base\n    source: tiny-model\n  - name: tuned\n    source: tiny-model\n    adapter: out/adapter\n"
    )
    evaluation += "conditions: [no_persona]\nevaluation:\n  fine_tuning: [{base: base, fine_tuned: tuned}]\n"
    (ft / "eval.yaml").write_text(evaluation, encoding="utf-8")
    shown = run_cli("validate", "eval.yaml").stdout
    assert "  split        the test part of out/split.json (written by psysim finetune): 4 participants\n" in shown
    r = run_cli("run", "eval.yaml", "--out", "evalrun", "-q")
    assert r.exit_code == 0, r.stderr
    trials = pd.read_parquet(ft / "evalrun" / "trials.parquet")
    assert sorted(set(trials["participant"])) == sorted(split["test"])
    nll = (-trials.groupby("model")["logprob"].mean()).to_dict()
    assert nll["base"] == pytest.approx(card["test_nll"]["base"], abs=1e-9)
    assert nll["tuned"] == pytest.approx(card["test_nll"]["fine_tuned"], abs=1e-9)
    # The report compares the two paired over the held-out participants.
    from psysim.report import build_report

    comps = build_report(ft / "evalrun").comparisons
    row = comps[
        (comps["comparison"] == "fine-tuning") & (comps["measure"] == "nll") & (comps["experiment"] == "all studies")
    ].iloc[0]
    per_person = -trials.groupby(["model", "participant"])["logprob"].mean()
    assert row["model"] == "tuned - base" and row["n"] == 4
    assert row["estimate"] == pytest.approx((per_person["tuned"] - per_person["base"]).mean(), abs=1e-12)


def test_no_library_line_reaches_the_user(ft):
    """The console script, as a user runs it: finetune, then run with the adapter, print nothing on stderr.

    In-process runners do not see these lines (the libraries' log handlers hold
    the stderr of import time), so the commands run in a child process.
    """
    import subprocess
    import sys

    evaluation = (ft / "experiment.yaml").read_text("utf-8").split("models:")[0]
    evaluation += "models:\n  - {name: tuned, source: tiny-model, adapter: out/adapter}\nconditions: [no_persona]\n"
    (ft / "eval.yaml").write_text(evaluation, encoding="utf-8")
    # From another folder: the model's source (a path relative to the experiment file) then names no folder here,
    # as a registry name would not, and peft would look for the base model's config on the Hub when saving.
    (ft / "elsewhere").mkdir()
    for args in (
        ["finetune", "../experiment.yaml", "--out", "../out"],
        ["run", "../eval.yaml", "--out", "../evalrun", "--limit", "2"],
    ):
        r = subprocess.run([sys.executable, "-m", "psysim", *args, "-q"], cwd=ft / "elsewhere", capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        # huggingface_hub's "Repo card metadata block was not found" and peft's "Could not find a config file" (both
        # from peft's save_pretrained), transformers' FutureWarning on is_gradient_checkpointing (peft applying an
        # adapter): none is the user's business.
        assert r.stderr == "", (args, r.stderr)


def test_same_seed_same_adapter_and_resume_after_interrupt(ft, run_cli, monkeypatch):
    """Two runs give byte-identical adapters; one interrupted mid-epoch resumes to the same adapter."""
    import psysim.finetune as finetune

    assert run_cli("finetune", "experiment.yaml", "--out", "a", "-q").exit_code == 0
    assert run_cli("finetune", "experiment.yaml", "--out", "b", "-q").exit_code == 0
    weights = "adapter/adapter_model.safetensors"
    assert digest(ft / "a" / weights) == digest(ft / "b" / weights)

    real = finetune.accumulate  # one call per training step (a step may compute several micro-batches)
    calls = []

    def at_once(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "accumulate", at_once)  # interrupted before any checkpoint: says so, not "resume"
    r = run_cli("finetune", "experiment.yaml", "--out", "e", "-q")
    assert r.exit_code == 130 and "no checkpoint was saved yet" in r.stderr and "resume" not in r.stderr
    assert not (ft / "e" / "checkpoint").exists()

    monkeypatch.setattr(finetune, "CHECKPOINT_STEPS", 1)

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # epoch 2, second step (3 steps per epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "accumulate", interrupted)
    r = run_cli("finetune", "experiment.yaml", "--out", "c", "-q")
    assert r.exit_code == 130 and "saved in c/checkpoint; run the same command again to resume" in r.stderr
    state = json.loads((ft / "c" / "state.json").read_text("utf-8"))
    assert (state["epoch"], state["step"]) == (2, 1)
    # While interrupted: the split is already there, the adapter's README says training is in progress, and the
    # adapter names its base model as the experiment does (not a folder under the user's home).
    assert json.loads((ft / "c" / "split.json").read_text("utf-8")) == json.loads((ft / "a" / "split.json").read_text("utf-8"))
    assert "training in progress" in (ft / "c" / "adapter" / "README.md").read_text("utf-8")
    assert json.loads((ft / "c" / "adapter" / "adapter_config.json").read_text("utf-8"))["base_model_name_or_path"] == (
        "tiny-model"
    )
    monkeypatch.setattr(finetune, "accumulate", real)
    assert run_cli("finetune", "experiment.yaml", "--out", "c", "-q").exit_code == 0
    assert digest(ft / "c" / weights) == digest(ft / "a" / weights)
    a = json.loads((ft / "a" / "adapter" / "psysim_card.json").read_text("utf-8"))
    c = json.loads((ft / "c" / "adapter" / "psysim_card.json").read_text("utf-8"))
    assert a["curve"] == c["curve"] and a["test_nll"] == c["test_nll"]
    # The card says the training was resumed, and where; the resume-only checkpoint is gone once complete.
    assert (a["resumed"], c["resumed"]) == (False, True)
    assert [(x["epoch"], x["step"]) for x in c["sessions"]] == [(1, 0), (2, 1)]
    assert "Trained in 2 sessions (interrupted and resumed: from epoch 1, step 0" in (
        ft / "c" / "adapter" / "README.md"
    ).read_text("utf-8")
    assert not (ft / "c" / "checkpoint").exists() and not (ft / "a" / "checkpoint").exists()
    assert run_cli("finetune", "experiment.yaml", "--out", "d", "-q", "--keep-checkpoint").exit_code == 0
    assert (ft / "d" / "checkpoint" / "training.pt").exists()  # kept on request


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("learning_rate: 0.001", "learning_rate: 0", "finetune.learning_rate: expected a number > 0, found an integer 0"),
        ("learning_rate: 0.001", "learning_rate: -0.1", "finetune.learning_rate: expected a number > 0, found a number -0.1"),
        (
            "{train: 0.6, validation: 0.2, test: 0.2}",
            "{train: 0.8, validation: 0.2, test: 0.0}",
            "error: the split leaves no test participants (20 participants in all)",
        ),
        (
            "{train: 0.6, validation: 0.2, test: 0.2}",
            "{train: 0.6, validation: 0.2, test: 0.1}",
            "finetune.split: expected fractions that add up to 1, found 0.9",
        ),
        (
            "batch_size: 4",
            "batch_size: 4\n  max_length: 16",
            "finetune.max_length: expected room for the persona, the instructions",
        ),
    ],
    ids=["lr-zero", "lr-negative", "no-test", "fractions", "max-length"],
)
def test_bad_settings_stop_before_training(ft, run_cli, old, new, message):
    text = (ft / "experiment.yaml").read_text("utf-8").replace(old, new)
    (ft / "experiment.yaml").write_text(text, encoding="utf-8")
    r = run_cli("finetune", "experiment.yaml", "--out", "out", "-q")
    assert r.exit_code == 2
    assert message in error_of(r.stderr)
    assert not (ft / "out" / "checkpoint").exists()
