"""How much memory a model takes on this machine, said before loading it: one estimate for doctor, models, daemon.

A model's resident memory is its parameters times the bytes each takes on the device that
runs it (bfloat16 on CUDA and MLX, float32 on MPS and the CPU: `pick_dtype` in the Diffusers
backend), in three parts a person can act on:

- weights: the transformer, the text connectors, the video and audio VAEs, the vocoder and the
  latent upsampler (production's, resident once the first production job loaded it);
- text encoder: Gemma 3 12B for LTX-2 and LTX-2.3, T5-XXL for LTX-Video;
- decoding: what the VAE decoder holds on top while it turns the latents of a default job
  (`REFERENCE_JOB`) into frames.

The parameter counts (`PARAMS`) are not guesses: tests/test_meta_params.py builds every component
from its published configuration (`backends/configs/<arch>/<component>.json`) on the `meta` device
and asserts this table equals the count, and the counts equal the published sizes (19B for LTX-2's
transformer, 22B for LTX-2.3's transformer and connectors, 12B for Gemma 3). The decode term is a
formula (the decoder's last stage's activations); `bench/gpu.py` measures the real peak on a GPU.

This module never imports torch or mlx: the machine's memory comes from `os.sysconf` (psutil when
installed), and a CUDA GPU's from `nvidia-smi` for doctor and models; the daemon, which imports
torch anyway to load a Diffusers model, asks torch (`cuda_memory`).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hotfolder.errors import HotfolderError
from hotfolder.weights import GB, gb

if TYPE_CHECKING:
    from hotfolder.config import Config, ModelInfo

# Parameters of each component, counted on the meta device from the committed configurations
# (tests/test_meta_params.py asserts each number; change them only together with the configs).
PARAMS: dict[str, dict[str, int]] = {
    "ltx-2": {
        "transformer": 18_876_174_592,
        "connectors": 1_431_475_200,
        "vae": 1_222_479_601,
        "audio_vae": 53_248_146,
        "vocoder": 55_592_802,
        "latent_upsampler": 497_867_904,
        "text_encoder": 12_187_325_040,  # Gemma 3 12B (Gemma3ForConditionalGeneration, vision tower included)
    },
    "ltx-2.3": {
        "transformer": 18_988_838_144,
        "connectors": 3_172_227_584,
        "vae": 726_105_969,
        "audio_vae": 53_248_146,
        "vocoder": 128_537_448,
        "latent_upsampler": 497_867_904,
        "text_encoder": 12_187_325_040,
    },
    "ltx-2.5": {
        "transformer": 18_987_859_200,
        "vae": 726_105_969,
        "audio_vae": 53_248_146,
        "vocoder": 128_537_448,
        "latent_upsampler": 497_867_904,
    },
    "ltx-video": {
        "transformer": 1_923_385_472,
        "vae": 419_193_649,
        "text_encoder": 4_762_310_656,  # T5 v1.1 XXL encoder
    },
}

# Components whose configuration could not be had offline: LTX-2.5's Gemma 4 text encoder (12B by the name
# of Lightricks' file, gemma4-12b-with-proj) and its connectors, whose sizes follow from Gemma 4's config.
# Taken as LTX-2.3's until a published configuration is committed; shown with "~" and never called proven.
ASSUMED: dict[str, dict[str, int]] = {
    "ltx-2.5": {"connectors": PARAMS["ltx-2.3"]["connectors"], "text_encoder": PARAMS["ltx-2.3"]["text_encoder"]},
}

# The published sizes the counts are checked against (in billions, and which components they cover).
PUBLISHED: list[tuple[str, tuple[str, ...], float, str]] = [
    ("ltx-2", ("transformer",), 19.0, "LTX-2 is a 19B model (ltx-2-19b-dev)"),
    ("ltx-2.3", ("transformer", "connectors"), 22.0, "LTX-2.3 is a 22B model (ltx-2.3-22b-dev)"),
    ("ltx-2", ("text_encoder",), 12.0, "Gemma 3 12B"),
    ("ltx-video", ("transformer",), 2.0, "LTX-Video 2B (ltx-video-2b)"),
    ("ltx-video", ("text_encoder",), 4.7, "the T5 v1.1 XXL encoder, 4.7B"),
]

WEIGHT_PARTS = ("transformer", "connectors", "vae", "audio_vae", "vocoder", "latent_upsampler")

# The default job, whose decode the estimate includes: a 5 s preview at 24 fps in the default format
# (linkedin 1280x720, halved and snapped to 32 for preview).
REFERENCE_JOB = (640, 352, 121)

BYTES = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0, "q4": 0.5625}  # q4: 4 bits + fp16 scale and bias per 64
MARGIN = 0.9  # of the machine's memory a model may count on; the system, the daemon and ffmpeg need the rest


class MemoryTooSmall(HotfolderError):
    """The model cannot fit this machine's memory: refused before loading, never retried."""

    kind = "memory"
    retryable = False


