"""psysim models check (the parity gate) and the vllm backend's checks that need no vLLM.

The gate itself is tested with two hf backends standing in for "engine" and
"reference": the same model and tokenizer agree to the last bit; a different
tokenizer is refused, naming the first token they read differently. The real
vLLM engine is tested in tests/test_vllm.py.
"""

from __future__ import annotations

import pytest
from test_run import DRY

import psysim
from psysim.backends.parity import check_parity
from psysim.backends.vllm import option_requests
from psysim.errors import PsysimError

VLLM_MODEL = "  - name: tiny\n    backend: vllm\n    formats: [raw, chat]\n    chat_template: chatml\n"


def write(toy, models: str):
    head, rest = DRY.split("models:\n")
    return toy.write_yaml(head + "models:\n" + models + rest[rest.index("conditions:") :])


def experiment(toy, models: str):
    return psysim.load_experiment(write(toy, models))


def backend(hf, family: str):
    from psysim.backends.hf import HFBackend

    tok = hf.family(family)
    return HFBackend(hf.model(len(tok)), tok, name="tiny", identity={}, batch_tokens=10**6)


def test_same_engine_and_reference_agree_exactly(toy, hf):
    exp = experiment(toy, VLLM_MODEL)
    same = backend(hf, "bytelevel")
    [report] = check_parity(exp, backends={("tiny", "vllm"): same, ("tiny", "hf"): same})
    assert report.ok and report.worst == 0.0
    assert len(report.rows) == 3 * 3 * 2 * 2  # participants × conditions × formats × responses (the toy's two each)
    assert report.lines()[0].startswith("tiny: vllm vs hf (float32) on 36 responses: largest difference 0.00e+00 nats")


def test_an_engine_that_tokenizes_differently_is_refused_naming_the_first_token(toy, hf):
    exp = experiment(toy, VLLM_MODEL)
    engine, reference = backend(hf, "merging"), backend(hf, "bytelevel")
    with pytest.raises(PsysimError, match=r"the engine's tokenizer reads participant \S+ \(no_persona, raw\) differently") as e:
        check_parity(exp, backends={("tiny", "vllm"): engine, ("tiny", "hf"): reference})
    assert "first difference at token" in str(e.value) and "instead of" in str(e.value)


def test_nothing_to_check_says_what_was_found(toy, run_cli):
    r = run_cli("models", "check", str(toy.yaml))
    assert r.exit_code == 2
    assert "nothing to check: expected a model whose backend is not hf" in r.stderr and "tiny (hf)" in r.stderr


def test_option_requests_are_the_trie_of_the_options():
    # 'Z>>' and 'V>>' as [7, 9] and [8, 9]; a longer option sharing a first token with another.
    assert option_requests([[7, 9], [8, 9]]) == [((), [7, 8]), ((7,), [9]), ((8,), [9])]
    assert option_requests([[5], [5, 6, 9]]) == [((), [5]), ((5,), [6]), ((5, 6), [9])]


def test_vllm_missing_is_a_located_error_before_anything_loads(toy, run_cli, monkeypatch):
    import psysim.backends.vllm as vllm_backend

    monkeypatch.setattr(vllm_backend, "available", lambda: False)
    experiment(toy, VLLM_MODEL)
    for args in (("validate", str(toy.yaml)), ("run", str(toy.yaml), "-q", "--out", "out")):
        r = run_cli(*args)
        assert r.exit_code == 2, args
        assert "models[0].backend: backend: vllm, but vLLM is not installed here: pip install 'psysim[vllm]'" in r.stderr
        assert "make vllm-env" in r.stderr
    assert not (toy.folder / "out" / "manifest.json").exists()
    r = run_cli("run", str(toy.yaml), "-q", "--dry-run", "--out", "dry")  # the mock needs no engine
    assert r.exit_code == 0, r.stderr


def test_vllm_settings_on_another_backend_are_a_located_error(toy, run_cli):
    write(toy, "  - name: tiny\n    vllm: {kv_cache_gb: 2}\n")
    r = run_cli("validate", str(toy.yaml))
    assert r.exit_code == 2
    assert "models[0].vllm: vllm: settings apply to backend: vllm only, found backend: hf" in r.stderr
    write(toy, "  - name: tiny\n    backend: vllm\n    vllm: {kv_cache: 2}\n")
    r = run_cli("validate", str(toy.yaml))
    assert r.exit_code == 2 and "kv_cache" in r.stderr
