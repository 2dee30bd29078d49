"""The Diffusers backend: LTX-2 (video + native audio) and LTX-Video (video only).

One resident pipeline per backend object: `load()` once (from local weights only,
never downloading), `generate()` many times, `close()` to give the memory back.
The `tiny` models are built in code by `hotfolder.backends.tiny` (their output is
noise). torch and diffusers are imported inside functions, so importing this
module stays cheap until `load()`.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotfolder.backends import Clip, OnStep
from hotfolder.errors import BackendError, HotfolderError, WeightsMissing

if TYPE_CHECKING:
    from hotfolder.config import Config, ModelInfo
    from hotfolder.spec import JobSpec

OOM_HINT = 'try mode = "preview", a shorter duration, or a smaller size'

# Settings that make an LTX-2 step cost one transformer pass: no classifier-free,
# spatio-temporal or modality guidance (the shipped defaults cost about 3x per step).
# Used for the tiny models, whose output is noise whatever the guidance, and for
# models configured with guidance <= 1 (distilled weights run without guidance).
NO_GUIDANCE_LTX2: dict[str, Any] = {
    "guidance_scale": 1.0,
    "stg_scale": 0.0,
    "modality_scale": 1.0,
    "guidance_rescale": 0.0,
    "audio_guidance_scale": 1.0,
    "audio_stg_scale": 0.0,
    "audio_modality_scale": 1.0,
    "audio_guidance_rescale": 0.0,
    "spatio_temporal_guidance_blocks": None,
    "use_cross_timestep": False,
}


def create(model: ModelInfo, config: Config) -> DiffusersBackend:
    return DiffusersBackend(model, config)


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, tiny: bool) -> Any:
    """The weights' dtype on `device`.

    - cuda: bfloat16, what LTX was trained and shipped in.
    - mps: float32. float16 overflows to NaN in LTX, and bfloat16 attention on
      MPS has public reports of black frames: both fail silently, delivering a
      black video as a success. float32 is right everywhere; its cost is twice
      the memory of bfloat16, which shows as an out-of-memory error (or heavy
      swapping) on a Mac too small for the model, never as a wrong video.
    - cpu: float32 (bfloat16 matmuls on CPU are slow or unsupported).
    - the tiny models: always float32 (they are small, and it keeps them exact).
    """
    import torch

    if device == "cuda" and not tiny:
        return torch.bfloat16
    return torch.float32


def _no_float64(pipe: Any) -> None:
    """MPS has no float64: compute the LTX-2 RoPE frequencies in float32 (they are cast to float32 anyway)."""
    for component in (getattr(pipe, "transformer", None), getattr(pipe, "connectors", None)):
        for module in component.modules() if component is not None else ():
            if getattr(module, "double_precision", False):
                module.double_precision = False


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text


class DiffusersBackend:
    """A resident LTX-2 / LTX-Video Diffusers pipeline."""

    name = "diffusers"

    def __init__(self, model: ModelInfo, config: Config):
        self.model = model
        self.config = config
        self.device = ""  # set by load()
        self.dtype: Any = None
        self.pipe: Any = None
        self.pipeline_class = ""  # e.g. "LTX2Pipeline", set by load()
        self.load_s: float | None = None  # seconds the last load() took
        self.offload = False  # model CPU offload (a GPU too small to hold the whole pipeline)

    # -- load -----------------------------------------------------------------

    def load(self) -> None:
        """Build (tiny) or load (local weights only) the pipeline and move it to the device."""
        if self.pipe is not None:
            return
        started = time.monotonic()
        # Missing weights are found before the slow torch/diffusers import, so they fail in milliseconds.
        source = None if self.model.tiny else self._find_weights()
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

        device = pick_device()
        dtype = pick_dtype(device, self.model.tiny)
        if source is None:
            from hotfolder.backends import tiny

            pipe = tiny.build_ltx2_pipeline() if self.model.family == "ltx2" else tiny.build_ltx_pipeline()
        else:
            pipe = self._from_pretrained(source, dtype)
        try:
            self.offload = device == "cuda" and not self._fits_on_gpu()
            if self.offload:
                pipe.enable_model_cpu_offload()
            else:
                pipe.to(device)
        except Exception as e:
            if _is_oom(e):
                raise BackendError(f"{self.model.name} does not fit in {device} memory: {e}", hint=OOM_HINT) from e
            raise BackendError(f"moving {self.model.name} to {device} failed: {type(e).__name__}: {e}") from e
        pipe.set_progress_bar_config(disable=True)
        if device == "mps":
            _no_float64(pipe)

        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.pipeline_class = type(pipe).__name__
        self.load_s = time.monotonic() - started

    def _missing(self, cause: BaseException | None = None) -> WeightsMissing:
        name = self.model.name
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        if self.model.local_path:
            return WeightsMissing(
                f"model {name}: {self.model.local_path} is not a folder of Diffusers weights{detail}",
                hint="Point to a folder saved with save_pretrained (it holds model_index.json), "
                "or use a model name from `hotfolder models`.",
            )
        return WeightsMissing(
            f"model {name}: weights for {self.model.diffusers_repo} are missing or incomplete on this machine "
            f"(the daemon never downloads){detail}",
            hint=f"Run: hotfolder models pull {name}",
        )

    def _find_weights(self) -> str:
        """The folder or hub name to load from, checked on disk only (no torch import, no network)."""
        if self.model.local_path:
            folder = Path(self.model.local_path).expanduser()
            if not (folder / "model_index.json").is_file():
                raise self._missing()
            return str(folder)
        if not self.model.diffusers_repo:
            raise WeightsMissing(
                f"model {self.model.name} has no Diffusers weights (it exists only for the MLX backend)",
                hint='Use backend = "mlx" on Apple Silicon, or another model.',
            )
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(self.model.diffusers_repo, revision=self.model.revision, local_files_only=True)
        except OSError as e:  # huggingface_hub's LocalEntryNotFoundError is a FileNotFoundError
            raise self._missing() from e
        return self.model.diffusers_repo

    def _from_pretrained(self, source: str, dtype: Any) -> Any:
        """Load real weights from a local folder or the local Hugging Face cache; never download."""
        from diffusers import LTX2Pipeline, LTXPipeline

        cls = LTX2Pipeline if self.model.family == "ltx2" else LTXPipeline
        kwargs: dict[str, Any] = {}
        if not self.model.local_path:
            kwargs = {"local_files_only": True, "revision": self.model.revision}
        try:
            return cls.from_pretrained(source, dtype=dtype, **kwargs)
        except (OSError, ValueError) as e:
            # OSError: a component not cached, or cached in part (an interrupted pull).
            # ValueError: a folder that is not this pipeline's (a component or its config is wrong).
            raise self._missing(e) from e
        except Exception as e:
            name = self.model.name
            if _is_oom(e):
                raise BackendError(f"{name} does not fit in memory: {e}", hint=OOM_HINT) from e
            raise BackendError(f"loading {name} ({cls.__name__} from {source}) failed: {type(e).__name__}: {e}") from e

    def _fits_on_gpu(self) -> bool:
        """Whether the whole pipeline fits in GPU memory (else model CPU offload). Unknown size: assume it fits."""
        import torch

        if self.model.tiny or not self.model.size_gb:
            return True
        total_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
        return total_gb >= self.model.size_gb * 1.2  # weights plus room for activations and the VAE decode

    # -- generate ---------------------------------------------------------------

    def generate(self, spec: JobSpec, on_step: OnStep) -> Clip:
        """Generate one clip. Raises BackendError (retryable) and lets Interrupted through."""
        import numpy as np
        import torch

        pipe = self.pipe
        if pipe is None:
            raise RuntimeError("DiffusersBackend.generate() called before load()")
        is_ltx2 = self.model.family == "ltx2"
        cls = self.pipeline_class

        # 1. The spec must already be snapped: the pipeline would silently round frames down.
        space, frame_step = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
        if spec.width % space or spec.height % space or (spec.num_frames - 1) % frame_step:
            raise BackendError(
                f"{spec.width}x{spec.height}, {spec.num_frames} frames is not what {cls} produces: width and height "
                f"must be multiples of {space} and frames {frame_step}k+1 (the job should have been snapped)"
            )

        # 2. Arguments.
        def on_step_end(_pipe: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step("denoise", i + 1, _pipe.num_timesteps)
            return tensors

        kwargs: dict[str, Any] = {
            "prompt": spec.prompt,
            "negative_prompt": spec.negative_prompt,
            "width": spec.width,
            "height": spec.height,
            "num_frames": spec.num_frames,
            "frame_rate": spec.fps,
            "num_inference_steps": spec.steps,
            "guidance_scale": self.model.guidance,
            "generator": torch.Generator("cpu").manual_seed(spec.seed),
            "output_type": "np",
            "callback_on_step_end": on_step_end,
            "callback_on_step_end_tensor_inputs": ["latents"],
        }
        if self.model.tiny or self.model.guidance <= 1.0:
            # Guidance off: the tiny models (noise whatever the guidance) and distilled weights (guidance 1).
            kwargs.update(NO_GUIDANCE_LTX2 if is_ltx2 else {"guidance_scale": 1.0})

        # 3. Run.
        started = time.monotonic()
        try:
            out = pipe(**kwargs)
        except HotfolderError as e:  # Interrupted from on_step, or our own errors
            traceback.clear_frames(e.__traceback__)  # free the pipeline's tensors held by the traceback
            raise
        except Exception as e:
            traceback.clear_frames(e.__traceback__)
            self._empty_cache()
            if _is_oom(e):
                raise BackendError(
                    f"out of memory on {self.device} generating {spec.width}x{spec.height}, {spec.num_frames} frames "
                    f"with {self.model.name}",
                    hint=OOM_HINT,
                ) from e
            raise BackendError(f"{cls} ({self.model.name}) failed: {type(e).__name__}: {e}") from e
        seconds = time.monotonic() - started

        # 4. Frames: float32 (1, F, H, W, 3) in [0, 1] -> uint8, converted in place (a 121-frame
        # 640x352 clip is 330 MB as float32: fresh temporaries cost more than the conversion).
        frames = out.frames[0]
        if not np.isfinite(frames.sum()):
            raise BackendError(
                f"{cls} produced NaN frames on {self.device} in {str(self.dtype).removeprefix('torch.')} "
                "(numerical overflow)"
            )
        np.multiply(frames, 255.0, out=frames)
        np.rint(frames, out=frames)
        frames = frames.astype(np.uint8)
        want = (spec.num_frames, spec.height, spec.width, 3)
        if frames.shape != want:
            raise BackendError(f"{cls} produced frames of shape {frames.shape}, expected {want}")

        info: dict[str, Any] = {
            "backend": self.name,
            "pipeline": cls,
            "model": self.model.name,
            "tiny": self.model.tiny,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "guidance": kwargs["guidance_scale"],
            "steps": spec.steps,
            "seconds": round(seconds, 3),
        }
        if self.model.tiny:
            from hotfolder.backends.tiny import TINY_VERSION

            info["tiny_version"] = TINY_VERSION
        if self.offload:
            info["offload"] = "model_cpu_offload"

        # 5. Audio (LTX-2): (1, channels, samples) -> float32 (channels, samples), fitted to the video.
        audio = sample_rate = None
        if is_ltx2 and self.model.has_audio and spec.generate_audio and getattr(out, "audio", None) is not None:
            sample_rate = int(pipe.vocoder.config.output_sampling_rate)
            audio = out.audio[0].detach().float().cpu().numpy()
            np.clip(audio, -1.0, 1.0, out=audio)
            audio, native = fit_audio(audio, round(spec.num_frames / spec.fps * sample_rate))
            info["audio_native_samples"] = native
        elif is_ltx2 and not spec.generate_audio:
            info["audio"] = "dropped (generate_audio = false)"

        return Clip(frames=frames, fps=spec.fps, audio=audio, sample_rate=sample_rate, info=info)

    # -- close ------------------------------------------------------------------

    def close(self) -> None:
        self.pipe = None
        gc.collect()
        self._empty_cache()

    @staticmethod
    def _empty_cache() -> None:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if torch.backends.mps.is_available():
            torch.mps.empty_cache()


def fit_audio(audio: Any, samples: int) -> tuple[Any, int]:
    """Pad with silence or trim `audio` (channels, n) to `samples`; returns it and the native length.

    LTX-2 audio comes in 40 ms latent frames and its causal decoder drops the last
    3 mel frames, so the native track is up to ~50 ms off the video's duration.
    """
    import numpy as np

    native = audio.shape[1]
    if native > samples:
        audio = audio[:, :samples]
    elif native < samples:
        audio = np.pad(audio, ((0, 0), (0, samples - native)))
    return np.ascontiguousarray(audio, dtype=np.float32), native
