"""Benchmark: counting tokens to fit long transcripts into a context (``psysim validate``, ``scoring.context: drop_oldest``).

Measured in one run, on the same transcripts and the same tokenizer (the
default model's): the token counts of every dezfouli2019 participant under
three conditions, each fitted with ``drop_oldest_to_fit`` as validate does,

* ``naive``  — every count tokenises every window and piece again through
               the tokenizer's ``__call__`` (as psysim did before this benchmark,
               apart from the faster search for a window's start, which both use);
* ``psysim`` — the context-aware reader as shipped: windows and pieces are
               remembered (``encoding.MEMO``) and a fast tokenizer's backend is
               called directly.

Both give the same counts (checked). Prints the times and their ratio.

    .venv/bin/python bench/bench_context.py [--participants 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=20)
    args = parser.parse_args()

    import psysim
    from psysim.backends import encoding
    from psysim.registry import resolve
    from psysim.render.context import drop_oldest_to_fit

    exp = psysim.load_experiment(REPO / "experiments" / "psych201.yaml")
    folder = resolve("smollm2-135m-instruct", REPO).path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = [p for p in exp.participants if exp.study(p) == "dezfouli2019"][: args.participants]
    conditions = [c.name for c in exp.config.conditions]
    limit = 8192

    def fit(reader) -> list[int]:
        def count(text, spans, add_special_tokens=True) -> int:
            return len(reader.encode(text, spans, add_special_tokens).ids)

        out = []
        for pid in ids:
            for cond in conditions:
                _, dropped, _ = drop_oldest_to_fit(exp, pid, cond, "raw", None, limit=limit, count=count)
                out.append(dropped)
        return out

    class Naive(encoding.TokenReader):
        """No memory and transformers' __call__ for every text: what each count cost before."""

        def _ids(self, texts):
            return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    results = {}
    for name, reader in (("naive", Naive(tok)), ("psysim", encoding.TokenReader(tok))):
        started = time.perf_counter()
        counts = fit(reader)
        results[name] = {"seconds": round(time.perf_counter() - started, 2), "dropped": counts}
    assert results["naive"]["dropped"] == results["psysim"]["dropped"], "the two methods disagree"
    ratio = results["naive"]["seconds"] / results["psysim"]["seconds"]
    summary = {
        "participants": len(ids),
        "conditions": conditions,
        "responses": sum(len(exp.transcript(p).responses) for p in ids),
        "naive_s": results["naive"]["seconds"],
        "psysim_s": results["psysim"]["seconds"],
        "speedup": round(ratio, 2),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
