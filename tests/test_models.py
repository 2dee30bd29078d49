"""`models list|pull`: presence read offline from a real Hugging Face cache layout; pull refuses before downloading.

The network call itself cannot run in the test suite: the downloader is injected and
builds the cache layout that huggingface_hub's snapshot_download would.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from hotfolder import weights
from hotfolder.backends import choose
from hotfolder.commands import models
from hotfolder.cli import main
from hotfolder.backends import memory
from hotfolder.config import BUILTIN_MODELS, Config, ModelInfo
from hotfolder.errors import HotfolderError, UsageError

COMMIT = "a" * 40


def _put(cache: Path, repo: str, files: dict[str, bytes], *, commit: str = COMMIT, link: bool = True) -> Path:
    """Lay files out as the HF cache does: blobs by hash, a snapshot of links, refs/main."""
    folder = weights.repo_folder(cache=cache, repo=repo)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    for rel, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snap / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if link:
            os.symlink(os.path.relpath(blob, target.parent), target)
    return snap


DIFFUSERS_FILES = {
    "model_index.json": json.dumps({"_class_name": "LTX2Pipeline", "transformer": ["diffusers", "X"],
                                    "vae": ["diffusers", "Y"], "scheduler": ["diffusers", "Z"]}).encode(),
    "transformer/config.json": b"{}",
    "transformer/diffusion_pytorch_model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                        "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}).encode(),
    "transformer/diffusion_pytorch_model-00001-of-00002.safetensors": b"1" * 1000,
    "transformer/diffusion_pytorch_model-00002-of-00002.safetensors": b"2" * 1000,
    "vae/diffusion_pytorch_model.safetensors": b"3" * 500,
    "scheduler/scheduler_config.json": b"{}",
}


GB = models.GB
UPSAMPLER = {"latent_upsampler/config.json": b"{}", "latent_upsampler/diffusion_pytorch_model.safetensors": b"u" * 100}
LORA_FILE = "ltx-2-19b-distilled-lora-384.safetensors"  # Lightricks/LTX-2's, which production's stage 2 loads


def _config(tmp_path: Path, **models_: ModelInfo) -> Config:
    return Config(root=tmp_path / "root", models={**BUILTIN_MODELS, **models_})


def test_presence_is_read_from_the_cache_layout(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    model = BUILTIN_MODELS["ltx-2"]
    assert models.model_state(model, "diffusers", cache).status == "missing"

    _put(cache, "Lightricks/LTX-2", DIFFUSERS_FILES)
    st = models.model_state(model, "diffusers", cache)
    assert st.present and st.status == "present" and st.bytes >= 2500


@pytest.mark.parametrize("damage, says", [
    ("shard", "1 of 2 shards missing"),
    ("component", "components not downloaded: vae"),
    ("incomplete", "interrupted"),
    ("broken-link", "not downloaded"),
])
def test_an_interrupted_download_is_partial_not_present(tmp_path: Path, damage: str, says: str) -> None:
    cache = tmp_path / "hub"
    files = dict(DIFFUSERS_FILES)
    if damage == "shard":
        del files["transformer/diffusion_pytorch_model-00002-of-00002.safetensors"]
    if damage == "component":
        del files["vae/diffusion_pytorch_model.safetensors"]
    snap = _put(cache, "Lightricks/LTX-2", files)
    folder = weights.repo_folder(cache=cache, repo="Lightricks/LTX-2")
    if damage == "incomplete":
        (folder / "blobs" / "deadbeef.incomplete").write_bytes(b"x" * 10)
    if damage == "broken-link":
        os.unlink(snap / "vae" / "diffusion_pytorch_model.safetensors")
        os.symlink("../../../blobs/missing", snap / "vae" / "diffusion_pytorch_model.safetensors")
    st = models.model_state(BUILTIN_MODELS["ltx-2"], "diffusers", cache)
    assert not st.present and st.status == "partial"
    assert says in st.problem


def test_mlx_needs_the_model_and_its_text_encoder(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    model = BUILTIN_MODELS["ltx-2.3-q4"]
    assert [r for r, _ in models.repos_for(model, "mlx")] == ["dgrauet/ltx-2.3-mlx-distilled-q4",
                                                             "mlx-community/gemma-3-12b-it-bf16"]
    _put(cache, "dgrauet/ltx-2.3-mlx-distilled-q4", {"config.json": b"{}", "model.safetensors": b"m" * 100})
    assert models.model_state(model, "mlx", cache).status == "partial"
    _put(cache, "mlx-community/gemma-3-12b-it-bf16", {"config.json": b"{}", "model.safetensors": b"g" * 100})
    assert models.model_state(model, "mlx", cache).present


def _columns(out: str) -> dict[str, dict[str, str]]:
    """`models list`'s table, each row cut at its header's column starts."""
    header, *lines = out.split("\n\n")[0].splitlines()
    names = [c.strip() for c in header.split("  ") if c.strip()]
    starts = [header.index(n) for n in names] + [10_000]
    return {line.split()[0]: {n.lower(): line[starts[i]:starts[i + 1]].strip() for i, n in enumerate(names)}
            for line in lines if line.strip()}


def test_list_prints_the_table(tmp_path: Path, capsys) -> None:
    cache = tmp_path / "hub"
    _put(cache, "Lightricks/LTX-Video", {"model_index.json": b'{"vae": ["diffusers", "V"]}',
                                         "vae/x.safetensors": b"v" * 100})
    models.list_models(_config(tmp_path), cache=cache, backend="diffusers", machine=memory.Machine(ram=64 * GB))
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["NAME", "BACKEND", "REPOS"]
    row = {line.split()[0]: line for line in rows if line.strip()}
    assert "present (video only)" in row["ltx-video"] and "Lightricks/LTX-Video" in row["ltx-video"]
    assert row["ltx-2"].rstrip().endswith("missing") and "42.0 GB" in row["ltx-2"]
    assert "built in" in row["tiny"]


def test_list_shows_each_models_memory_on_this_machine_and_whether_it_fits(tmp_path: Path, capsys) -> None:
    """The memory columns: weights (with their dtype), text encoder, decoding, and fits, for the device this machine
    would use; the numbers are memory.estimate's (proven parameter counts times the dtype's bytes)."""
    small = memory.Machine(ram=32 * GB)
    models.list_models(_config(tmp_path), cache=tmp_path / "hub", backend="diffusers", machine=small)
    out = capsys.readouterr().out
    table = _columns(out)
    device = memory.device_for("diffusers", None)
    est = memory.estimate(BUILTIN_MODELS["ltx-2"], "diffusers", device)
    ltx2 = table["ltx-2"]
    assert (ltx2["device"], ltx2["weights"], ltx2["text enc"], ltx2["decoding"], ltx2["fits"]) == (
        device, f"{est.weights / GB:.1f} GB {est.dtype}", f"{est.text_encoder / GB:.1f} GB",
        f"{est.decoding / GB:.1f} GB", "no")
    assert table["ltx-2.5"]["weights"].startswith("~")  # Gemma 4 and the connectors: assumed, and said so
    assert table["tiny"]["fits"] == "yes" and table["tiny"]["weights"] == "-"
    assert "32.0 GB of RAM" in out and ("float32" if device != "cuda" else "bfloat16") in ltx2["weights"]

    # An H200: everything on the GPU, in bfloat16.
    h200 = memory.Machine(ram=256 * GB, gpu_total=141 * GB, gpu_free=140 * GB, gpu_name="NVIDIA H200")
    models.list_models(_config(tmp_path), cache=tmp_path / "hub", backend="diffusers", machine=h200)
    table = _columns(capsys.readouterr().out)
    assert table["ltx-2"]["device"] == "cuda" and table["ltx-2"]["weights"].endswith("bfloat16")
    assert table["ltx-2"]["fits"] == "yes"
    # A 48 GB GPU: runs with model CPU offload.
    l40 = memory.Machine(ram=128 * GB, gpu_total=48 * GB, gpu_free=47 * GB, gpu_name="L40S")
    models.list_models(_config(tmp_path), cache=tmp_path / "hub", backend="diffusers", machine=l40)
    assert _columns(capsys.readouterr().out)["ltx-2"]["fits"] == "offload"


def test_list_says_what_production_still_needs_when_the_pipeline_is_here(tmp_path: Path, capsys) -> None:
    cache = tmp_path / "hub"
    _put(cache, "Lightricks/LTX-2", DIFFUSERS_FILES)
    big = memory.Machine(ram=512 * GB)
    models.list_models(_config(tmp_path), cache=cache, backend="diffusers", machine=big)
    status = _columns(capsys.readouterr().out)["ltx-2"]["status"]
    assert status == "present; production needs the latent upsampler and stage-2 LoRA", status

    _put(cache, "Lightricks/LTX-2", {**DIFFUSERS_FILES, **UPSAMPLER, LORA_FILE: b"l" * 10})
    models.list_models(_config(tmp_path), cache=cache, backend="diffusers", machine=big)
    assert _columns(capsys.readouterr().out)["ltx-2"]["status"] == "present"


# -- pull ---------------------------------------------------------------------------------------
class FakeHub:
    """snapshot_download's contract, offline: fetch what the patterns allow into the cache, return the snapshot."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.calls: list[dict] = []

    def __call__(self, *, repo_id, revision, cache_dir, allow_patterns=None, ignore_patterns=None) -> str:
        from fnmatch import fnmatch

        self.calls.append({"repo_id": repo_id, "allow_patterns": allow_patterns, "ignore_patterns": ignore_patterns})
        files = {k: v for k, v in self.repos[repo_id].items()
                 if (allow_patterns is None or any(fnmatch(k, p) for p in allow_patterns))
                 and not any(fnmatch(k, p) for p in ignore_patterns or [])}
        return str(_put(Path(cache_dir), repo_id, files))


