"""Memory, said before it bites: each model's resident memory per backend, device and dtype, and the daemon
refusing, before loading, a model this machine cannot hold (with the numbers), instead of being killed for it.

The parameter counts behind every number are proven in tests/test_meta_params.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import Root, drop, wait_until
from hotfolder.backends import memory
from hotfolder.backends.memory import GB, Machine
from hotfolder.config import BUILTIN_MODELS, Config
from hotfolder.daemon.provider import Provider
from hotfolder.errors import retryable

LTX2 = BUILTIN_MODELS["ltx-2"]


def test_the_bytes_are_the_proven_parameters_times_the_devices_dtype() -> None:
    counts = memory.PARAMS["ltx-2"]
    weights = sum(counts[p] for p in memory.WEIGHT_PARTS)
    cuda = memory.estimate(LTX2, "diffusers", "cuda")
    assert (cuda.dtype, cuda.weights, cuda.text_encoder) == ("bfloat16", 2 * weights, 2 * counts["text_encoder"])
    for device in ("mps", "cpu"):  # float32, as pick_dtype: twice the memory, never a black video
        est = memory.estimate(LTX2, "diffusers", device)
        assert (est.dtype, est.weights, est.text_encoder) == ("float32", 4 * weights, 4 * counts["text_encoder"])
        assert est.decoding == memory.decoding_bytes("ltx-2", 4) > cuda.decoding == memory.decoding_bytes("ltx-2", 2)
    mlx = memory.estimate(LTX2, "mlx", "gpu")
    assert mlx.dtype == "bfloat16" and mlx.total == cuda.total
    # The MLX notes: the unified LTX-2 is ~42 GB and Gemma 3 12B bf16 ~24 GB; the q4 LTX-2.3 ~19 GB.
    assert 40 * GB < mlx.weights < 46 * GB and 24 * GB < mlx.text_encoder < 25 * GB
    q4 = memory.estimate(BUILTIN_MODELS["ltx-2.3-q4"], "mlx", "gpu")
    assert q4.dtype == "q4" and 18 * GB < q4.weights < 21 * GB
    assert "weights 19.8 GB q4 + text encoder 24.4 GB" in q4.parts()


def test_tiny_models_always_fit_and_take_no_estimate() -> None:
    for model in BUILTIN_MODELS.values():
        if model.tiny:
            assert memory.estimate(model, "diffusers", "cpu") is None
            assert memory.fit(None, Machine(ram=1 * GB)).fits


@pytest.mark.parametrize("gpu_free, ram, fits, offload", [
    (141 * GB, 64 * GB, True, False),   # an H200: the whole pipeline on the GPU
    (48 * GB, 128 * GB, True, True),    # 48 GB: model CPU offload, the weights in RAM
    (48 * GB, 32 * GB, False, True),    # offload needs the RAM to hold the weights
    (24 * GB, 128 * GB, False, True),   # the transformer alone (38 GB) cannot be on the GPU at once
])
def test_on_cuda_offload_is_chosen_from_free_gpu_memory(gpu_free: int, ram: int, fits: bool, offload: bool) -> None:
    est = memory.estimate(LTX2, "diffusers", "cuda")
    verdict = memory.fit(est, Machine(ram=ram, gpu_total=gpu_free, gpu_free=gpu_free, gpu_name="test"))
    assert (verdict.fits, verdict.offload) == (fits, offload), verdict.why
    assert memory.should_offload(est, gpu_free) == offload


class _Loaded:
    def __init__(self, log: list[str], name: str):
        self.log, self.name, self.device = log, name, "cpu"

    def load(self) -> None:
        self.log.append(f"load {self.name}")

    def close(self) -> None:
        self.log.append(f"close {self.name}")


@pytest.fixture(autouse=True)
def _weights_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ltx-2's weights in a Hugging Face cache laid out as huggingface_hub does (the check runs when they are here:
    missing weights fail first, in milliseconds, with the pull command)."""
    from test_models import DIFFUSERS_FILES, _put

    from hotfolder import weights

    cache = tmp_path / "hub"
    _put(cache, "Lightricks/LTX-2", DIFFUSERS_FILES)
    monkeypatch.setattr(weights, "hub_cache", lambda: cache)


def _provider(tmp_path: Path, ram: int, log: list[str], **settings: object) -> Provider:
    return Provider(Config(root=tmp_path, **settings), lambda backend, model, config: _Loaded(log, model.name),
                    machine=lambda backend: Machine(ram=ram))


def test_the_provider_refuses_a_model_too_big_before_building_it_with_the_numbers(tmp_path: Path) -> None:
    log: list[str] = []
    provider = _provider(tmp_path, 16 * GB, log)
    spec = dataclasses.make_dataclass("Spec", [("backend", str)])("diffusers")
    with pytest.raises(memory.MemoryTooSmall) as e:
        provider.get(spec, LTX2)
    assert log == []  # nothing was built, let alone loaded
    assert not retryable(e.value) and e.value.kind == "memory"
    message = str(e.value)
    est = memory.estimate(LTX2, "diffusers", memory.device_for("diffusers", None))
    assert f"model ltx-2 needs about {est.total / GB:.1f} GB" in message
    assert f"weights {est.weights / GB:.1f} GB {est.dtype}" in message and "text encoder" in message
    assert "this machine has 16.0 GB of memory" in message and "not loaded" in message
    assert "hotfolder models list" in e.value.hint and "No model in the table fits" in e.value.hint

    # With more memory the advice names the models that fit, smallest first; the tiny model always loads.
    roomy = _provider(tmp_path, 40 * GB, log)
    with pytest.raises(memory.MemoryTooSmall) as e:
        roomy.get(spec, LTX2)
    assert "Use a model that fits this machine" in e.value.hint and "ltx-video" in e.value.hint
    backend, _ = roomy.get(spec, BUILTIN_MODELS["tiny"])
    assert log == ["load tiny"] and backend.name == "tiny"

    # The refusal says how to load it anyway; with memory_check = false the same model is built and loaded.
    assert "memory_check = false" in e.value.hint
    trusting = _provider(tmp_path, 16 * GB, log, memory_check=False)
    backend, _ = trusting.get(spec, LTX2)
    assert log == ["load tiny", "load ltx-2"] and backend.name == "ltx-2"


