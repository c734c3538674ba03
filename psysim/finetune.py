"""``psysim finetune``: a LoRA adapter trained on people's trial-by-trial behaviour, measured on held-out people.

Centaur showed that fine-tuning a model on human trial-by-trial data, with the
loss only on the human responses, makes it a better predictor of people it
never saw. This module does that on the user's own experiment:

1. **Split by participant** (seeded): train / validation / test fractions from
   ``finetune.split``; written to ``split.json`` so that ``psysim run`` with
   ``cohort.split: {file: …/split.json, part: test}`` evaluates exactly the
   held-out people.
2. **Data**: each training participant's prompt under ``finetune.condition``
   (raw format; persona conditions train with the persona), tokenized as
   scoring tokenizes it (:func:`psysim.backends.forward.encode`); labels are ``-100``
   everywhere except the tokens of human responses, so the loss is the NLL of
   the responses only. Transcripts longer than ``max_length`` lose their
   oldest trials (persona and instructions kept).
3. **Training**: peft LoRA (rank, alpha, dropout, target modules — all linear
   layers by default —, rsLoRA) with AdamW; per epoch the training
   participants are shuffled with ``numpy.random.default_rng([seed, epoch])``;
   loss = mean NLL per response token of the batch; gradients clipped at 1.
   A step (:func:`accumulate`) runs in parts of at most ``batch_tokens``
   tokens, keeps activations as ``gradient_checkpointing`` says
   (:func:`lora_model`; ``auto``: all of them when a part's, measured, fit in
   ``activation_budget_mib``, :func:`choose_checkpointing`) and runs each
   adapted layer as one autograd node
   (:func:`fused_adapters`).
   After every epoch the validation NLL (Psych-201's: mean over responses of
   the response's summed NLL) decides early stopping (``patience``).
4. **Resumable and deterministic**: a checkpoint (adapter, optimizer, torch
   RNG, curve) after every epoch and every ``CHECKPOINT_STEPS`` steps; the
   same command resumes from the last one, and on CPU the same seed gives the
   same adapter.
5. **The adapter** (the best epoch's) is saved in ``adapter/`` with a card
   (``psysim_card.json`` and ``README.md``): base model and its hash, data and
   split, hyperparameters, the training curve, and the test NLL of the base
   model and of the fine-tuned one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from .config import FinetuneConfig
from .errors import ConfigError, Problem, PsysimError
from .experiment import Experiment
from .files import display_path
from .store import write_atomic

__all__ = [
    "CHECKPOINT_STEPS",
    "FinetuneResult",
    "activation_mib",
    "checkpoint_saved",
    "choose_checkpointing",
    "finetune_experiment",
    "finetune_folder",
    "make_split",
    "training_example",
]

#: Optimisation steps between mid-epoch checkpoints.
CHECKPOINT_STEPS = 25


class FinetuneResult:
    """Where the adapter, split and card were written, and the card itself."""

    def __init__(self, out: Path, card: dict[str, Any]):
        self.out = out
        self.adapter = out / "adapter"
        self.split = out / "split.json"
        self.card = card


def make_split(exp: Experiment, participants: list[str]) -> dict[str, list[str]]:
    """Seeded split of participants into train / validation / test (cohort order kept within each part)."""
    import numpy as np

    cfg = exp.config
    train_f, val_f, _ = cfg.finetune.split
    n = len(participants)
    order = np.random.default_rng([cfg.seed, 7]).permutation(n)
    n_train = round(train_f * n)
    n_val = round(val_f * n)
    part = {}
    for pos, i in enumerate(order):
        part[participants[i]] = "train" if pos < n_train else "validation" if pos < n_train + n_val else "test"
    split = {k: [p for p in participants if part[p] == k] for k in ("train", "validation", "test")}
    empty = [k for k, ids in split.items() if not ids]
    if empty:
        raise ConfigError(
            f"the split leaves no {' and no '.join(empty)} participants ({n} participants in all)",
            [
                cfg.problem(
                    ("finetune", "split") if "split" in cfg.raw.get("finetune", {}) else ("finetune",),
                    f"expected fractions that give every part at least one of the {n} participants, found "
                    f"train {len(split['train'])}, validation {len(split['validation'])}, test {len(split['test'])}",
                )
            ],
        )
    return split


def training_example(tokenizer, text: str, spans, add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: labels are the response tokens' ids and -100 everywhere else (loss on responses only)."""
    from .backends.encoding import TokenReader

    enc = TokenReader(tokenizer).encode(text, spans, add_special_tokens)
    labels = [-100] * len(enc.ids)
    for start, end in enc.ranges:
        labels[start:end] = enc.ids[start:end]
    return enc.ids, labels