def architecture(model: ModelInfo) -> str | None:
    """The architecture whose parameter table applies to `model`; None for the tiny models (built in code).

    What the model table says: its family (LTX-Video) and its LTX-2 generation (`version`: "2", "2.3", "2.5");
    a distilled checkpoint has its base's architecture, a generation without a table counts as LTX-2.
    """
    if model.tiny:
        return None
    if model.family != "ltx2":
        return "ltx-video"
    arch = f"ltx-{model.version}"
    return arch if arch in PARAMS else "ltx-2"


def params(arch: str) -> tuple[dict[str, int], bool]:
    """Each component's parameters, and whether every count is proven (False: part assumed, see ASSUMED)."""
    counted = dict(PARAMS[arch])
    assumed = {k: v for k, v in ASSUMED.get(arch, {}).items() if k not in counted}
    return {**counted, **assumed}, not assumed


# -- the estimate ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """The memory one model takes resident on one backend and device, in bytes."""

    model: str
    arch: str
    backend: str
    device: str  # cuda | mps | cpu | gpu (MLX on Metal)
    dtype: str  # bfloat16 | float32 | q4 (MLX quantised transformer)
    weights: int
    text_encoder: int
    decoding: int
    largest: int  # the largest single component (what model CPU offload keeps on the GPU at once)
    proven: bool

    @property
    def resident(self) -> int:
        return self.weights + self.text_encoder

    @property
    def total(self) -> int:
        return self.resident + self.decoding

    def parts(self) -> str:
        """'weights 40.7 GB + text encoder 24.4 GB + decoding 0.9 GB', in the units a person reads."""
        te = "text encoder" if self.arch != "ltx-video" else "text encoder (T5)"
        approx = "" if self.proven else "~"
        return (f"weights {approx}{gb(self.weights)} {self.dtype} + {te} {approx}{gb(self.text_encoder)} + "
                f"decoding {gb(self.decoding)}")

    def describe(self) -> str:
        return f"about {gb(self.total)} ({self.parts()}) on {self.device}"


def dtype_for(backend: str, device: str) -> str:
    """The weights' dtype: as `pick_dtype` in the Diffusers backend (bf16 on CUDA, else float32); MLX bf16."""
    if backend == "mlx":
        return "bfloat16"
    return "bfloat16" if device == "cuda" else "float32"


def _quantized(model: ModelInfo) -> bool:
    where = f"{model.name} {model.mlx_repo or ''}".lower()
    return "-q4" in where or "q4" in where.split("-")