def test_a_backend_the_table_does_not_know_is_not_checked(tmp_path: Path) -> None:
    log: list[str] = []
    spec = dataclasses.make_dataclass("Spec", [("backend", str)])("fake")
    _provider(tmp_path, 1 * GB, log).get(spec, LTX2)
    assert log == ["load ltx-2"]


def test_missing_weights_are_left_to_the_load_which_names_the_pull_at_once(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from hotfolder import weights

    monkeypatch.setattr(weights, "hub_cache", lambda: tmp_path / "empty")
    log: list[str] = []
    spec = dataclasses.make_dataclass("Spec", [("backend", str)])("diffusers")
    _provider(tmp_path, 1 * GB, log).get(spec, LTX2)  # the real backend's load() raises WeightsMissing here
    assert log == ["load ltx-2"]


def test_the_real_daemon_fails_the_job_with_the_numbers_instead_of_being_killed(root: Root) -> None:
    """No probe replaced: the daemon measures this machine. ltx-2 in float32 on a CPU needs about 145 GB, so on
    a machine with less the job fails at once, permanently, with the numbers, before any loading; on a bigger
    one the check passes and the load fails instead (the snapshot here holds no real weights)."""
    gpu = memory.cuda_memory()  # what the daemon asks (torch) before loading a Diffusers model
    here = memory.machine(gpu)
    est = memory.estimate(LTX2, "diffusers", memory.device_for("diffusers", gpu))
    refused = not memory.fit(est, here).fits

    from test_models import DIFFUSERS_FILES, _put

    from hotfolder import weights

    # The weights "are here": a snapshot laid out as huggingface_hub does (not loadable weights: if the check
    # lets the model through, loading fails, which is the other branch).
    _put(root.home / "hf" / "hub", "Lightricks/LTX-2", DIFFUSERS_FILES)
    assert weights.repo_state("Lightricks/LTX-2", None, root.home / "hf" / "hub").complete
    daemon = root.start(fake=False)
    try:
        drop(root, "big.toml", 'prompt = "a lighthouse at dusk"\nmodel = "ltx-2"\nbackend = "diffusers"\n'
                               'width = 64\nheight = 64\nduration = 0.5\n')
        [failed] = wait_until(root.failures, timeout=120, what="the job to fail")
    finally:
        daemon.terminate()
        out = daemon.communicate(timeout=30)[0]
    error = (failed / "error.txt").read_text()
    if refused:
        assert "model ltx-2 needs about" in error and "would be killed for memory" in error, error
        assert f"{here.ram / GB:.1f} GB" in error and "hotfolder models list" in error, error
        assert "died" not in error and "retry" not in error.lower(), error  # permanent: one attempt, no crash
    else:
        assert "would be killed for memory" not in error, error
    assert "Traceback" not in out, out


# -- bench/gpu.py: the GPU figures' script, run here on the tiny model on the CPU ---------------------------------
BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu.py"


def test_the_gpu_benchmark_runs_its_code_on_the_tiny_model_on_the_cpu(tmp_path: Path) -> None:
    """`--dry`: the same code as on a GPU (the pipeline called directly, then a real daemon process given a job
    file), on the tiny model at 64x64, 9 frames, 2 steps; each path reports seconds per step, decode and peak."""
    import json
    import subprocess
    import sys

    out = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, str(BENCH), "--dry", "--json", str(out)], capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads(out.read_text())
    assert [(r["model"], r["path"]) for r in rows] == [("tiny", "direct"), ("tiny", "daemon")]
    for r in rows:
        assert r["step_s"] > 0 and r["decode_s"] > 0 and r["peak_gb"] > 0, r
    assert rows[1]["size"] == "64x64" and rows[1]["load_s"] > 0
    assert "s/step" in run.stdout and "decode" in run.stdout and "peak" in run.stdout


def test_the_gpu_benchmark_assembles_every_real_size_pipeline_and_says_when_there_is_no_gpu() -> None:
    """The real-size pipelines, built on the meta device (no memory): what a GPU machine would build. Without CUDA
    the script refuses with a message and runs nothing."""
    import importlib.util
    import subprocess
    import sys

    import torch

    spec = importlib.util.spec_from_file_location("hotfolder_bench_gpu", BENCH)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    for name, arch in gpu.BENCHMARKED.items():
        pipe = gpu.real_pipeline(arch, "meta", torch.bfloat16)
        counted = sum(p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module)
                      for p in m.parameters())
        expected = sum(v for k, v in memory.PARAMS[arch].items() if k != "latent_upsampler")
        assert counted == expected, name  # the pipeline the benchmark runs is the one the memory table counts
    if not torch.cuda.is_available():
        run = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "needs an NVIDIA GPU with CUDA" in run.stderr and "--dry" in run.stderr