def lora_config(ft: FinetuneConfig):
    """peft's ``LoraConfig`` for ``finetune:``'s settings (the one place they are translated)."""
    from peft import LoraConfig

    return LoraConfig(
        r=ft.rank,
        lora_alpha=ft.alpha,
        lora_dropout=ft.dropout,
        target_modules=ft.target_modules if isinstance(ft.target_modules, str) else list(ft.target_modules),
        use_rslora=ft.rslora,
        task_type="CAUSAL_LM",
    )


def lora_model(base_model, ft: FinetuneConfig):
    """The base model with a fresh LoRA adapter (:func:`lora_config`), activations kept as ``ft.gradient_checkpointing`` says.

    ``auto`` builds the model without checkpointing, for
    :func:`choose_checkpointing` to measure and decide. The modes:

    * ``none``: autograd keeps every activation a layer's backward pass needs
      (fastest; the most memory: 1.15 MiB a token for the finetune quickstart's
      model).
    * ``selective``: a layer keeps only the outputs of its products with the
      model's weights and of its attention kernel, and recomputes the rest in the
      backward pass (norms, rotary embedding, SiLU, products of activations,
      residual sums, the adapters' rank-r products): a finetune quickstart step
      adds 1.5 GB where ``none`` adds 1.9 GB, for about 1.1-1.4x the step time
      of ``none`` (what is recomputed is cheap; :func:`_selective_policy`;
      BENCHMARKS.md, runs 5-7).
    * ``full``: a layer keeps only its input and recomputes its whole forward pass
      (the least memory, for about 1.2-1.6x the step time of ``none``).

    All three give the same gradients, bit for bit (tests/test_finetune.py).
    """
    from peft import get_peft_model

    # Checkpointing is set after peft wraps the model, so peft adds no input-gradient hook (set_checkpointing removes
    # the one transformers adds).
    model = get_peft_model(base_model, lora_config(ft))
    if ft.gradient_checkpointing != "auto":
        set_checkpointing(model, ft.gradient_checkpointing, ft.rank)
    return model


def set_checkpointing(model, mode: str, rank: int) -> None:
    """Make the LoRA model's layers keep activations as ``mode`` (``none``, ``selective`` or ``full``) says."""
    if mode == "none":  # one of config.CHECKPOINTING: FinetuneConfig checks it
        return
    base_model = model.get_base_model()
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if mode == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _selective_policy(rank))
    # (Newer transformers call it activation checkpointing; older ones only know gradient checkpointing.)
    if hasattr(base_model, "activation_checkpointing_enable"):
        base_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    _no_input_grads(base_model)