def decoding_bytes(arch: str, bytes_per: float, job: tuple[int, int, int] = REFERENCE_JOB) -> int:
    """What decoding a `job` (width, height, frames) holds on top of the weights.

    The video VAE decoder's last stage works at a quarter of the frame's width and height (patch size
    4) with its first block's channels (256 for LTX-2 and 2.3, 128 for LTX-Video); a resnet block holds
    about four such tensors at once (its input, two convolutions, a norm), and the float32 frames come
    out at full size. A formula, not a measurement: `bench/gpu.py` measures the peak.
    """
    width, height, frames = job
    channels = 128 if arch == "ltx-video" else 256
    stage = channels * frames * (height // 4) * (width // 4) * bytes_per
    out = frames * 3 * height * width * 4
    return int(4 * stage + out)


def estimate(model: ModelInfo, backend: str, device: str, *,
             job: tuple[int, int, int] = REFERENCE_JOB) -> Estimate | None:
    """The resident memory of `model` on `backend` and `device`; None for the tiny models (they always fit).

    The text encoder counts whether it stays resident or not: with `mlx_keep_text_encoder = false` it is
    loaded for each job while the transformer stays, so the peak is the same.
    """
    arch = architecture(model)
    if arch is None:
        return None
    counts, proven = params(arch)
    dtype = dtype_for(backend, device)
    per = BYTES[dtype]
    sizes = {part: int(counts.get(part, 0) * per) for part in (*WEIGHT_PARTS, "text_encoder")}
    shown_dtype = dtype
    if backend == "mlx" and _quantized(model):
        sizes["transformer"] = int(counts["transformer"] * BYTES["q4"])
        shown_dtype = "q4"
    weights = sum(sizes[p] for p in WEIGHT_PARTS)
    return Estimate(
        model=model.name, arch=arch, backend=backend, device=device, dtype=shown_dtype, weights=weights,
        text_encoder=sizes["text_encoder"], largest=max(sizes.values()), proven=proven,
        decoding=decoding_bytes(arch, BYTES["bfloat16" if per < 4 else "float32"], job),
    )


# -- this machine ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    """The memory of this machine: RAM, and a CUDA GPU's when there is one (bytes)."""

    ram: int
    gpu_total: int | None = None
    gpu_free: int | None = None
    gpu_name: str = ""

    def describe(self) -> str:
        text = f"{gb(self.ram)} of RAM"
        if self.gpu_total:
            free = f", {gb(self.gpu_free)} free" if self.gpu_free is not None else ""
            text += f" and the GPU {self.gpu_name or '(CUDA)'} with {gb(self.gpu_total)}{free}"
        return text


def ram_bytes() -> int:
    """Physical memory (psutil when installed, else sysconf: both Linux and macOS answer)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def nvidia_smi_memory(timeout: float = 2.0) -> tuple[int, int, str] | None:
    """(total, free, name) of GPU 0 from nvidia-smi, without importing torch; None without an NVIDIA GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.total,memory.free,name", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        total, free, name = [x.strip() for x in out.stdout.strip().splitlines()[0].split(",", 2)]
        return int(float(total) * 2**20), int(float(free) * 2**20), name
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def cuda_memory() -> tuple[int, int, str] | None:
    """(total, free, name) of CUDA device 0 through torch (imports torch: for the daemon, about to load)."""
    torch = sys.modules.get("torch")
    if torch is None:
        import torch
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(0)
    return int(total), int(free), torch.cuda.get_device_name(0)


def device_for(backend: str, gpu: tuple[int, int, str] | None) -> str:
    """The device `backend` runs on here, decided without torch: as `pick_device` (cuda, mps, cpu) and MLX's."""
    apple = sys.platform == "darwin" and platform.machine() == "arm64"
    if backend == "mlx":
        return "gpu" if apple else "cpu"
    if gpu:
        return "cuda"
    return "mps" if apple else "cpu"


def machine(gpu: tuple[int, int, str] | None = None) -> Machine:
    total, free, name = gpu if gpu else (None, None, "")
    return Machine(ram=ram_bytes(), gpu_total=total, gpu_free=free, gpu_name=name)


# -- does it fit? -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fit:
    """Whether an estimate fits a machine, how (on the GPU, or with model CPU offload), and why not."""

    fits: bool
    offload: bool
    why: str  # the numbers, said


def should_offload(est: Estimate, gpu_free: int) -> bool:
    """Model CPU offload for a CUDA GPU whose free memory cannot hold the whole pipeline while it decodes."""
    return est.total > gpu_free * MARGIN


def fit(est: Estimate | None, m: Machine) -> Fit:
    """Whether `est` fits machine `m`: on CUDA the whole pipeline on the GPU, else with offload (the RAM holds
    the weights, the GPU the largest component while it runs); elsewhere (CPU, MPS and MLX share the RAM)
    everything in RAM."""
    if est is None:
        return Fit(True, False, "built in code: a few MB")
    ram = int(m.ram * MARGIN)
    if est.device == "cuda" and not m.gpu_total:
        return Fit(True, False, "the GPU's memory is unknown here (no nvidia-smi): not checked")
    if est.device == "cuda":
        free = m.gpu_free if m.gpu_free is not None else m.gpu_total
        if not should_offload(est, free):
            return Fit(True, False, f"fits the GPU ({gb(free)} free)")
        gpu_need = est.largest + est.decoding
        if gpu_need > free * MARGIN:
            return Fit(False, True, f"even with model CPU offload the GPU must hold {gb(gpu_need)} at once (the "
                                    f"largest component and the decode), but it has {gb(free)} free")
        if est.resident > ram:
            return Fit(False, True, f"with model CPU offload the RAM must hold {gb(est.resident)}, but this machine "
                                    f"has {gb(m.ram)}")
        return Fit(True, True, f"does not fit the GPU's {gb(free)} free: runs with model CPU offload "
                               f"({gb(est.resident)} in RAM, {gb(gpu_need)} on the GPU at once)")
    if est.total > ram:
        return Fit(False, False, f"this machine has {gb(m.ram)} of memory")
    return Fit(True, False, f"fits {gb(m.ram)} of memory")


def alternatives(model: ModelInfo, config: Config, m: Machine, backend_of: Any, device_of: Any) -> list[str]:
    """Other models of the table that would fit this machine (smallest first), for the refusal's advice."""
    found = []
    for other in config.models.values():
        if other.name == model.name or other.tiny or other.local_path:
            continue
        b = backend_of(other)
        est = estimate(other, b, device_of(b))
        if est is not None and fit(est, m).fits:
            found.append((est.total, f"{other.name} ({gb(est.total)} on {b})"))
    return [text for _, text in sorted(found)]


def refusal(model: ModelInfo, est: Estimate, f: Fit, m: Machine, others: list[str]) -> MemoryTooSmall:
    """The error that refuses `model`, with the numbers and what to do."""
    message = (f"model {model.name} needs {est.describe()} in {est.dtype} with the {est.backend} backend, "
               f"but {f.why}: it would be killed for memory, so it was not loaded.")
    if others:
        hint = f"Use a model that fits this machine ({m.describe()}): {', '.join(others)}."
    else:
        hint = (f"No model in the table fits this machine ({m.describe()}): run it on a machine with more memory "
                "(an NVIDIA GPU, or an Apple Silicon Mac with the MLX backend), or try the pipeline with the tiny "
                'model (model = "tiny").')
    return MemoryTooSmall(message, hint=hint + " `hotfolder models list` shows each model's memory on this machine; "
                          "memory_check = false in the config file loads it anyway (the system may kill the daemon).")


__all__ = ["GB", "Estimate", "Fit", "Machine", "MemoryTooSmall", "architecture", "estimate", "fit", "machine",
           "should_offload", "refusal", "params"]