def test_pull_refuses_up_front_when_the_disk_lacks_room(tmp_path: Path) -> None:
    hub = FakeHub({})
    with pytest.raises(UsageError) as e:
        models.pull(_config(tmp_path), "ltx-2", cache=tmp_path / "hub", downloader=hub,
                    disk_free=lambda _: 30 * models.GB, env={}, say=lambda _: None)
    message = str(e.value)
    assert "not enough disk space for model ltx-2" in message
    assert "42.0 GB" in message and "30.0 GB free" in message and str(tmp_path / "hub") in message
    assert "HF_HOME" in message
    assert hub.calls == []  # refused before any download started


def test_pull_counts_what_an_earlier_pull_left_when_checking_the_disk(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    model = ModelInfo(name="mid", family="ltx2", diffusers_repo="me/mid", size_gb=10.0)
    config = _config(tmp_path, mid=model)

    class Resuming(FakeHub):
        def __call__(self, **kw) -> str:
            for blob in (weights.repo_folder(cache=cache, repo="me/mid") / "blobs").glob("*.incomplete"):
                blob.unlink()  # snapshot_download finishes what was interrupted
            return super().__call__(**kw)

    hub = Resuming({"me/mid": DIFFUSERS_FILES})
    five_gb = lambda _: 5 * models.GB  # noqa: E731
    with pytest.raises(UsageError, match="it needs about 10.0 GB"):  # nothing here yet: 10 GB > 5 GB free
        models.pull(config, "mid", cache=cache, downloader=hub, disk_free=five_gb, env={}, say=lambda _: None)

    # An interrupted pull left 8 GB (a sparse .incomplete blob): 2 GB more (+2 to spare) fits in 5 GB.
    _put(cache, "me/mid", {"model_index.json": DIFFUSERS_FILES["model_index.json"]})
    blob = weights.repo_folder(cache=cache, repo="me/mid") / "blobs" / "0123.incomplete"
    with open(blob, "wb") as f:
        f.truncate(8 * models.GB)
    lines: list[str] = []
    assert models.pull(config, "mid", cache=cache, downloader=hub, disk_free=five_gb, env={}, say=lines.append) == 0
    assert "resuming: 8.0 GB already here" in lines[0]
    assert models.model_state(model, "diffusers", cache).present


def test_pull_downloads_only_what_the_pipeline_loads_and_reports_ready(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    repo_files = {**DIFFUSERS_FILES, "ltx-2-19b-dev.safetensors": b"x" * 5000, "transformer/weights.bin": b"b",
                  "README.md": b"# LTX-2", **UPSAMPLER, LORA_FILE: b"l" * 300}
    hub = FakeHub({"Lightricks/LTX-2": repo_files})
    said: list[str] = []
    assert models.pull(_config(tmp_path), "ltx-2", backend="diffusers", cache=cache, downloader=hub,
                       disk_free=lambda _: 100 * models.GB, env={}, say=said.append) == 0

    pipeline, lora = hub.calls[1], hub.calls[2]
    # The pipeline's components, plus the x2 latent upsampler that production mode loads from its own folder ...
    assert pipeline["allow_patterns"] == ["model_index.json", "transformer/*", "vae/*", "scheduler/*",
                                          "latent_upsampler/*"]
    assert "*.bin" in pipeline["ignore_patterns"]
    # ... and the distilled LoRA that production's stage 2 loads on these non-distilled weights: that file only.
    assert (lora["repo_id"], lora["allow_patterns"]) == ("Lightricks/LTX-2", [LORA_FILE])
    snap = weights.repo_folder(cache=cache, repo="Lightricks/LTX-2") / "snapshots" / COMMIT
    assert not (snap / "ltx-2-19b-dev.safetensors").exists()  # the other checkpoints in the repo stay remote
    assert not (snap / "transformer" / "weights.bin").exists()
    assert (snap / "latent_upsampler" / "diffusion_pytorch_model.safetensors").is_file()
    assert (snap / LORA_FILE).read_bytes() == b"l" * 300
    assert models.model_state(BUILTIN_MODELS["ltx-2"], "diffusers", cache).present
    assert [e.present for e in choose.production_extras(BUILTIN_MODELS["ltx-2"], "diffusers", cache)] == [True, True]
    assert any(f"- Lightricks/LTX-2/{LORA_FILE}" in line for line in said), said
    assert "Latent upsampler: present. Stage-2 LoRA: present." in said[-1], said


def test_pull_says_first_when_the_model_will_not_fit_this_machine(tmp_path: Path) -> None:
    hub = FakeHub({"Lightricks/LTX-Video": {"model_index.json": b'{"vae": ["diffusers", "V"]}',
                                            "vae/x.safetensors": b"v" * 100}})
    said: list[str] = []
    small = memory.Machine(ram=8 * GB)
    assert models.pull(_config(tmp_path), "ltx-video", backend="diffusers", cache=tmp_path / "hub", downloader=hub,
                       disk_free=lambda _: 100 * GB, env={}, say=said.append, machine=small) == 0
    assert said[1].startswith("note: ltx-video needs about") and "8.0 GB of memory" in said[1], said
    assert "will refuse it" in said[1] and len(hub.calls) == 2  # said, then pulled all the same
    said.clear()
    big = memory.Machine(ram=512 * GB)
    models.pull(_config(tmp_path), "ltx-video", backend="diffusers", cache=tmp_path / "hub2", downloader=hub,
                disk_free=lambda _: 100 * GB, env={}, say=said.append, machine=big)
    assert not any(line.startswith("note:") for line in said), said


def test_pull_of_a_distilled_model_fetches_no_lora_and_says_when_the_repo_has_no_upsampler(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    distilled = BUILTIN_MODELS["ltx-2-distilled"]
    hub = FakeHub({distilled.diffusers_repo: DIFFUSERS_FILES})  # no latent_upsampler/ folder in this repository
    said: list[str] = []
    assert models.pull(_config(tmp_path), "ltx-2-distilled", backend="diffusers", cache=cache, downloader=hub,
                       disk_free=lambda _: 100 * models.GB, env={}, say=said.append) == 0
    assert [c["repo_id"] for c in hub.calls] == [distilled.diffusers_repo] * 2  # no LoRA: distilled weights
    assert f"Latent upsampler: not in {distilled.diffusers_repo}." in said[-2]
    assert 'mode = "production" cannot run with ltx-2-distilled' in said[-1]


def test_a_lora_the_download_did_not_bring_fails_the_pull_saying_to_resume(tmp_path: Path) -> None:
    hub = FakeHub({"Lightricks/LTX-2": {**DIFFUSERS_FILES, **UPSAMPLER}})  # the LoRA file never arrives
    with pytest.raises(HotfolderError, match=f"stage-2 LoRA Lightricks/LTX-2/{LORA_FILE} is still missing"):
        models.pull(_config(tmp_path), "ltx-2", backend="diffusers", cache=tmp_path / "hub", downloader=hub,
                    disk_free=lambda _: 100 * models.GB, env={}, say=lambda _: None)


def test_pull_says_how_to_resume_when_the_download_stops(tmp_path: Path) -> None:
    def broken(**kw):
        raise ConnectionError("Connection reset by peer")

    with pytest.raises(HotfolderError, match="run the same command again to resume"):
        models.pull(_config(tmp_path), "ltx-video", cache=tmp_path / "hub", downloader=broken,
                    disk_free=lambda _: 100 * models.GB, env={}, say=lambda _: None)


def test_pull_refuses_when_offline_mode_is_set(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE"):
        models.pull(_config(tmp_path), "ltx-video", cache=tmp_path / "hub", downloader=FakeHub({}),
                    disk_free=lambda _: 100 * models.GB, env={"HF_HUB_OFFLINE": "1"}, say=lambda _: None)


def test_the_cli_pull_refuses_unknown_names_and_has_nothing_to_do_for_tiny(tmp_path: Path, capsys) -> None:
    assert main(["models", "pull", "ltx2", "--root", str(tmp_path)]) == 2
    assert "did you mean 'ltx-2'" in capsys.readouterr().err.lower()
    assert main(["models", "pull", "tiny", "--root", str(tmp_path)]) == 0
    assert "nothing to download" in capsys.readouterr().out
    assert main(["models", "pull", "--root", str(tmp_path)]) == 2


def test_the_cli_pull_refuses_on_a_full_disk_before_any_network(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "free_bytes", lambda _: 1 * models.GB)
    monkeypatch.setattr(models, "_snapshot_download", lambda **kw: pytest.fail("must not download"))
    assert main(["models", "pull", "ltx-2", "--root", str(tmp_path)]) == 2
    assert "not enough disk space" in capsys.readouterr().err


def test_on_apple_silicon_pull_wants_the_mlx_weights_even_before_they_exist(tmp_path: Path, monkeypatch) -> None:
    from hotfolder.backends import choose

    config = _config(tmp_path)
    monkeypatch.setattr(choose, "is_apple_silicon", lambda: True)
    monkeypatch.setattr(choose, "mlx_status", lambda: (True, "mlx on Metal"))
    assert models.backend_for(BUILTIN_MODELS["ltx-2"], config) == "mlx"
    assert models.backend_for(BUILTIN_MODELS["ltx-video"], config) == "diffusers"  # no MLX weights exist
    assert models.backend_for(BUILTIN_MODELS["ltx-2"], config, "diffusers") == "diffusers"
    monkeypatch.setattr(choose, "mlx_status", lambda: (False, "not installed"))
    assert models.backend_for(BUILTIN_MODELS["ltx-2"], config) == "diffusers"


# -- what submit and agent install ask: can the daemon serve this model here? -----------------------------------
def test_weights_problem_says_what_to_pull_and_how_big_or_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    config = _config(tmp_path)
    ltx2 = BUILTIN_MODELS["ltx-2"]
    missing = choose.weights_problem(ltx2, config, backend="diffusers", cache=cache)
    assert "hotfolder models pull ltx-2 (about 42 GB)" in missing and str(cache) in missing

    files = dict(DIFFUSERS_FILES)
    del files["vae/diffusion_pytorch_model.safetensors"]
    _put(cache, "Lightricks/LTX-2", files)
    partial = choose.weights_problem(ltx2, config, backend="diffusers", cache=cache)
    assert "incomplete" in partial and "components not downloaded: vae" in partial and "it resumes" in partial

    _put(cache, "Lightricks/LTX-2", DIFFUSERS_FILES)
    assert choose.weights_problem(ltx2, config, backend="diffusers", cache=cache) is None
    assert choose.weights_problem(BUILTIN_MODELS["tiny"], config, cache=cache) is None  # built in code
    folder = ModelInfo(name=str(tmp_path / "w"), family="ltx2", local_path=str(tmp_path / "w"))
    assert "does not exist" in choose.weights_problem(folder, config, cache=cache)
    (tmp_path / "w").mkdir()
    assert choose.weights_problem(folder, config, cache=cache) is None
    # A backend whose weights are not Hugging Face repositories (a plugin) keeps them its own way.
    assert choose.weights_problem(ltx2, config, backend="elsewhere", cache=tmp_path / "empty") is None