def activation_mib(model, tokens: int, pad_id: int, response_share: float = 0.1) -> float:
    """MiB of activations one part of ``tokens`` tokens keeps for its backward pass, as ``model`` runs now.

    Measured on the model itself, not modelled: a training forward pass
    (:func:`batch_loss` under :func:`fused_adapters`, as :func:`accumulate` runs
    it; a response token every ``1 / response_share`` tokens) on torch's fake
    tensors, which carry shapes and dtypes but no data, so that nothing is
    computed or allocated (a real pass would leave its freed pages in the heap,
    and the first training step would peak ~300 MiB higher); the bytes of every
    distinct storage autograd saves that is not a weight are summed.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.multiprocessing.reductions import StorageWeakRef

    class Loss(torch.nn.Module):  # the part's loss as a module, for functional_call to run on fake weights
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return _response_nll(self.model, *tensors, "sum")

    every = max(1, round(1 / response_share)) if response_share > 0 else tokens + 1
    labels = [pad_id if i % every == every - 1 else -100 for i in range(tokens)]
    loss = Loss()
    fake = FakeTensorMode()
    # The weights as fake tensors of known identity, so that views of them (a tied head's transpose) are not counted.
    state = {name: fake.from_tensor(t) for name, t in [*loss.named_parameters(), *loss.named_buffers()]}
    weights = {StorageWeakRef(t.untyped_storage()) for t in state.values()}
    device = next(model.parameters()).device
    inputs = [fake.from_tensor(t.to(device)) for t in _batch_tensors([([pad_id] * tokens, labels)], pad_id)]
    saved: dict[Any, int] = {}

    def keep(t):
        storage = StorageWeakRef(t.untyped_storage())
        if storage not in weights:
            saved[storage] = t.untyped_storage().nbytes()
        return t

    was_training = model.training
    model.train()  # dropout keeps its masks only in training
    try:
        with fake, torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), fused_adapters(model):
            torch.func.functional_call(loss, state, tuple(inputs))
    finally:
        model.train(was_training)
    return sum(saved.values()) / 2**20


def longest_part(examples: list[tuple[list[int], list[int]]], ft: FinetuneConfig) -> int:
    """The most padded tokens a part of :func:`micro_batches` can hold for these examples and settings."""
    longest = max((len(ids) for ids, _ in examples), default=0)
    return max(longest, min(ft.batch_tokens, ft.batch_size * longest))


def choose_checkpointing(model, ft: FinetuneConfig, examples, pad_id: int) -> dict[str, Any]:
    """Settle ``auto`` checkpointing on the model ``lora_model(..., ft)`` built; what was chosen and why.

    ``auto``: ``none`` (every activation kept: the fastest step) when one part
    of the longest size these examples allow (:func:`longest_part`) keeps at most
    ``ft.activation_budget_mib`` MiB of activations without checkpointing
    (:func:`activation_mib`), ``selective`` otherwise. Any other setting is
    taken as written. The choice changes time and memory, never the adapter
    (the modes' gradients are the same bit for bit).
    """
    if ft.gradient_checkpointing != "auto":
        return {"setting": ft.gradient_checkpointing, "mode": ft.gradient_checkpointing}
    responses = [sum(label != -100 for label in labels) / max(len(labels), 1) for _, labels in examples]
    part = longest_part(examples, ft)
    need = activation_mib(model, part, pad_id, max(responses, default=0.1))
    mode = "none" if need <= ft.activation_budget_mib else "selective"
    set_checkpointing(model, mode, ft.rank)
    return {
        "setting": "auto",
        "mode": mode,
        "part_tokens": part,
        "activation_mib_without_checkpointing": round(need),
        "activation_budget_mib": ft.activation_budget_mib,
    }


def _no_input_grads(base_model) -> None:
    """Remove the hook that makes the embeddings' output require a gradient.

    transformers adds it when checkpointing is enabled (peft too, when it wraps a
    model whose checkpointing is on, which :func:`lora_model` avoids by setting
    checkpointing after wrapping). Non-reentrant checkpointing does not need it,
    and with it the first layer computes input gradients that nobody uses.
    """
    if hasattr(base_model, "disable_input_require_grads"):
        base_model.disable_input_require_grads()


def _selective_policy(rank: int):
    """What a layer keeps under ``selective`` checkpointing (torch's selective activation checkpointing policy).

    Kept: the outputs of matrix products whose inner dimension is larger than the
    adapter's rank (the products with the model's weights, the most expensive work
    of a layer) and of the fused attention kernels. Recomputed: everything else,
    including the adapters' second product (inner dimension ``rank``: cheap), whose
    output would otherwise double what the weights' products keep.
    """
    import torch
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    attention = {
        getattr(aten, name).default
        for name in (
            "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_efficient_attention",
            "_scaled_dot_product_cudnn_attention",
        )
        if hasattr(aten, name)
    }

    def policy(ctx, op, *args, **kwargs):
        if op is aten.mm.default or op is aten.addmm.default:
            left = args[1] if op is aten.addmm.default else args[0]  # addmm(bias, input, weight)
            return CheckpointPolicy.MUST_SAVE if left.shape[-1] > rank else CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if op in attention else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the operating system (glibc's ``malloc_trim``; nothing elsewhere).

    torch frees a step's activations, but glibc keeps the pages for later
    allocations: after its training steps the process would stay at their peak
    (2.7 GB instead of 1 GB for the finetune quickstart's model after a step
    without checkpointing) through the validation pass, which needs far less,
    memory other programs could use. The training loop calls it once per
    epoch, before validation, not after every step: the next step would only
    fault the same pages back in (~270,000 page faults a step for the finetune
    quickstart, BENCHMARKS.md run 7). The peak itself is one step's need either
    way (run 5).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def batch_loss(model, batch: list[tuple[list[int], list[int]]], pad_id: int, *, reduction: str = "mean"):
    """Mean (or, with ``reduction="sum"``, total) NLL of the response tokens of a right-padded batch.

    Padding and non-responses are ignored.

    Two things keep a training step small (bench/bench_finetune.py measures both
    against the plain ``model(...).logits`` loss):

    * Only the hidden states that predict a response token go through the
      vocabulary projection (:func:`psysim.backends.forward.project`): a few dozen rows
      per batch instead of batch × length × vocabulary logits and their gradients.
    * No attention mask: padding sits after every real token, and causal attention
      never reads what comes later, so the real positions are computed exactly as
      with a mask, while torch can use its memory-efficient causal attention kernel
      instead of materialising every layer's attention matrix for the backward pass.
    """
    device = next(model.parameters()).device
    return _response_nll(model, *(t.to(device) for t in _batch_tensors(batch, pad_id)), reduction)


def _batch_tensors(batch: list[tuple[list[int], list[int]]], pad_id: int):
    """``(input_ids, rows, cols, targets)`` of a right-padded batch: response token ``targets[i]`` is predicted at
    position ``(rows[i], cols[i])``."""
    import torch

    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    for b, (ids, lab) in enumerate(batch):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(lab)] = torch.tensor(lab)
    # Token t is predicted at position t - 1.
    targets = labels[:, 1:]
    rows, cols = (targets != -100).nonzero(as_tuple=True)
    return input_ids, rows, cols, targets[rows, cols]


def _response_nll(model, input_ids, rows, cols, targets, reduction: str):
    """:func:`batch_loss` on :func:`_batch_tensors`' tensors (apart, for :func:`activation_mib` to run it on fake ones)."""
    from .backends.forward import project

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's LoRA layers live inside it
    hidden = base.get_decoder()(input_ids=input_ids).last_hidden_state
    logp = project(base, hidden[rows, cols], targets)
    return -(logp.sum() if reduction == "sum" else logp.mean())


def micro_batches(batch: list[tuple[list[int], list[int]]], tokens: int) -> list[list[tuple[list[int], list[int]]]]:
    """The batch cut, in order, into parts of at most ``tokens`` padded tokens (one example at least, whatever its length)."""
    parts: list[list[tuple[list[int], list[int]]]] = []
    for example in batch:
        if parts and (len(parts[-1]) + 1) * max(len(e[0]) for e in [*parts[-1], example]) <= tokens:
            parts[-1].append(example)
        else:
            parts.append([example])
    return parts


def accumulate(model, batch: list[tuple[list[int], list[int]]], pad_id: int, tokens: int) -> float:
    """Backpropagate the batch's mean NLL per response token in micro-batches of at most ``tokens`` padded tokens.

    Each part contributes its summed NLL divided by the whole batch's number of
    response tokens, so the accumulated gradient is the full batch's (up to float
    rounding) while memory follows the part, not the batch. Returns the batch's loss.
    """
    total = sum(sum(label != -100 for label in labels[1:]) for _, labels in batch)
    value = 0.0
    with fused_adapters(model):
        for part in micro_batches(batch, tokens):
            loss = batch_loss(model, part, pad_id, reduction="sum") / max(total, 1)
            loss.backward()
            value += loss.item()
    return value


@contextlib.contextmanager
def fused_adapters(model):
    """Within the block, each LoRA layer runs as one autograd node (peft's forward outside it).

    peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as separate
    autograd nodes: forward, three passes over the layer's whole output (the
    rank-r product, the scaling, the sum); backward, the adapter's input
    gradient as a second ``[tokens × width]`` tensor added to the base layer's,
    and the rank-r products in the layouts autograd picks, which CPU kernels run
    3-4x slower than their transposes. For a plain linear layer with its base
    frozen and no adapter dropout (psysim's defaults), the block runs
    :func:`_adapter_linear` instead: ``addmm(x Wᵀ + b, x Aᵀ, Bᵀ, alpha=scaling)``
    forward, and a backward pass that adds the adapter's input gradient into the
    base layer's in place and computes the rank-r products in their fast
    layouts. Other layers add the adapter in one ``addmm`` on peft's modules.

    The arithmetic is the same as peft's up to float rounding (the products are
    summed in another order; tests/test_finetune.py); the step keeps less and
    runs faster: BENCHMARKS.md, runs 6 and 7.

    Only layers in peft's plain configuration are fused (one active adapter, not
    merged, no LoRA variant such as DoRA, input already in the adapter's dtype);
    any other layer keeps peft's forward. Evaluation (validation and held-out
    NLLs) runs outside the block, on peft's own forward.
    """
    from peft.tuners.lora import Linear as LoraLinear

    fused = []
    for module in model.modules():
        if isinstance(module, LoraLinear) and not module.merged and not module.disable_adapters:
            names = [n for n in module.active_adapters if n in module.lora_A]
            if len(names) == 1 and names[0] not in getattr(module, "lora_variant", {}):
                module.forward = functools.partial(_fused_forward, module, names[0])
                fused.append(module)
    try:
        yield
    finally:
        for module in fused:
            del module.forward  # back to the class's (peft's) forward


def _fused_forward(module, name: str, x, *args, **kwargs):
    import torch

    lora_a, lora_b = module.lora_A[name], module.lora_B[name]
    base = module.base_layer
    weight = getattr(base, "weight", None)
    if args or kwargs or weight is None or not x.dtype == lora_a.weight.dtype == lora_b.weight.dtype == weight.dtype:
        # peft's own forward handles extra arguments and mixed dtypes (it casts)
        return type(module).forward(module, x, *args, **kwargs)
    scaling = module.scaling[name]
    flat = x.reshape(-1, x.shape[-1])
    if (
        type(base) is torch.nn.Linear
        and not weight.requires_grad
        and (base.bias is None or not base.bias.requires_grad)
        and isinstance(module.lora_dropout[name], torch.nn.Identity)
    ):
        out = _adapter_linear().apply(flat, weight, base.bias, lora_a.weight, lora_b.weight, scaling)
    else:  # a dropout mask, a trainable or non-Linear base layer (GPT-2's Conv1D): autograd's own backward
        result = base(x)
        low = lora_a(module.lora_dropout[name](x)).reshape(flat.shape[0], -1)
        out = torch.addmm(result.reshape(flat.shape[0], -1), low, lora_b.weight.t(), alpha=scaling)
    return out.view(*x.shape[:-1], out.shape[-1])


@functools.cache
def _adapter_linear():
    """The autograd Function of a frozen linear layer plus its LoRA adapter, ``x Wᵀ + b + scaling · (x Aᵀ) Bᵀ``.

    Forward: the base product, the rank-r product ``x Aᵀ`` (kept for the
    backward pass: [tokens × r]) and one ``addmm``; under ``selective``
    checkpointing its products with more than r terms are kept and the
    ``addmm`` recomputed, as for peft's modules (:func:`_selective_policy`).
    Backward: ``g Wᵀ`` for the input with the adapter's share added in place,
    and the three rank-r products computed as the transposes of ``g B``,
    ``gᵀ (x Aᵀ)`` and ``(g B)ᵀ x`` where that is the layout the CPU kernels run
    fastest (measured: 3-4x faster for the first two).
    """
    import torch

    class AdapterLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, a, b, scaling):
            low = x @ a.t()
            ctx.save_for_backward(x, low, weight, a, b)
            ctx.scaling = scaling
            return torch.addmm(torch.nn.functional.linear(x, weight, bias), low, b.t(), alpha=scaling)

        @staticmethod
        def backward(ctx, grad):
            x, low, weight, a, b = ctx.saved_tensors
            scaling = ctx.scaling
            through_b = (b.t() @ grad.t()).t()  # grad @ b
            grad_b = (low.t() @ grad).t() * scaling
            grad_a = (through_b.t() @ x) * scaling
            grad_x = (grad @ weight).addmm_(through_b, a, alpha=scaling) if ctx.needs_input_grad[0] else None
            return grad_x, None, None, grad_a, grad_b, None

    return AdapterLinear


