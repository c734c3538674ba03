"""What the user sees while long work runs: progress bars, and the libraries' own chatter kept out of the way."""

from __future__ import annotations

__all__ = ["progress_bar", "quiet_libraries"]


def quiet_libraries(progress: bool) -> None:
    """The libraries' own warnings are not the user's business here; transformers' progress bars follow ``progress``.

    transformers and huggingface_hub each log through their own logger: peft's
    ``save_pretrained`` parses the model-card template it writes and
    huggingface_hub then warns that the card has no metadata block (psysim
    writes its own card over it).
    """
    try:
        from huggingface_hub.utils import logging as hub_logging
        from transformers.utils import logging as tlog
    except ImportError:
        return
    tlog.set_verbosity_error()
    hub_logging.set_verbosity_error()
    import warnings

    # peft asks transformers a deprecated question while applying an adapter; the answer is right, the warning noise.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    if progress:
        tlog.enable_progress_bar()
    else:
        tlog.disable_progress_bar()


class Bar:
    """A tqdm bar counting transcripts (or participants), moved to absolute counts."""

    def __init__(self, total: int, desc: str, initial: int = 0):
        from tqdm.auto import tqdm

        # tqdm shows elapsed time, rate and ETA; `initial` counts batches saved by an earlier session.
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="transcript", dynamic_ncols=True)

    def update_to(self, n: int) -> None:
        """Show ``n`` done (never fewer than shown: a participant's progress may come before its batch is saved)."""
        if n > self._bar.n:
            self._bar.update(n - self._bar.n)

    def offset(self, base: int):
        """A callback taking a count within one batch (what backends report) and showing ``base`` plus it."""
        return lambda n: self.update_to(base + n)

    def close(self) -> None:
        self._bar.close()


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0) -> Bar | None:
    """A tqdm bar counting transcripts (elapsed, rate, ETA), or None when progress is off or tqdm is missing."""
    if not enabled:
        return None
    try:
        return Bar(total, desc, initial)
    except ImportError:
        return None
