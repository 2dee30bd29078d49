"""The Diffusers backend: LTX-2 (video + native audio) and LTX-Video (video only).

One resident pipeline per backend object: `load()` once (from local weights only,
never downloading), `generate()` many times, `close()` to give the memory back.

- `mode = "preview"`: one denoising stage at the job's size.
- `mode = "production"` (LTX-2 family): stage 1 at half size, the LTX-2 latent upsampler x2
  (loaded by the first production job, then resident), stage 2 refining at full size
  from a partial sigma in 3 steps, as the Diffusers LTX-2 docs do it. On non-distilled
  weights stage 2 runs with the distilled LoRA (loaded once through peft, then kept,
  enabled for stage 2 only). LTX-Video runs production as one stage at full size.
- The model table (`config.ModelInfo`) says how each model is run: its pipeline class
  (`LTX2Pipeline`, `LTX2DFRPipeline` for LTX-2.5, `LTXPipeline`), distilled or not,
  guidance per modality, STG and modality guidance, the image CRF.
- LTX-2.5: `duration = "auto"` (the duration head picks the frame count before stage 1) and
  `enhance_prompt` (the pipeline's own prompt enhancer rewrites the prompt first; both
  prompts go into the clip's info).
- An image (`spec.image`): image-to-video through pipelines built over the resident
  modules (`cls(**pipe.components)`: the same weights, never a second copy), the image
  fitted to each stage's size by cover + centre-crop (`media.fit.fit_image`, as the MLX backend).

The `tiny` models are built in code by `hotfolder.backends.diffusers.tiny` (their output is
noise). torch and diffusers are imported inside functions, so importing this
module stays cheap until `load()`.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotfolder import weights
from hotfolder.backends import Clip, OnStep, choose
from hotfolder.backends.choose import UPSAMPLER_SUBFOLDER
from hotfolder.errors import BackendError, HotfolderError, WeightsMissing
from hotfolder.media.fit import fit_audio, fit_image

if TYPE_CHECKING:
    from hotfolder.config import Config, ModelInfo
    from hotfolder.job.spec import JobSpec

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



# LTX-2 was trained on conditioning images that went through H.264 at a CRF (`ModelInfo.image_crf`);
# Diffusers re-compresses them the same way (`resolve_default_image_crf`: 33 through LTX-2.3, 18 for
# LTX-2.5's Gemma 4 text encoder) but needs PyAV for it. We do it with the bundled ffmpeg.

# The name the stage-2 distilled LoRA is loaded under (`load_lora_weights(..., adapter_name=...)`).
STAGE2_ADAPTER = "stage2-distilled"
DFR = "LTX2DFRPipeline"


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
        # Production (LTX-2): the latent upsampler, loaded by the first production job, then resident.
        self.upsampler: Any = None
        self.upsample_pipe: Any = None  # LTX2LatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=upsampler)
        self._upsampler_source = ""
        # Pipelines built over the resident modules (image-to-video, stage 2), by (class, scheduler).
        self._views: dict[tuple[str, str], Any] = {}
        # Production's stage-2 distilled LoRA (non-distilled LTX-2 weights): loaded once, then resident and
        # enabled for stage 2 only. `_lora` describes it for the metadata (name, source file, scale).
        self._lora: dict[str, Any] | None = None
        self._lora_dir: Any = None  # the tiny models' LoRA file lives in a temporary folder (TemporaryDirectory)
        self._weights = ""  # where the pipeline's weights came from, for the metadata

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
            from hotfolder.backends.diffusers import tiny
            pipe = tiny.build(self.model)
            self._weights = f"built in code (tiny {self.model.name}@{self.model.revision})"
        else:
            pipe = self._from_pretrained(source, dtype)
            self._weights = self._weights_identity(source)
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

    def _weights_identity(self, source: str) -> str:
        """`repo@commit` (the local cache's snapshot), or the folder: what the metadata says the stages ran."""
        if self.model.local_path:
            return source
        try:
            return f"{source}@{weights.commit(source, self.model.revision)}"
        except Exception:  # noqa: BLE001 - only a label: an odd name must not stop a load
            return source

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
        try:
            weights.snapshot(self.model.diffusers_repo, self.model.revision, model_name=self.model.name)
        except WeightsMissing as e:  # our own message: it names the repository and says incomplete pulls too
            raise self._missing() from e
        return self.model.diffusers_repo

    def _from_pretrained(self, source: str, dtype: Any) -> Any:
        """Load real weights from a local folder or the local Hugging Face cache; never download."""
        import diffusers

        cls = getattr(diffusers, self.model.pipeline_class)
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
        """Whether the whole pipeline, while it decodes, fits the GPU's free memory (else model CPU offload).

        The one estimate `doctor`, `models list` and the daemon's refusal use (`backends/memory.py`); the
        provider closes the previous model first, so free memory is what this one can have.
        """
        import torch

        from hotfolder.backends import memory

        est = memory.estimate(self.model, "diffusers", "cuda")  # None for the tiny models: they fit
        return est is None or not memory.should_offload(est, torch.cuda.mem_get_info(0)[0])

    # -- generate ---------------------------------------------------------------

    def generate(self, spec: JobSpec, on_step: OnStep) -> Clip:
        """Generate one clip. Raises BackendError (retryable) and lets Interrupted through.

        preview: one stage at the spec's size. production (LTX-2 family): stage 1 at half
        size, the latent upsampler x2, stage 2 refining at full size (see `_two_stages`).
        With `spec.image`: image-to-video, the image fitted to each stage's size.
        LTX-2.5: the prompt enhancer first (`spec.enhance_prompt`), then the duration head
        (`spec.duration_auto`), which fixes the frame count every stage then uses.
        """
        import numpy as np
        import torch

        pipe = self.pipe
        if pipe is None:
            raise RuntimeError("DiffusersBackend.generate() called before load()")
        model = self.model
        is_ltx2 = model.family == "ltx2"
        dfr = self.pipeline_class == DFR
        if spec.image and not model.image_to_video:
            raise BackendError(f"model {model.name} ({self.pipeline_class}) has no image-to-video path here "
                               "(the job should have been refused)")
        two_stages = spec.mode == "production" and is_ltx2
        if two_stages:  # WeightsMissing (permanent) before any work: the upsampler, then the stage-2 LoRA
            self._load_upsampler()
            self._load_stage2_lora()

        info: dict[str, Any] = {
            "backend": self.name,
            "model": model.name,
            "tiny": model.tiny,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "mode": spec.mode,
            "pipeline_class": self.pipeline_class,
            "version": model.version,
            "distilled": model.distilled,
            "weights": self._weights,
        }
        run = _Run(on_step)
        started = time.monotonic()
        try:
            # 1. What LTX-2.5 decides before the denoising: the prompt, then the length.
            prompt, text = self._enhanced_prompt(spec, info, run), {}
            if spec.duration_auto:
                spec, text = self._auto_duration(spec, prompt, info)

            # 2. The spec must already be snapped: the pipeline would silently round frames down.
            space, frame_step = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
            if spec.width % space or spec.height % space or (spec.num_frames - 1) % frame_step:
                raise BackendError(
                    f"{spec.width}x{spec.height}, {spec.num_frames} frames is not what {self.pipeline_class} "
                    f"produces: width and height must be multiples of {space} and frames {frame_step}k+1 (the job "
                    "should have been snapped)"
                )
            image = self._open_image(spec.image) if spec.image else None

            # 3. Arguments every stage shares, and stage 1's schedule and guidance.
            common: dict[str, Any] = {
                "num_frames": spec.num_frames,
                "frame_rate": spec.fps,
                "generator": torch.Generator("cpu").manual_seed(spec.seed),
                "callback_on_step_end_tensor_inputs": ["latents"],
                **(text or {"prompt": prompt}),
            }
            if not dfr:
                common["negative_prompt"] = spec.negative_prompt
            guidance = self._guidance(is_ltx2, dfr)
            info["guidance"] = guidance.get("guidance_scale", 1.0)  # the video's classifier-free guidance
            info["guidance_settings"] = {k: v for k, v in guidance.items()
                                         if k.endswith("_scale") or k in ("use_cross_timestep",
                                                                          "spatio_temporal_guidance_blocks")}
            schedule = self._schedule(spec, dfr)

            # 4. Run.
            if two_stages:
                out = self._two_stages(spec, image, common, guidance, schedule, run, info)
            else:
                out = self._one_stage(spec, image, common, guidance, schedule, run, info)
        except HotfolderError as e:  # Interrupted from on_step, or our own errors
            traceback.clear_frames(e.__traceback__)  # free the pipeline's tensors held by the traceback
            raise
        except Exception as e:
            traceback.clear_frames(e.__traceback__)
            self._empty_cache()
            if _is_oom(e):
                raise BackendError(
                    f"out of memory on {self.device} generating {spec.width}x{spec.height}, {spec.num_frames} frames "
                    f"({spec.mode}{', ' + run.stage if two_stages else ''}) with {model.name}",
                    hint=OOM_HINT,
                ) from e
            where = f" in {run.stage}" if run.stage else ""
            raise BackendError(f"{run.pipeline or self.pipeline_class} ({model.name}) failed{where}: "
                               f"{type(e).__name__}: {e}") from e
        info["seconds"] = round(time.monotonic() - started, 3)

        # 5. Frames: float32 (1, F, H, W, 3) in [0, 1] -> uint8, converted in place (a 121-frame
        # 640x352 clip is 330 MB as float32: fresh temporaries cost more than the conversion).
        frames = out.frames[0]
        if not isinstance(frames, np.ndarray):
            frames = np.asarray(frames, dtype=np.float32)
        if not np.isfinite(frames.sum()):
            raise BackendError(
                f"{run.pipeline} produced NaN frames on {self.device} in {str(self.dtype).removeprefix('torch.')} "
                "(numerical overflow)"
            )
        np.multiply(frames, 255.0, out=frames)
        np.rint(frames, out=frames)
        frames = frames.astype(np.uint8)
        want = (spec.num_frames, spec.height, spec.width, 3)
        if frames.shape != want:
            raise BackendError(f"{run.pipeline} produced frames of shape {frames.shape}, expected {want}")

        info["pipeline"] = info["stages"][0]["pipeline"]
        info["steps"] = sum(stage["steps"] for stage in info["stages"])
        info["steps_requested"] = spec.steps
        info["num_frames"] = spec.num_frames
        info["duration_s"] = round(spec.num_frames / spec.fps, 4)
        if model.tiny:
            from hotfolder.backends.diffusers.tiny import TINY_VERSION

            info["tiny_version"] = TINY_VERSION
        if self.offload:
            info["offload"] = "model_cpu_offload"

        # 6. Audio (LTX-2): (1, channels, samples) -> float32 (channels, samples), fitted to the video.
        audio = sample_rate = None
        if is_ltx2 and model.has_audio and spec.generate_audio and getattr(out, "audio", None) is not None:
            sample_rate = int(pipe.vocoder.config.output_sampling_rate)
            audio = out.audio[0].detach().float().cpu().numpy()
            np.clip(audio, -1.0, 1.0, out=audio)
            # LTX-2 audio comes in 40 ms latent frames and its causal decoder drops the last 3 mel
            # frames, so the native track is up to ~50 ms off the video's duration: fitted to it.
            info["audio_native_samples"] = audio.shape[1]
            audio = np.ascontiguousarray(fit_audio(audio, round(spec.num_frames / spec.fps * sample_rate)))
        elif is_ltx2 and not spec.generate_audio:
            info["audio"] = "dropped (generate_audio = false)"

        return Clip(frames=frames, fps=spec.fps, audio=audio, sample_rate=sample_rate, info=info)

    # -- how each model is run ----------------------------------------------------

    def _guidance(self, is_ltx2: bool, dfr: bool) -> dict[str, Any]:
        """Stage 1's guidance arguments, from the model table (the tiny models and distilled weights: none).

        LTX-2 family: classifier-free guidance per modality (`guidance`, `audio_guidance`), STG at
        `stg_block` (`stg_scale`, both modalities), modality-isolation guidance (`modality_scale`), and
        the cross-modality timestep (`use_cross_timestep`: LTX-2.3 and later). DFR takes none of them
        (it is distilled: no guidance at all).
        """
        model = self.model
        if dfr:
            return {"use_cross_timestep": True}
        if not is_ltx2:
            return {"guidance_scale": 1.0 if model.tiny else model.guidance}
        cross = model.version not in ("", "2")
        if model.tiny or model.distilled or model.guidance <= 1.0:
            return {**NO_GUIDANCE_LTX2, "use_cross_timestep": cross}
        stg = model.stg_scale if model.stg_block is not None else 0.0
        return {
            "guidance_scale": model.guidance,
            "audio_guidance_scale": model.audio_guidance if model.audio_guidance is not None else model.guidance,
            "stg_scale": stg,
            "audio_stg_scale": stg,
            "spatio_temporal_guidance_blocks": [model.stg_block] if stg > 0 else None,
            "modality_scale": model.modality_scale,
            "audio_modality_scale": model.modality_scale,
            "use_cross_timestep": cross,
        }

    def _schedule(self, spec: JobSpec, dfr: bool) -> dict[str, Any]:
        """Stage 1's (or preview's) schedule: `spec.steps` steps, or the distilled sigmas (8 steps, fixed)."""
        if dfr or self.model.distilled:
            from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

            sigmas = list(DISTILLED_SIGMA_VALUES)
            return {"sigmas": sigmas} if dfr else {"sigmas": sigmas, "num_inference_steps": len(sigmas)}
        return {"num_inference_steps": spec.steps}

    def _enhanced_prompt(self, spec: JobSpec, info: dict[str, Any], run: _Run) -> str:
        """`enhance_prompt = true`: the model's prompt enhancer rewrites the prompt (LTX-2.5: its Gemma 4
        `prompt_enhancer` with `LTX2_5_T2V_DEFAULT_SYSTEM_PROMPT`, greedy, seeded by the job's seed).
        Both prompts go into the info; an enhancer that returns no words leaves the prompt as written."""
        if not spec.enhance_prompt:
            return spec.prompt
        import torch
        from diffusers.pipelines.ltx2 import utils as ltx2_utils

        pipe = self.pipe
        if getattr(pipe, "prompt_enhancer", None) is None or getattr(pipe, "processor", None) is None:
            raise BackendError(f"model {self.model.name} has no prompt enhancer (the job should have been refused)")
        run.stage, run.pipeline = "enhance_prompt", type(pipe.prompt_enhancer).__name__
        # With an image, the image-to-video system prompt and the image itself (the first frame, as the
        # enhancer sees it), as DFR does with an image condition; the tiny enhancer has no vision tower: text only.
        image = self._open_image(spec.image) if spec.image else None
        system = "LTX2_5_I2V_DEFAULT_SYSTEM_PROMPT" if image is not None else "LTX2_5_T2V_DEFAULT_SYSTEM_PROMPT"
        enhanced = pipe.enhance_prompt(
            prompt=spec.prompt,
            system_prompt=getattr(ltx2_utils, system),
            max_new_tokens=48 if self.model.tiny else None,  # the tiny enhancer's words are noise anyway
            generator=torch.Generator("cpu").manual_seed(spec.seed),
            device=pipe._execution_device,
            image=None if self.model.tiny else image,
        )[0].strip()
        record: dict[str, Any] = {
            "enhancer": self.model.prompt_enhancer or type(pipe.prompt_enhancer).__name__,
            "class": type(pipe.prompt_enhancer).__name__,
            "system_prompt": system,
            "image": image is not None and not self.model.tiny,
            "prompt": spec.prompt,
            "enhanced_prompt": enhanced or spec.prompt,
        }
        if not enhanced:
            record["note"] = "the enhancer returned no words: the prompt as written was used"
        info["prompt_enhancement"] = record
        run.stage = run.pipeline = ""
        return enhanced or spec.prompt

    def _auto_duration(self, spec: JobSpec, prompt: str, info: dict[str, Any]) -> tuple[JobSpec, dict[str, Any]]:
        """`duration = "auto"`: the duration head picks the frame count from the prompt's embeddings.

        The prompt is encoded once (text encoder and connectors, as `LTX2DFRPipeline` does when
        `num_frames` is omitted), the head predicts seconds, clamped to 1 s .. the model's
        `max_duration` and put on the VAE's 8k+1 grid; the embeddings are handed to stage 1 so it
        does not encode again. Returns the spec with that frame count, and the text arguments.
        """
        import torch

        pipe = self.pipe
        if self.pipeline_class != DFR or getattr(pipe, "duration_head", None) is None:
            raise BackendError(f"model {self.model.name} has no duration head (the job should have been refused)")
        with torch.no_grad():
            embeds, mask = pipe.encode_prompt(prompt=prompt, device=pipe._execution_device)
            video, audio, _ = pipe.connectors(embeds, mask, padding_side=pipe.tokenizer_padding_side)
            frames = int(pipe.duration_head.predict_num_frames(
                video[:1], audio[:1], frame_rate=spec.fps,
                temporal_compression_ratio=pipe.vae_temporal_compression_ratio,
                min_seconds=1.0, max_seconds=float(self.model.max_duration),
            ))  # fmt: skip
        info["duration"] = {"auto": True, "chosen_by": "duration head", "num_frames": frames,
                            "seconds": round(frames / spec.fps, 4), "bounds_s": [1.0, float(self.model.max_duration)]}
        spec = dataclasses.replace(spec, num_frames=frames, duration=frames / spec.fps)
        return spec, {"prompt": None, "prompt_embeds": embeds, "prompt_attention_mask": mask}

    def _one_stage(
        self, spec: JobSpec, image: Any, common: dict[str, Any], guidance: dict[str, Any], schedule: dict[str, Any],
        run: _Run, info: dict[str, Any],
    ) -> Any:
        """preview (and LTX-Video's production): one denoising pass at the spec's size, decoded."""
        pipeline, conditioning, record = self._conditioned(image, spec, spec.width, spec.height, info)
        if spec.mode == "production":
            # LTX-Video has no two-stage path here (its upsampler is a separate repository and its
            # pipelines take no sigmas or partial noise): production is one stage at full size.
            record["note"] = "LTX-Video: production runs one stage at full size (no latent upsampler)"
        steps = len(schedule["sigmas"]) if "sigmas" in schedule else schedule["num_inference_steps"]
        info["stages"] = [{"name": "denoise", **record, "steps": steps, "weights": self._weights, "adapters": []}]
        return run(
            "denoise",
            pipeline,
            record["pipeline"],
            **common,
            **guidance,
            **schedule,
            **conditioning,
            width=spec.width,
            height=spec.height,
            output_type="np",
        )

    def _two_stages(
        self, spec: JobSpec, image: Any, common: dict[str, Any], guidance: dict[str, Any], schedule: dict[str, Any],
        run: _Run, info: dict[str, Any],
    ) -> Any:
        """LTX-2 production, as the Diffusers LTX-2 docs do it.

        1. stage 1: at half size (each side half as many latents, rounded up, at least 2) from
           pure noise, with the model's guidance and `spec.steps` steps (distilled weights and
           LTX-2.5: the 8 distilled sigmas, no guidance), returning latents (`output_type="latent"`:
           video and audio latents, both denormalized; LTX-2.5 also its keyframe slots);
        2. the latent upsampler doubles the video latents' width and height (cropped to the full
           size's latent grid when a side had an odd number of latents);
        3. stage 2: the distilled stage-2 schedule (`STAGE_2_DISTILLED_SIGMA_VALUES`, 3 steps) at
           full size, from the upsampled video latents and stage 1's audio latents re-noised to
           the first sigma (`noise_scale`), with a scheduler that takes those sigmas as they are
           (`use_dynamic_shifting=False, shift_terminal=None`), guidance 1; on non-distilled
           weights with the distilled LoRA enabled (`set_adapters(..., 1.0)`), disabled again
           right after, so the next job runs the base weights. Then the VAE decodes video and audio.

        LTX-2.5 (`LTX2DFRPipeline`): stage 2 is a second DFR pass seeded with the upsampled
        keyframe slots. Not done here: the detailing IC-LoRA reference and the temporal refine
        rounds of the DFR 1080p recipe.
        """
        from diffusers.pipelines.ltx2.utils import STAGE_2_DISTILLED_SIGMA_VALUES

        dfr = self.pipeline_class == DFR
        space = self.pipe.vae_spatial_compression_ratio
        lat_w, lat_h = spec.width // space, spec.height // space
        half_w, half_h = max(2, -(-lat_w // 2)), max(2, -(-lat_h // 2))  # the VAE encoder needs >= 2 latents a side
        w1, h1 = half_w * space, half_h * space

        # Stage 1: half size, latents out.
        pipeline, conditioning, record1 = self._conditioned(image, spec, w1, h1, info, stage="stage1")
        steps1 = len(schedule["sigmas"]) if "sigmas" in schedule else schedule["num_inference_steps"]
        stage1_out = run(
            "stage1",
            pipeline,
            record1["pipeline"],
            **common,
            **guidance,
            **schedule,
            **conditioning,
            width=w1,
            height=h1,
            output_type="latent",
            return_dict=False,
        )
        video_latents, audio_latents = stage1_out[0], stage1_out[1]
        keyframes, positions = (stage1_out[2], stage1_out[3]) if dfr else (None, None)

        # Upsample x2 (unnormalized latents in and out), cropped to the full size's grid.
        run.stage, run.pipeline = "upsample", type(self.upsample_pipe).__name__
        upsampled = self._upsample(video_latents, w1, h1, lat_w, lat_h, record1, spec)
        del video_latents
        if keyframes is not None:
            keyframes = self._upsample(keyframes, w1, h1, lat_w, lat_h, {}, spec)

        # Stage 2: full size, a few steps from a partial sigma, no guidance; decoded.
        sigmas = list(STAGE_2_DISTILLED_SIGMA_VALUES)
        pipeline, conditioning, record2 = self._conditioned(
            image, spec, spec.width, spec.height, info, stage="stage2", scheduler="stage2"
        )
        adapters = [] if self._lora is None else [{**self._lora, "scale": 1.0}]
        info["stages"] = [
            {"name": "stage1", **record1, "steps": steps1, "weights": self._weights, "adapters": [],
             "guidance": info["guidance"], "guidance_settings": info["guidance_settings"]},
            {"name": "stage2", **record2, "steps": len(sigmas), "sigmas": sigmas, "noise_scale": sigmas[0],
             "guidance": 1.0, "weights": self._weights, "adapters": adapters,
             **({} if adapters else {"note": "no LoRA: distilled weights run stage 2 as they are"
                                     if self.model.distilled or dfr else
                                     "no stage-2 LoRA configured for this model (stage2_lora_repo, stage2_lora)"})},
        ]
        info["upsampler"] = {
            "class": type(self.upsampler).__name__,
            "scale": 2,
            "source": self._upsampler_source,
        }
        if dfr:
            stage2_args: dict[str, Any] = {**common, "use_cross_timestep": True, "keyframes_latents": keyframes,
                                           "keyframe_positions": positions}
        else:
            stage2_args = {**common, **NO_GUIDANCE_LTX2, "use_cross_timestep": guidance.get("use_cross_timestep", True)}
        if adapters:
            self.pipe.enable_lora()
            self.pipe.set_adapters([STAGE2_ADAPTER], [1.0])
        try:
            return run(
                "stage2",
                pipeline,
                record2["pipeline"],
                **stage2_args,
                **conditioning,
                width=spec.width,
                height=spec.height,
                latents=upsampled,
                audio_latents=audio_latents,
                **({} if dfr else {"num_inference_steps": len(sigmas)}),
                sigmas=sigmas,
                noise_scale=sigmas[0],
                output_type="np",
            )
        finally:
            if adapters:
                self.pipe.disable_lora()  # the next job (a preview) runs the base weights

    def _upsample(self, latents: Any, w1: int, h1: int, lat_w: int, lat_h: int, record: dict[str, Any],
                  spec: JobSpec) -> Any:
        """The latent upsampler x2 over `latents`, cropped to the full size's latent grid (said in `record`)."""
        upsampled = self.upsample_pipe(latents=latents, width=w1, height=h1, output_type="latent", return_dict=False)[0]
        if upsampled.shape[-2:] != (lat_h, lat_w):
            upsampled = upsampled[..., :lat_h, :lat_w].contiguous()
            record["note"] = (
                f"{w1}x{h1} upsampled to {2 * w1}x{2 * h1}, cropped to {spec.width}x{spec.height} "
                "(a side of the full size has an odd number of latents, or is under 128 px)"
            )
        return upsampled

    # -- image-to-video ---------------------------------------------------------

    def _conditioned(
        self,
        image: Any,
        spec: JobSpec,
        width: int,
        height: int,
        info: dict[str, Any],
        *,
        stage: str = "denoise",
        scheduler: str = "base",
    ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """The pipeline for one stage, its conditioning arguments, and the stage's record.

        No image: the resident text-to-video pipeline (stage 2: a view of it with the stage-2
        scheduler). An image: a view sharing the resident components (no second copy of any
        weights) of
        - LTX2ImageToVideoPipeline at strength 1 (its first frame is the image, frozen);
        - LTX2ConditionPipeline (`LTX2VideoCondition(index=0, strength=...)`) at strength < 1,
          since the image-to-video pipeline of Diffusers 0.42.1 has no strength parameter, and
          in stage 2, since only it re-encodes the image at full size over latents passed in
          (the image-to-video pipeline would keep the upsampled first frame, unrefined);
        - LTX-2.5 (`LTX2DFRPipeline`): the pipeline itself, with `LTX2VideoCondition(index=0)` (both stages);
        - for LTX-Video, LTXImageToVideoPipeline / LTXConditionPipeline (`LTXVideoCondition`).
        The image goes through H.264 at the model's CRF first (`ModelInfo.image_crf`: 33, LTX-2.5 18).
        """
        record: dict[str, Any] = {"width": width, "height": height}
        if image is None:
            if scheduler == "base":
                pipeline, record["pipeline"] = self.pipe, self.pipeline_class
            else:
                pipeline = self._view(self.pipeline_class, scheduler)
                record["pipeline"] = type(pipeline).__name__
            return pipeline, {}, record

        strength = float(spec.image_strength)
        fitted, fit = fit_image(image, width, height)
        if width == spec.width and height == spec.height:
            info["image_fit"] = fit
        is_ltx2 = self.model.family == "ltx2"
        crf = self.model.image_crf if is_ltx2 else 0
        if crf:
            fitted = compress_like_training(fitted, crf)
        record["image"] = {"strength": strength, "crf": crf, "fit": fit}
        info["image"] = {"strength": strength, "crf": crf}

        if is_ltx2:
            from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

            if self.pipeline_class == DFR:  # LTX-2.5: DFR takes frame conditions itself, in every pass
                pipeline = self.pipe if scheduler == "base" else self._view(DFR, scheduler)
                conditioning = {"conditions": [LTX2VideoCondition(frames=fitted, index=0, strength=strength, crf=0)]}
            elif strength >= 1.0 and stage != "stage2":
                pipeline = self._view("LTX2ImageToVideoPipeline", scheduler)
                conditioning: dict[str, Any] = {"image": fitted, "image_crf": 0}  # compressed above
            else:
                pipeline = self._view("LTX2ConditionPipeline", scheduler)
                condition = LTX2VideoCondition(frames=fitted, index=0, strength=strength, crf=0)
                conditioning = {"conditions": [condition]}
        else:
            from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

            if strength >= 1.0:
                pipeline = self._view("LTXImageToVideoPipeline", scheduler)
                conditioning = {"image": fitted}
            else:
                pipeline = self._view("LTXConditionPipeline", scheduler)
                conditioning = {"conditions": [LTXVideoCondition(image=fitted, frame_index=0, strength=strength)]}
        record["pipeline"] = type(pipeline).__name__
        return pipeline, conditioning, record

    def _view(self, class_name: str, scheduler: str = "base") -> Any:
        """A pipeline of `class_name` over the resident pipeline's own modules (built once, kept).

        `cls(**pipe.components)` registers the very same module objects: no weights are
        copied or loaded. `scheduler="stage2"` gives it a scheduler of its own that takes
        the stage-2 sigmas as they are (the resident scheduler is left alone).
        """
        key = (class_name, scheduler)
        view = self._views.get(key)
        if view is not None:
            return view
        import diffusers

        cls = getattr(diffusers, class_name)
        accepted = inspect.signature(cls.__init__).parameters
        components = {k: v for k, v in self.pipe.components.items() if k in accepted}
        if scheduler == "stage2":
            components["scheduler"] = type(self.pipe.scheduler).from_config(
                self.pipe.scheduler.config, use_dynamic_shifting=False, shift_terminal=None
            )
        view = cls(**components)
        view.set_progress_bar_config(disable=True)
        self._views[key] = view
        return view

    @staticmethod
    def _open_image(path: str) -> Any:
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)  # a phone photo's orientation, as a viewer shows it
                return im.convert("RGB")
        except Exception as e:  # the daemon probed it at admission: this is a changed or unreadable file
            raise BackendError(f"cannot read the conditioning image {path}: {type(e).__name__}: {e}") from e

    # -- the latent upsampler (production) --------------------------------------

    def _load_upsampler(self) -> None:
        """Load the latent upsampler on the first production job and keep it resident.

        Tiny: built in code. Real weights: the `latent_upsampler` folder of the model's
        repository (`LTX2LatentUpsamplerModel.from_pretrained(repo, subfolder="latent_upsampler")`
        in the Diffusers docs), found on disk only; missing -> WeightsMissing at once.
        """
        if self.upsampler is not None:
            return
        from diffusers import LTX2LatentUpsamplePipeline

        if self.model.tiny:
            from hotfolder.backends.diffusers import tiny
            upsampler, source = tiny.build_ltx2_latent_upsampler(), "built in code (tiny)"
        else:
            folder = self._upsampler_folder()
            from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

            try:
                upsampler = LTX2LatentUpsamplerModel.from_pretrained(str(folder), dtype=self.dtype)
            except (OSError, ValueError) as e:  # cut short, or not an LTX-2 upsampler
                raise self._upsampler_missing(f"{folder} could not be loaded ({type(e).__name__}: {e})") from e
            except Exception as e:
                if _is_oom(e):
                    raise BackendError(f"the latent upsampler does not fit in memory: {e}", hint=OOM_HINT) from e
                raise BackendError(f"loading the latent upsampler from {folder} failed: {type(e).__name__}: {e}") from e
            source = str(folder)
        try:
            upsampler.to(self.device)  # small (about 1 GB in bf16): on the GPU even with model offload
        except Exception as e:
            if _is_oom(e):
                raise BackendError(
                    f"the latent upsampler does not fit in {self.device} memory: {e}", hint=OOM_HINT
                ) from e
            raise BackendError(f"moving the latent upsampler to {self.device} failed: {type(e).__name__}: {e}") from e
        upsampler.eval()
        pipe = LTX2LatentUpsamplePipeline(vae=self.pipe.vae, latent_upsampler=upsampler)
        pipe.set_progress_bar_config(disable=True)
        self.upsampler, self.upsample_pipe, self._upsampler_source = upsampler, pipe, source

    def _upsampler_folder(self) -> Path:
        """The local `latent_upsampler` folder (config + safetensors), checked on disk only."""
        if self.model.local_path:
            base = Path(self.model.local_path).expanduser()
        else:
            try:
                base = weights.snapshot(self.model.diffusers_repo, self.model.revision, model_name=self.model.name)
            except WeightsMissing as e:
                raise self._upsampler_missing("the model's snapshot is not in the local Hugging Face cache") from e
        folder = base / UPSAMPLER_SUBFOLDER
        if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
            raise self._upsampler_missing(f"{folder} holds no config.json and .safetensors weights")
        return folder

    def _upsampler_missing(self, detail: str) -> WeightsMissing:
        name = self.model.name
        where = self.model.local_path or self.model.diffusers_repo
        message = (
            f'model {name}: mode = "production" needs the LTX-2 latent upsampler ({where}, folder '
            f"{UPSAMPLER_SUBFOLDER}/), which is not on this machine: {detail}"
        )
        if self.model.local_path:
            hint = f'Add the {UPSAMPLER_SUBFOLDER}/ folder of the LTX-2 weights to {where}, or use mode = "preview".'
        else:
            hint = f'Run: hotfolder models pull {name} (or use mode = "preview", which needs no upsampler)'
        return WeightsMissing(message, hint=hint)

    # -- the distilled LoRA (production's stage 2 on non-distilled weights) ----------------

    def _load_stage2_lora(self) -> None:
        """Load the distilled LoRA for stage 2 once (through peft), keep it resident but disabled.

        Only for non-distilled LTX-2 weights whose table entry names one (`stage2_lora_repo`,
        `stage2_lora`): the Diffusers LTX-2 docs' `load_lora_weights(..., adapter_name=...)`.
        Real weights: the file in the local Hugging Face cache (`weights.file`; never downloaded),
        missing -> WeightsMissing naming it and the pull command, before any denoising step.
        Tiny models: a tiny LoRA in the real file's layout, written to a temporary folder and
        loaded through the same `load_lora_weights` path.
        """
        model = self.model
        if self._lora is not None or model.distilled or self.pipeline_class == DFR or not model.stage2_lora:
            return
        if model.tiny:
            import tempfile

            from hotfolder.backends.diffusers import tiny

            self._lora_dir = tempfile.TemporaryDirectory(prefix="hotfolder-tiny-lora-")
            path = tiny.save_distilled_lora(self.pipe.transformer, Path(self._lora_dir.name), model.stage2_lora)
            source = f"built in code (tiny): {model.stage2_lora}"
        else:
            repo, name = choose.stage2_lora(model) or ("", model.stage2_lora)  # the rule `models pull` fetches by
            try:
                path = weights.file(repo, name, model_name=model.name, what="distilled LoRA for production's stage 2")
            except WeightsMissing as e:
                raise WeightsMissing(
                    f'model {model.name}: mode = "production" needs the distilled LoRA {repo}/{name} '
                    "for stage 2 (the Diffusers LTX-2 recipe), which is not in the Hugging Face cache at "
                    f"{weights.hub_cache()}",
                    hint=f'Run: hotfolder models pull {model.name} (or use mode = "preview", which needs no LoRA)',
                ) from e
            source = f"{repo}/{name}"
        try:
            self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=STAGE2_ADAPTER,
                                        local_files_only=True)
            self.pipe.disable_lora()  # resident, off: only stage 2 turns it on
        except (OSError, ValueError, KeyError) as e:  # a cut-off file, or a LoRA for another model
            self._unload_lora()
            raise BackendError(f"loading the distilled LoRA {source} into {model.name} failed: "
                               f"{type(e).__name__}: {e}") from e
        self._lora = {"name": STAGE2_ADAPTER, "source": source, "file": str(path) if not model.tiny else path.name}

    def _unload_lora(self) -> None:
        if self.pipe is not None and self._lora is not None:
            try:
                self.pipe.unload_lora_weights()
            except Exception:  # noqa: BLE001 - best effort: the pipeline is being dropped or rebuilt
                pass
        self._lora = None
        if self._lora_dir is not None:
            self._lora_dir.cleanup()
            self._lora_dir = None

    # -- close ------------------------------------------------------------------

    def close(self) -> None:
        self._unload_lora()
        self.pipe = None
        self.upsampler = self.upsample_pipe = None
        self._views.clear()
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


class _Run:
    """Runs one stage's pipeline with the step callback, and remembers which (for error messages)."""

    def __init__(self, on_step: OnStep):
        self.on_step = on_step
        self.stage = ""
        self.pipeline = ""

    def __call__(self, stage: str, pipeline: Any, name: str, **kwargs: Any) -> Any:
        self.stage, self.pipeline = stage, name
        on_step = self.on_step

        def on_step_end(_pipe: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step(stage, i + 1, _pipe.num_timesteps)
            return tensors

        return pipeline(callback_on_step_end=on_step_end, **kwargs)


def compress_like_training(image: Any, crf: int, *, timeout: float = 60.0) -> Any:
    """`image` (PIL, RGB, even sides) through one H.264 frame at `crf` and back, with the bundled ffmpeg.

    What Diffusers' `apply_image_conditioning_crf` does with PyAV (not a dependency here).
    Deterministic: one thread, the same ffmpeg.
    """
    import numpy as np
    from PIL import Image

    from hotfolder.media import ffmpeg_exe

    w, h = image.size
    base = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    encode = [*base, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "1", "-i", "-",
              "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
              "-threads", "1", "-f", "h264", "-"]  # fmt: skip
    decode = [*base, "-f", "h264", "-i", "-", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24",
              "-threads", "1", "-"]  # fmt: skip
    try:
        stream = subprocess.run(encode, input=image.tobytes(), capture_output=True, check=True, timeout=timeout)
        raw = subprocess.run(decode, input=stream.stdout, capture_output=True, check=True, timeout=timeout)
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode("utf-8", "replace").strip()[-500:]
        raise BackendError(f"re-compressing the conditioning image (H.264 CRF {crf}) failed: {err}") from e
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BackendError(f"re-compressing the conditioning image (H.264 CRF {crf}) failed: {e}") from e
    if len(raw.stdout) != w * h * 3:
        raise BackendError(f"re-compressing the conditioning image gave {len(raw.stdout)} bytes, not {w}x{h} RGB")
    return Image.fromarray(np.frombuffer(raw.stdout, np.uint8).reshape(h, w, 3))