def _nll(backend, prompts) -> float:
    """Psych-201's NLL: the mean over responses of each response's summed NLL, scored as psysim run scores."""
    from .backends import ScoreRequest

    requests = [ScoreRequest(key=p.participant, text=p.text, spans=p.spans) for p in prompts]
    scores = [r.logprob for result in backend.score(requests) for r in result.responses]
    return -math.fsum(scores) / len(scores) if scores else math.nan


def _fitting_prompt(exp, backend, pid, condition, limit):
    """The participant's raw prompt, oldest trials dropped until it fits ``limit`` tokens; error if one trial does not."""
    from .render.context import drop_oldest_to_fit

    prompt = exp.render(pid, condition)
    tokens = backend.count_tokens(prompt.text, prompt.spans, True)
    if tokens > limit:
        prompt, _, tokens = drop_oldest_to_fit(exp, pid, condition, "raw", None, limit, backend.count_tokens)
    if tokens > limit:
        raise ConfigError(
            f"finetune.max_length ({limit} tokens) is too short for participant {pid}",
            [
                exp.config.problem(
                    ("finetune", "max_length"),
                    f"expected room for the persona, the instructions and at least one trial, which take "
                    f"{tokens} tokens; found {limit}",
                )
            ],
        )
    return prompt


def finetune_folder(exp: Experiment, out: str | os.PathLike | None = None) -> Path:
    """Where :func:`finetune_experiment` writes: ``out``, or the experiment's output with ``-finetuned`` appended."""
    return Path(out) if out is not None else exp.config.output.with_name(exp.config.output.name + "-finetuned")


def checkpoint_saved(folder: str | os.PathLike) -> bool:
    """Whether a training in ``folder`` has saved a checkpoint that the same command would resume from."""
    return (Path(folder) / "checkpoint" / "training.pt").exists()


def finetune_experiment(
    exp: Experiment,
    *,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    restart: bool = False,
    backend=None,
    keep_checkpoint: bool = False,
) -> FinetuneResult:
    """Train the adapter (module docstring); resumes from the last checkpoint in ``out`` unless ``restart``."""
    import numpy as np
    import torch

    from .backends import get_backend
    from .progress import quiet_libraries
    from .record import inputs, now, result_config, versions
    from .run import check_writable

    cfg = exp.config
    ft = cfg.finetune
    folder = finetune_folder(exp, out)
    check_writable(folder)
    model_cfg = exp.model(ft.model)
    condition = exp.condition(ft.condition)  # the first condition unless finetune.condition names one
    if model_cfg.backend != "hf":
        raise ConfigError(
            "fine-tuning needs a real model", [cfg.problem(("models", model_cfg.index, "backend"), "expected hf, found mock")]
        )
    participants = [p for p in exp.participants if p in exp.transcripts]
    split = make_split(exp, participants)
    fingerprint = {"config": result_config(exp), "inputs": inputs(exp), "psysim": versions()["psysim"]}
    state_path = folder / "state.json"
    if restart:
        import shutil

        for name in ("checkpoint", "adapter"):
            shutil.rmtree(folder / name, ignore_errors=True)
        state_path.unlink(missing_ok=True)
    state = json.loads(state_path.read_text("utf-8")) if state_path.exists() else None
    if state is not None and state.get("fingerprint") != fingerprint:
        raise PsysimError(
            f"the folder {display_path(folder)} holds fine-tuning of a different configuration",
            [Problem("choose another folder with --out, or rerun with --restart to discard it")],
        )
    if state is not None and state.get("status") == "complete":
        return FinetuneResult(folder, json.loads((folder / "adapter" / "psysim_card.json").read_text("utf-8")))

    quiet_libraries(progress)
    backend = backend or get_backend(model_cfg, cfg.folder)
    if getattr(backend, "model", None) is None:
        raise ConfigError("fine-tuning needs a transformers model (the hf backend)")
    # The split first: who is held out is known (and usable by `psysim run`) before any step is taken.
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "split.json", lambda tmp: tmp.write_text(json.dumps(split, indent=2), encoding="utf-8"))
    tok = backend.tokenizer
    prompts = {
        part: [_fitting_prompt(exp, backend, pid, condition.name, ft.max_length) for pid in ids] for part, ids in split.items()
    }
    examples = [training_example(tok, p.text, p.spans) for p in prompts["train"]]

    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    torch.manual_seed(cfg.seed)
    base_test_nll = state["base_test_nll"] if state else _nll(backend, prompts["test"])
    base_val_nll = state["curve"][0]["validation_nll"] if state else _nll(backend, prompts["validation"])
    model = lora_model(backend.model, ft)
    memory = choose_checkpointing(model, ft, examples, backend.pad_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=ft.learning_rate)
    curve = state["curve"] if state else [{"epoch": 0, "train_loss": None, "validation_nll": base_val_nll}]
    epoch, step = (state["epoch"], state["step"]) if state else (1, 0)
    best, bad_epochs = (state["best"], state["bad_epochs"]) if state else (base_val_nll, 0)
    if state and (folder / "checkpoint").exists():
        ck = torch.load(folder / "checkpoint" / "training.pt", weights_only=False)
        set_peft_model_state_dict(model, ck["adapter"])
        optimizer.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
    backend.model = model  # scoring (validation) goes through the adapter from now on
    started = time.time()
    # One record per session: a card of a resumed training says so, with where each session started.
    sessions = [*(state.get("sessions", []) if state else []), {"started": now(started), "epoch": epoch, "step": step}]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        per_epoch = math.ceil(len(examples) / ft.batch_size)
        bar = tqdm(total=ft.epochs * per_epoch, initial=(epoch - 1) * per_epoch + step, desc="finetune", unit="step")

    def save_state(status: str, losses) -> None:
        folder.joinpath("checkpoint").mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                # The adapter's weights only (the embeddings never change; _save_adapter says why this is explicit).
                "adapter": get_peft_model_state_dict(model, save_embedding_layers=False),
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
            },
            folder / "checkpoint" / "training.pt.tmp",
        )
        os.replace(folder / "checkpoint" / "training.pt.tmp", folder / "checkpoint" / "training.pt")
        data = {
            "fingerprint": fingerprint,
            "status": status,
            "epoch": epoch,
            "step": step,
            "epoch_losses": losses,
            "curve": curve,
            "best": best,
            "bad_epochs": bad_epochs,
            "base_test_nll": base_test_nll,
            "sessions": [*sessions[:-1], {**sessions[-1], "seconds": round(time.time() - started, 1)}],
        }
        write_atomic(state_path, lambda tmp: tmp.write_text(json.dumps(data, indent=2), encoding="utf-8"))

    losses = state.get("epoch_losses", []) if state else []
    while epoch <= ft.epochs and bad_epochs < ft.patience:
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(examples))
        batches = [order[i : i + ft.batch_size] for i in range(0, len(order), ft.batch_size)]
        model.train()
        while step < len(batches):
            optimizer.zero_grad()
            loss = accumulate(model, [examples[i] for i in batches[step]], backend.pad_id, ft.batch_tokens)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            losses.append(loss)
            step += 1
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if step % CHECKPOINT_STEPS == 0 and step < len(batches):
                save_state("running", losses)
        model.eval()
        release_freed_memory()  # the steps' activations: validation needs a fraction of them
        val = _nll(backend, prompts["validation"])
        curve.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, "validation_nll": val})
        if val < best:
            best, bad_epochs = val, 0
            _save_adapter(model, folder / "adapter", model_cfg.source, f"epoch {epoch}, validation NLL {val:.4f}")
        else:
            bad_epochs += 1
        epoch, step, losses = epoch + 1, 0, []
        save_state("running", losses)
    if bar:
        bar.close()
    if not (folder / "adapter").exists():  # no epoch beat the base model: keep the last, and say so in the card
        _save_adapter(model, folder / "adapter", model_cfg.source, "the last epoch (none beat the base model)")
    # Test NLL with the best adapter, exactly as psysim run will compute it.
    from peft.utils import load_peft_weights

    set_peft_model_state_dict(model, load_peft_weights(str(folder / "adapter")))
    model.eval()
    tuned_test_nll = _nll(backend, prompts["test"])
    card = {
        "psysim_adapter": 1,
        "base_model": {"name": model_cfg.name, **backend.identity()},
        "experiment": cfg.name,
        "config_path": display_path(cfg.path),
        "config_sha256": cfg.sha256,
        "inputs": fingerprint["inputs"],
        "condition": condition.name,
        "split": {k: len(v) for k, v in split.items()},
        "split_file": "split.json",
        "hyperparameters": {
            "rank": ft.rank,
            "alpha": ft.alpha,
            "dropout": ft.dropout,
            "target_modules": ft.target_modules,
            "rslora": ft.rslora,
            "learning_rate": ft.learning_rate,
            "epochs": ft.epochs,
            "batch_size": ft.batch_size,
            "max_length": ft.max_length,
            "patience": ft.patience,
            "seed": cfg.seed,
        },
        # How activations were kept in the last session: time and memory, not the adapter, depend on it.
        "gradient_checkpointing": memory,
        "curve": curve,
        "best_validation_nll": best,
        "test_nll": {"base": base_test_nll, "fine_tuned": tuned_test_nll, "participants": len(split["test"])},
        "versions": versions(),
        "finished": now(time.time()),
        "seconds_last_session": round(time.time() - started, 1),
        "resumed": len(sessions) > 1,
        "sessions": [*sessions[:-1], {**sessions[-1], "seconds": round(time.time() - started, 1)}],
    }
    adapter = folder / "adapter"
    write_atomic(
        adapter / "psysim_card.json", lambda tmp: tmp.write_text(json.dumps(card, indent=2, default=str), encoding="utf-8")
    )
    write_atomic(adapter / "README.md", lambda tmp: tmp.write_text(_card_text(card), encoding="utf-8"))
    save_state("complete", [])
    if not keep_checkpoint:
        # Optimizer state and RNG exist to resume; a finished training needs neither (state.json says it is complete).
        import shutil

        shutil.rmtree(folder / "checkpoint", ignore_errors=True)
    return FinetuneResult(folder, card)


def _save_adapter(model, adapter: Path, base: str, which: str) -> None:
    """Save the adapter with psysim's words: the base model as the experiment names it, a README saying what it is.

    peft would record the base model's absolute local path (a folder under the
    user's home) and write an empty model-card template; the card proper is
    written when training completes.
    """
    for config in model.peft_config.values():
        config.base_model_name_or_path = base
    # psysim never changes the vocabulary, so the base model's embeddings are never part of the adapter; peft's
    # default ("auto") would look for the base model's config under ``base`` (a registry name is no folder) and then
    # on the Hub, warning when it cannot.
    model.save_pretrained(adapter, save_embedding_layers=False)
    note = (
        f"# LoRA adapter (training in progress)\n\nBase model: `{base}`. Saved at {which}. The model card "
        "(psysim_card.json and this README) is written when `psysim finetune` completes.\n"
    )
    write_atomic(adapter / "README.md", lambda tmp: tmp.write_text(note, encoding="utf-8"))


def _card_text(card: dict[str, Any]) -> str:
    hp = card["hyperparameters"]
    rows = "\n".join(
        "| {} | {} | {:.4f} |".format(
            c["epoch"], "" if c["train_loss"] is None else f"{c['train_loss']:.4f}", c["validation_nll"]
        )
        for c in card["curve"]
    )
    test = card["test_nll"]
    sessions = card.get("sessions", [])
    resumed = (
        f"- Trained in {len(sessions)} sessions (interrupted and resumed: "
        + "; ".join(f"from epoch {s['epoch']}, step {s['step']}, {s.get('seconds', 0):.0f} s" for s in sessions)
        + "); the same seed gives the same adapter either way\n"
        if len(sessions) > 1
        else ""
    )
    return f"""# LoRA adapter for {card["base_model"]["name"]} (psysim finetune)

Trained by psysim on the human responses of experiment `{card["experiment"]}` ({card["config_path"]},
sha256 {card["config_sha256"]}), condition `{card["condition"]}`, loss on the response tokens only.

- Base model: {card["base_model"].get("source", card["base_model"]["name"])}, sha256 {card["base_model"].get("sha256")}
- Split by participant (`{card["split_file"]}` in the run folder): train {card["split"]["train"]},
  validation {card["split"]["validation"]}, test {card["split"]["test"]}
- LoRA: rank {hp["rank"]}, alpha {hp["alpha"]}, dropout {hp["dropout"]}, target modules {hp["target_modules"]},
  rsLoRA {hp["rslora"]}; AdamW, learning rate {hp["learning_rate"]}, batch size {hp["batch_size"]},
  at most {hp["epochs"]} epochs (early stopping, patience {hp["patience"]}), max length {hp["max_length"]}, seed {hp["seed"]}
{resumed}
## Training curve (validation NLL: mean over responses of each response's NLL, nats)

| epoch | training loss (per response token) | validation NLL |
|---|---|---|
{rows}

## Held-out participants ({test["participants"]})

| model | test NLL |
|---|---|
| base | {test["base"]:.4f} |
| fine-tuned | {test["fine_tuned"]:.4f} |
"""
