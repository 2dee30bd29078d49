"""The resident MLX audio-video backend: LTX-2 through mlx-video-with-audio, loaded once.

The package's own entry point (`generate_video_with_audio`) loads every
component inside the call and frees it after use: ~40 GB read per clip. This
backend calls the package's loader functions once, keeps the components in
memory, and runs the package's two-stage pipeline per job:

    text encoder (Gemma + connectors)  -> video and audio prompt embeddings
    stage 1: denoise video+audio latents at half size (8 steps)
    2x latent upsample, re-noise to sigma 0.909375
    stage 2: refine at full size (3 steps)
    video VAE decode (tiled when large) -> frames; audio VAE + vocoder -> waveform

Image-to-video conditions the first latent frame of both stages on the job's
image, encoded by the video VAE encoder (loaded on the first image job, then
resident), as the package's `generate_video_with_audio(image=...)` does.

It is built and checked against one version of the package (PINNED_VERSION),
because it calls that version's internal functions. All MLX work runs on one
thread that the backend owns: MLX's random seed and default device are
process-wide and its streams belong to the thread that made them.

Deliberate differences from the package's entry point (defects: see below):
- no video writer, no ffmpeg mux: frames and audio go back in the `Clip`;
- no download ever: weights come only from local folders and the Hugging Face
  cache (`hotfolder models pull NAME` fetches them);
- a loaded component with missing weights is an error (the package loads with
  strict=False, which keeps random weights silently);
- video RoPE positions use the job's fps (the package always uses 24; equal at
  24 fps, where the output is bit-identical to the package's entry point);
- the image is fitted by cover + centre-crop (the package stretches it to the
  target size; the same where the aspect ratios match) after its EXIF rotation.
"""

from __future__ import annotations

import gc
import json
import queue
import shutil
import struct
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hotfolder.backends import Clip, OnStep
from hotfolder.errors import BackendError, HotfolderError, JobInvalid, Problem, WeightsMissing

if TYPE_CHECKING:
    from hotfolder.config import Config, ModelInfo
    from hotfolder.job.spec import JobSpec

PACKAGE = "mlx-video-with-audio"
PINNED_VERSION = "0.1.37"
DEFAULT_TEXT_ENCODER = "mlx-community/gemma-3-12b-it-bf16"  # the package's default for MLX-format models
AUDIO_PEAK = 0.95  # the package's WAV writer peak-normalises to this; we match it
MAX_PROMPT_TOKENS = 1024  # as the package's entry point
# Upsampler weights the package downloads when a model folder lacks them (LTX-2.3 split repos).
UPSAMPLER_FALLBACK = {
    False: ("Lightricks/LTX-2", "ltx-2-spatial-upscaler-x2-1.0.safetensors"),
    True: ("Lightricks/LTX-2.3", "ltx-2.3-spatial-upscaler-x2-1.1.safetensors"),
}
SPLIT_FILES = ("transformer", "connector", "vae_decoder", "audio_vae", "vocoder")

# Defects worked around here (mlx-video-with-audio 0.1.37, mlx 0.32.4):
# - rms_norm: mlx_video.utils.rms_norm is compiled shapeless with a weight built from the
#   first call's width; the transformer calls it at two widths (video, audio), which crashes
#   on the CPU. Replaced by mx.fast.rms_norm(x, None, eps) (apply_rms_norm_fix).
# - writer: its OpenCV 'avc1' writer fails silently on Linux and its ffmpeg mux uses
#   -shortest from PATH. Never used: the Clip goes to the project's media code.
# - strict=False: every loader keeps missing weights random. Checked (_WeightAudit).
# - downloads: loaders fall back to the network. Never reached (_resolve).
# - mlx: a thread that used MLX must call mx.clear_streams() before it ends (_MlxThread).


def _package_problem() -> str | None:
    """Checked when this module is imported (cheap: no MLX import)."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return f"{PACKAGE} is not installed (the MLX backend needs {PACKAGE}=={PINNED_VERSION})."
    if version != PINNED_VERSION:
        return (
            f"{PACKAGE} {version} is installed, but hotfolder's MLX backend is built and tested against "
            f"{PINNED_VERSION} only (it calls the package's internal functions). "
            f"Install it with: pip install '{PACKAGE}=={PINNED_VERSION}'"
        )
    return None


PACKAGE_PROBLEM = _package_problem()


def _require_package() -> None:
    if PACKAGE_PROBLEM:
        raise BackendError(PACKAGE_PROBLEM, hint=f"pip install '{PACKAGE}=={PINNED_VERSION}'")


# --- what the lead's `auto` and `doctor` need ----------------------------------


def available() -> tuple[bool, str]:
    """Whether the MLX backend can run here, and why (or why not)."""
    if PACKAGE_PROBLEM:
        return False, PACKAGE_PROBLEM
    try:
        import mlx.core as mx
        import mlx_video.generate_av  # noqa: F401
    except Exception as e:  # a missing libmlx raises OSError/ImportError, bad wheels anything
        return False, f"mlx does not import ({type(e).__name__}: {e}). On Linux install 'mlx[cpu]', on macOS 'mlx'."
    version = metadata.version("mlx")
    if mx.metal.is_available():
        return True, f"mlx {version} on the Apple GPU (Metal), {PACKAGE} {PINNED_VERSION}"
    return True, f"mlx {version} on the CPU only: works, but practical only for the tiny model"


def weights_present(model: ModelInfo, config: Config | None = None) -> bool:
    """Whether everything `model` needs is on this machine (never downloads, never slow)."""
    if model.tiny:
        return True  # built locally on first use
    try:
        _resolve(model)
    except (WeightsMissing, BackendError):
        return False
    return True


def is_model_folder(path: Path | str) -> bool:
    """Whether a local folder holds an MLX LTX-2 model (unified or split), not a Diffusers one."""
    return _model_dir_problem(Path(path).expanduser()) is None


def create(model: ModelInfo, config: Config) -> MlxBackend:
    """Build (not load) the backend for `model`."""
    _require_package()
    if model.family != "ltx2" or not (model.tiny or model.local_path or model.mlx_repo):
        raise BackendError(
            f"model {model.name} has no MLX audio-video weights (MLX runs LTX-2 models only).",
            hint="use backend = diffusers for this model",
        )
    return MlxBackend(model, config)


# --- the backend ---------------------------------------------------------------


@dataclass(frozen=True)
class _Paths:
    """Where a model's parts are on disk, resolved without network."""

    model_dir: Path
    text_encoder_dir: Path
    upsampler: Path | None  # a separate upsampler file when the model folder lacks one
    split: bool
    quantized: bool
    tiny: bool


@dataclass
class _Parts:
    """The resident components."""

    paths: _Paths
    text_encoder: Any  # None when it is loaded per job
    transformer: Any
    upsampler: Any
    vae_decoder: Any
    audio_decoder: Any
    vocoder: Any
    draws_between_stages: int | None  # random draws the package makes while loading upsampler+VAE
    resident_bytes: int
    vae_encoder: Any = None  # image-to-video only: loaded on the first image job, then resident


class MlxBackend:
    """LTX-2 resident in memory: load once, generate many, unload when idle.

    Config attributes read when present (defaults in brackets):
    `mlx_keep_text_encoder` [True]: keep Gemma resident; False loads it per job
    (slower jobs, ~24 GB less resident memory with the real model).
    `mlx_memory_limit_gb`, `mlx_cache_limit_gb` [unset]: mx.set_memory_limit /
    mx.set_cache_limit. The tiny model is built in a private temporary folder
    per load and removed on unload.
    """

    name = "mlx"

    def __init__(self, model: ModelInfo, config: Config):
        _require_package()
        import mlx.core as mx

        self.model = model
        self.config = config
        self.device = "gpu" if mx.metal.is_available() else "cpu"
        self.keep_text_encoder = bool(getattr(config, "mlx_keep_text_encoder", True))
        self.memory_limit_gb = getattr(config, "mlx_memory_limit_gb", None)
        self.cache_limit_gb = getattr(config, "mlx_cache_limit_gb", None)
        self.load_s: float | None = None
        self._parts: _Parts | None = None
        self._tiny = _TinyFolder()
        self._thread = _MlxThread()
        # At interpreter exit even without close(): stop the thread (clearing its MLX streams)
        # and remove the tiny model's folder.
        self._finalizer = weakref.finalize(self, _shut_down, self._thread, self._tiny)

    # The public methods run their work on the backend's own MLX thread.

    def load(self) -> None:
        """Load every component (once); raises WeightsMissing when they are not on disk."""
        self._thread.call(self._load)

    def generate(self, spec: JobSpec, on_step: OnStep) -> Clip:
        """One clip; loads first if needed. Lets Interrupted from on_step through."""
        return self._thread.call(self._generate, spec, on_step)

    def unload(self) -> None:
        """Free the model (idle unload); the next job loads it again."""
        if self._thread.alive:
            self._thread.call(self._unload)

    def close(self) -> None:
        """Free the model and stop the MLX thread (idempotent)."""
        self.unload()
        self._finalizer()

    @property
    def loaded(self) -> bool:
        return self._parts is not None

    # --- load ---------------------------------------------------------------

    def _load(self) -> None:
        if self._parts is not None:
            return
        try:
            self._load_parts()
        except HotfolderError:
            self._release()
            raise
        except Exception as e:  # MLX and the package raise plain exceptions
            self._release()
            raise BackendError(
                f"loading model {self.model.name} failed: {type(e).__name__}: {e}", hint=_memory_hint(e)
            ) from e

    def _load_parts(self) -> None:
        import mlx.core as mx
        from mlx_video.generate_av import load_audio_decoder, load_vocoder
        from mlx_video.models.ltx.upsampler import load_upsampler
        from mlx_video.models.ltx.video_vae.decoder import load_vae_decoder

        start = time.perf_counter()
        tiny_dir = self._tiny.build() if self.model.tiny else None
        paths = _resolve(self.model, tiny_dir=tiny_dir)  # first: missing weights fail fast
        mx.set_default_device(mx.gpu if self.device == "gpu" else mx.cpu)
        if self.memory_limit_gb:
            mx.set_memory_limit(int(float(self.memory_limit_gb) * 2**30))
        if self.cache_limit_gb is not None:
            mx.set_cache_limit(int(float(self.cache_limit_gb) * 2**30))
        apply_rms_norm_fix()
        name = self.model.name
        model_dir = paths.model_dir

        # 1. Text encoder (Gemma + connectors), unless loaded per job.
        text_encoder = _load_text_encoder(paths, name) if self.keep_text_encoder else None
        # 2. Transformer: the package's config block, built here (it hard-codes 48 layers).
        transformer = _load_transformer(paths, name)
        # 3. Upsampler and video VAE decoder. The package's entry point builds these between
        #    the two stages and the random draws of building them shift the stage-2 noise;
        #    count them so a job with a given seed reproduces the entry point's output.
        with _WeightAudit() as audit:
            key_before = _rng_key()
            upsampler = load_upsampler(
                str(paths.upsampler or model_dir),
                use_unified=paths.upsampler is None,  # _resolve made sure no download is needed
            )
            vae_decoder = load_vae_decoder(str(model_dir), None, use_unified=True)
            draws = _count_draws(key_before, _rng_key())
            # 4. Audio VAE decoder and vocoder.
            audio_decoder = load_audio_decoder(model_dir, use_unified=True)
            vocoder = load_vocoder(model_dir, use_unified=True)
        audit.check(name, "upsampler", upsampler)
        audit.check(name, "video VAE decoder", vae_decoder)
        audit.check(name, "audio VAE decoder", audio_decoder)
        audit.check(name, "vocoder", vocoder)

        parts = [text_encoder, transformer, upsampler, vae_decoder, audio_decoder, vocoder]
        _eval_in_chunks([p.parameters() for p in parts if p is not None])
        self._parts = _Parts(
            paths=paths,
            text_encoder=text_encoder,
            transformer=transformer,
            upsampler=upsampler,
            vae_decoder=vae_decoder,
            audio_decoder=audio_decoder,
            vocoder=vocoder,
            draws_between_stages=draws,
            resident_bytes=mx.get_active_memory(),
        )
        self.load_s = time.perf_counter() - start

    def _unload(self) -> None:
        self._release()
        self._tiny.remove()

    def _release(self) -> None:
        import mlx.core as mx

        self._parts = None
        gc.collect()
        mx.clear_cache()

    def _ensure_vae_encoder(self, p: _Parts) -> float:
        """Load the video VAE encoder once (first image job); returns the seconds it took."""
        if p.vae_encoder is not None:
            return 0.0
        start = time.perf_counter()
        p.vae_encoder = _load_vae_encoder(p.paths, self.model.name)
        p.resident_bytes += _tree_bytes(p.vae_encoder.parameters())
        return time.perf_counter() - start

    # --- generate -----------------------------------------------------------

    def _generate(self, spec: JobSpec, on_step: OnStep | None) -> Clip:
        import mlx.core as mx

        _check_spec(spec)
        image = open_image(spec) if getattr(spec, "image", None) else None  # a bad file fails before loading
        load_s = 0.0
        if self._parts is None:
            self._load()
            load_s = self.load_s or 0.0
        mx.reset_peak_memory()
        start = time.perf_counter()
        try:
            clip = self._pipeline(self._parts, spec, on_step or (lambda *_: None), image)
        except HotfolderError:  # Interrupted included
            raise
        except Exception as e:
            raise BackendError(f"MLX generation failed: {type(e).__name__}: {e}", hint=_memory_hint(e)) from e
        finally:
            mx.clear_cache()
        clip.info.update(
            load_s=round(load_s, 3),
            generate_s=round(time.perf_counter() - start, 3),
            peak_memory_bytes=int(mx.get_peak_memory()),
            resident_memory_bytes=self._parts.resident_bytes,
        )
        return clip

    def _pipeline(self, p: _Parts, spec: JobSpec, on_step: OnStep, image=None) -> Clip:
        import mlx.core as mx
        from mlx_video.generate_av import (
            AUDIO_LATENT_CHANNELS,
            AUDIO_MEL_BINS,
            DEFAULT_STAGE_1_SIGMAS,
            DEFAULT_STAGE_2_SIGMAS,
            compute_audio_frames,
            create_audio_position_grid,
            create_video_position_grid,
        )
        from mlx_video.models.ltx.upsampler import upsample_latents
        from mlx_video.models.ltx.video_vae.tiling import TilingConfig

        height, width, frames, fps = spec.height, spec.width, spec.num_frames, float(spec.fps)
        latent_frames = 1 + (frames - 1) // 8
        audio_frames = compute_audio_frames(frames, fps)

        # 1. Prompt -> video and audio embeddings (guidance is distilled in: no negative prompt).
        mx.random.seed(spec.seed)
        encoder = p.text_encoder or _load_text_encoder(p.paths, self.model.name)
        video_emb, audio_emb, mask = encoder(spec.prompt, max_length=MAX_PROMPT_TOKENS)
        mx.eval(video_emb, audio_emb, mask)
        if p.text_encoder is None:
            del encoder
            gc.collect()
            mx.clear_cache()
        dtype = video_emb.dtype

        # 1b. Image-to-video: the image fitted and encoded at both stages' sizes (the package
        #     does this before seeding stage 1, so the encoder's first load draws nothing that counts).
        image_info: dict[str, Any] = {}
        latents1 = latents2 = None
        if image is not None:
            encoder_load_s = self._ensure_vae_encoder(p)
            latents1, _ = _encode_image(p.vae_encoder, image, width // 2, height // 2, dtype)  # same crop box
            latents2, fit = _encode_image(p.vae_encoder, image, width, height, dtype)
            image_info = {
                "image_fit": fit,
                "image_strength": float(spec.image_strength),
                "image_latent_frame": 0,
                "vae_encoder_load_s": round(encoder_load_s, 3),
            }

        # 2. Stage 1 at half size (the package's seed and draw order): pure noise, or with
        #    the image in the first latent frame, noised by (1 - strength).
        mx.random.seed(spec.seed)
        video_pos = create_video_position_grid(1, latent_frames, height // 64, width // 64, fps=fps)
        audio_pos = create_audio_position_grid(1, audio_frames)
        shape1 = (1, 128, latent_frames, height // 64, width // 64)
        state1 = None
        if latents1 is not None:
            zeros = mx.zeros(shape1, dtype=dtype)
            state1 = _condition(zeros, mx.zeros(shape1, dtype=dtype), latents1, spec.image_strength, dtype)
            video = _noise_state(state1, mx.random.normal(shape1).astype(dtype), DEFAULT_STAGE_1_SIGMAS[0], dtype)
        else:
            video = mx.random.normal(shape1).astype(dtype)
        audio = mx.random.normal((1, AUDIO_LATENT_CHANNELS, audio_frames, AUDIO_MEL_BINS)).astype(dtype)
        embeddings = (video_emb, audio_emb)
        video, audio = _denoise(p.transformer, "stage1", video, audio, video_pos, audio_pos, embeddings,
                                DEFAULT_STAGE_1_SIGMAS, on_step, state1)  # fmt: skip

        # 3. Upsample the video latents 2x, then re-noise both to the first stage-2 sigma.
        _skip_draws(p.draws_between_stages)
        video = upsample_latents(video, p.upsampler, p.vae_decoder.latents_mean, p.vae_decoder.latents_std)
        mx.eval(video)
        video_pos = create_video_position_grid(1, latent_frames, height // 32, width // 32, fps=fps)
        noise_scale = mx.array(DEFAULT_STAGE_2_SIGMAS[0], dtype=dtype)
        keep = mx.array(1.0, dtype=dtype) - noise_scale
        state2 = None
        if latents2 is not None:  # the image's frame replaces the upsampled one, noised by (1 - strength)
            state2 = _condition(video, mx.zeros_like(video), latents2, spec.image_strength, dtype)
            video_noise = mx.random.normal(video.shape).astype(dtype)
            video = _noise_state(state2, video_noise, DEFAULT_STAGE_2_SIGMAS[0], dtype)
        else:
            video_noise = mx.random.normal(video.shape).astype(dtype)
            video = video_noise * noise_scale + video * keep
        audio_noise = mx.random.normal(audio.shape).astype(dtype)
        audio = audio_noise * noise_scale + audio * keep
        mx.eval(video, audio)

        # 4. Stage 2: refine at full size.
        video, audio = _denoise(p.transformer, "stage2", video, audio, video_pos, audio_pos, embeddings,
                                DEFAULT_STAGE_2_SIGMAS, on_step, state2)  # fmt: skip

        # 5. Decode the video, tiled when large (the package's "auto").
        tiling = TilingConfig.auto(height, width, frames)
        decoded = p.vae_decoder.decode_tiled(video, tiling_config=tiling) if tiling else p.vae_decoder(video)
        decoded = mx.transpose(mx.squeeze(decoded, axis=0), (1, 2, 3, 0))
        pixels = np.array((mx.clip((decoded + 1.0) / 2.0, 0.0, 1.0) * 255).astype(mx.uint8))
        del decoded

        # 6. Decode the audio: latents -> mel spectrogram -> waveform.
        audio_np, sample_rate, fitted = None, None, 0
        if spec.generate_audio and self.model.has_audio:
            waveform = p.vocoder(p.audio_decoder(audio))
            mx.eval(waveform)
            rate = getattr(p.vocoder, "output_sampling_rate", getattr(p.vocoder, "output_sample_rate", 24000))
            sample_rate = int(rate)
            audio_np, fitted = fit_audio(np.array(waveform.astype(mx.float32))[0], frames / fps, sample_rate)

        steps1, steps2 = len(DEFAULT_STAGE_1_SIGMAS) - 1, len(DEFAULT_STAGE_2_SIGMAS) - 1
        info: dict[str, Any] = {
            "backend": self.name,
            "model": self.model.label,
            "device": self.device,
            "package": f"{PACKAGE} {PINNED_VERSION}",
            "mlx": metadata.version("mlx"),
            "layout": "split" if p.paths.split else "unified",
            "quantized": p.paths.quantized,
            "stages": [
                {"name": "stage1", "width": width // 2, "height": height // 2, "steps": steps1},
                {"name": "stage2", "width": width, "height": height, "steps": steps2},
            ],
            "steps": steps1 + steps2,
            "steps_requested": spec.steps,
            "steps_note": "the distilled MLX pipeline runs a fixed 8 + 3 step schedule; steps is not used",
            "guidance": 1.0,
            "negative_prompt_used": False,
            "seed": spec.seed,
            "tiling": _describe_tiling(tiling),
            "text_encoder_resident": p.text_encoder is not None,
            "rms_norm_workaround": True,
            "audio_fit_samples": fitted,
            "audio_normalized_peak": AUDIO_PEAK if audio_np is not None else None,
            "image_to_video": image is not None,
            **image_info,
        }
        if p.paths.tiny:
            from hotfolder.backends.mlx.tiny import LABEL

            info["tiny"] = True
            info["warning"] = LABEL
        return Clip(frames=pixels, fps=spec.fps, audio=audio_np, sample_rate=sample_rate, info=info)

class _TinyFolder:
    """The tiny model's weights: built into a private temporary folder, removed on unload."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def build(self) -> Path:
        if self.path is None:
            from hotfolder.backends.mlx import tiny as tiny_mlx
            self.path = tiny_mlx.build(Path(tempfile.mkdtemp(prefix="hotfolder-tiny-mlx-")))
        return self.path

    def remove(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def _shut_down(thread: _MlxThread, tiny: _TinyFolder) -> None:
    thread.stop()
    tiny.remove()


class _MlxThread:
    """The one thread that runs all of a backend's MLX work.

    MLX's seed and default device are process-wide and its streams belong to the
    thread that made them; a thread that used MLX must call `mx.clear_streams()`
    before it ends, or the process may abort at exit ("terminate called without
    an active exception", mlx 0.32 on Linux). Errors come back to the caller as
    raised exceptions (Interrupted included).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hotfolder-mlx", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn, *args):
        if threading.current_thread() is self._thread:
            return fn(*args)
        if not self.alive:
            raise BackendError("the MLX backend was closed")
        done: Future = Future()
        self._jobs.put((fn, args, done))
        return done.result()

    def stop(self) -> None:
        if self.alive:
            self._jobs.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, done = job
            try:
                done.set_result(fn(*args))
            except BaseException as e:  # Interrupted included: re-raised in the caller
                done.set_exception(e)
            del job, fn, args, done
        import mlx.core as mx

        gc.collect()
        mx.clear_streams()


# --- pieces -----------------------------------------------------------------


def _denoise(transformer, stage: str, video, audio, video_pos, audio_pos, embeddings, sigmas, on_step: OnStep,
             state=None):  # fmt: skip
    """The package's denoise loop, one step per call so that progress and cancel work.

    `denoise_av` keeps no state between steps on this path (no gradient
    estimation), so calling it on each pair of sigmas is the same loop. With
    image conditioning (`state`: a LatentState), `denoise_av` starts from
    `state.latent`, so each call gets the current latents in a copy of it.
    It still prints its own "STAGE:n:STEP:1:1" line to stderr per call.
    """
    from mlx_video.conditioning.latent import LatentState
    from mlx_video.generate_av import denoise_av

    total = len(sigmas) - 1
    for i in range(total):
        step_state = None
        if state is not None:
            step_state = LatentState(latent=video, clean_latent=state.clean_latent, denoise_mask=state.denoise_mask)
        video, audio = denoise_av(
            video,
            audio,
            video_pos,
            audio_pos,
            embeddings[0],
            embeddings[1],
            None,  # no negative prompt: the distilled models run without guidance
            None,
            transformer,
            sigmas[i : i + 2],
            verbose=False,
            video_state=step_state,
            stage=1 if stage == "stage1" else 2,
            cfg_scale=1.0,
            use_legacy_euler=True,
        )
        on_step(stage, i + 1, total)
    return video, audio


def _condition(latent, clean, image_latent, strength: float, dtype):
    """The package's LatentState + apply_conditioning for one image at latent frame 0."""
    import mlx.core as mx
    from mlx_video.conditioning import VideoConditionByLatentIndex, apply_conditioning
    from mlx_video.conditioning.latent import LatentState

    frames = latent.shape[2]
    state = LatentState(latent=latent, clean_latent=clean, denoise_mask=mx.ones((1, 1, frames, 1, 1), dtype=dtype))
    condition = VideoConditionByLatentIndex(latent=image_latent, frame_idx=min(0, frames - 1), strength=float(strength))
    return apply_conditioning(state, [condition])


def _noise_state(state, noise, sigma: float, dtype):
    """The package's noiser: conditioned frames keep (1 - sigma * mask) of the image latent."""
    import mlx.core as mx

    scaled_mask = state.denoise_mask * mx.array(sigma, dtype=dtype)
    latent = noise * scaled_mask + state.latent * (mx.array(1.0, dtype=dtype) - scaled_mask)
    mx.eval(latent)
    return latent


def _check_spec(spec: JobSpec) -> None:
    problems = []
    if getattr(spec, "image", None):
        strength = getattr(spec, "image_strength", 1.0)
        if not 0 < strength <= 1:
            problems.append(Problem(f"image.strength = {strength}: give a number greater than 0 and at most 1",
                                    key="image.strength", value=strength))  # fmt: skip
    for key in ("width", "height"):
        value = getattr(spec, key)
        if value <= 0 or value % 64:
            problems.append(Problem(f"{key} = {value}: the MLX backend needs a multiple of 64", key=key, value=value))
    if spec.num_frames < 1 or spec.num_frames % 8 != 1:
        frames = spec.num_frames
        problems.append(Problem(f"num_frames = {frames}: the MLX backend needs 8k+1", key="num_frames", value=frames))
    if problems:
        raise JobInvalid(spec.source, problems)


def open_image(spec: JobSpec):
    """The job's image as an RGB Pillow image, EXIF rotation applied; JobInvalid if unreadable."""
    from PIL import Image, ImageOps

    path = Path(spec.image)
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)  # a copy, upright as a viewer shows it
            image = image.convert("RGB")  # decodes the whole file: a truncated one fails here
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # missing, truncated, not an image
        raise JobInvalid(
            spec.source, [Problem(f"image {path.name} cannot be read as an image: {e}", key="image.file")]
        ) from e
    return image


def cover_crop_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centred box of `size` (w, h) with the aspect ratio of `target` (w, h): cover, then crop."""
    w, h = size
    tw, th = target
    if w * th > tw * h:  # wider than the target: keep the full height
        cw = min(w, max(1, round(h * tw / th)))
        left = (w - cw) // 2
        return left, 0, left + cw, h
    ch = min(h, max(1, round(w * th / tw)))
    top = (h - ch) // 2
    return 0, top, w, top + ch


def fit_image(image, width: int, height: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Cover `width` x `height` and centre-crop (Lanczos, from the original pixels).

    With the target's aspect ratio the box is the whole image, and this is the
    package's own `load_image` resize. Returns uint8 (height, width, 3) and what
    was done, for the clip's metadata.
    """
    from PIL import Image

    box = cover_crop_box(image.size, (width, height))
    fitted = image.resize((width, height), Image.Resampling.LANCZOS, box=box)
    info = {
        "method": "cover+centre-crop",
        "original": [image.size[0], image.size[1]],
        "crop_box": list(box),  # left, top, right, bottom in the original's pixels
        "target": [width, height],
    }
    return np.asarray(fitted, dtype=np.uint8), info


def _encode_image(encoder, image, width: int, height: int, dtype):
    """Image -> one normalised latent frame (1, 128, 1, height/32, width/32), as the package prepares it."""
    import mlx.core as mx
    from mlx_video.utils import prepare_image_for_encoding

    pixels, info = fit_image(image, width, height)
    tensor = mx.array(pixels.astype(np.float32) / 255.0, dtype=dtype)  # as mlx_video.utils.load_image
    latent = encoder(prepare_image_for_encoding(tensor, height, width, dtype=dtype))
    mx.eval(latent)
    return latent, info


def _load_vae_encoder(paths: _Paths, name: str):
    """The package's video VAE encoder for image-to-video; WeightsMissing when the model lacks it."""
    from mlx_video.models.ltx.video_vae.encoder import load_vae_encoder

    model_dir = paths.model_dir
    single = model_dir / "model.safetensors"
    if single.is_file():
        present = any(k.startswith("vae_encoder.") for k in _safetensors_keys(single))
    else:
        present = (model_dir / "vae_encoder.safetensors").is_file()
    if not present:
        where = "vae_encoder.* tensors in model.safetensors" if single.is_file() else "vae_encoder.safetensors"
        raise WeightsMissing(
            f"model {name}: image-to-video needs the video VAE encoder, and {model_dir} has no {where}.",
            hint=f"The download may be incomplete. Run: hotfolder models pull {name}",
        )
    with _WeightAudit() as audit:
        encoder = load_vae_encoder(str(model_dir), use_unified=True)  # as the package's entry point
    audit.check(name, "video VAE encoder", encoder)
    _eval_in_chunks([encoder.parameters()])
    return encoder


def _tree_bytes(tree) -> int:
    from mlx.utils import tree_flatten

    return sum(a.nbytes for _, a in tree_flatten(tree))


def _memory_hint(error: Exception) -> str | None:
    text = str(error).lower()
    if "memory" in text or "allocat" in text:
        return "out of memory: try mode = preview or a shorter duration, or set mlx_keep_text_encoder = false"
    return None


def _describe_tiling(tiling) -> str | None:
    if tiling is None:
        return None
    parts = []
    if tiling.spatial_config is not None:
        c = tiling.spatial_config
        parts.append(f"spatial {c.tile_size_in_pixels}px tiles, {c.tile_overlap_in_pixels}px overlap")
    if tiling.temporal_config is not None:
        c = tiling.temporal_config
        parts.append(f"temporal {c.tile_size_in_frames}-frame tiles, {c.tile_overlap_in_frames} overlap")
    return "; ".join(parts) or None


def fit_audio(waveform: np.ndarray, duration: float, sample_rate: int) -> tuple[np.ndarray, int]:
    """Peak-normalise as the package's writer does, then fit to the video's length (media.fit_audio).

    The vocoder yields (4 * latents - 3) mel hops of audio, a few ms short of the
    video. Returns the audio and the number of samples added (negative: removed).
    """
    from hotfolder.media import fit_audio as fit_to

    audio = np.asarray(waveform, dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 1e-6:
        audio = audio * np.float32(AUDIO_PEAK / peak)
    target = round(duration * sample_rate)
    delta = target - audio.shape[1]
    return np.ascontiguousarray(np.clip(fit_to(audio, target), -1.0, 1.0)), delta


def _resolve(model: ModelInfo, *, tiny_dir: Path | None = None) -> _Paths:
    """Find the model's folders without network; WeightsMissing (fast) when absent."""
    from hotfolder.backends.mlx import tiny as tiny_mlx
    hint = f"Run: hotfolder models pull {model.name}"
    if model.tiny:
        assert tiny_dir is not None, "the backend builds the tiny model before resolving it"
        model_dir, repo = tiny_dir, str(tiny_dir)
    elif model.local_path:
        model_dir = Path(model.local_path).expanduser()
        repo = str(model_dir)
        if not model_dir.is_dir():
            raise WeightsMissing(f"model folder {model_dir} does not exist.", hint="check the path given as model")
    else:
        repo = model.mlx_repo or ""
        model_dir = _hf_snapshot(repo, model.revision, model.name, hint)

    problem = _model_dir_problem(model_dir)
    if problem:
        raise WeightsMissing(f"model {model.name}: {problem}", hint=hint)
    split = not (model_dir / "model.safetensors").is_file()
    manifest = _read_json(model_dir / "split_model.json")
    quantized = bool(manifest.get("quantized", False))

    if (model_dir / "text_encoder").is_dir():
        text_encoder_dir = model_dir / "text_encoder"
    else:
        te_repo = model.mlx_text_encoder_repo or DEFAULT_TEXT_ENCODER
        text_encoder_dir = _hf_snapshot(te_repo, None, model.name, hint)
    te_problem = _text_encoder_problem(text_encoder_dir, model_dir)
    if te_problem:
        raise WeightsMissing(f"model {model.name}: text encoder {text_encoder_dir}: {te_problem}", hint=hint)

    upsampler = None
    if not _has_upsampler(model_dir):
        from mlx_video.generate_av import _is_ltx_23_model

        fallback_repo, filename = UPSAMPLER_FALLBACK[_is_ltx_23_model(repo, model_dir)]
        upsampler = _hf_file(fallback_repo, filename, model.name, hint)
    return _Paths(
        model_dir=model_dir,
        text_encoder_dir=text_encoder_dir,
        upsampler=upsampler,
        split=split,
        quantized=quantized,
        tiny=bool(_read_json(model_dir / tiny_mlx.ARCH_FILE).get("tiny")),
    )


def _hf_snapshot(repo: str, revision: str | None, name: str, hint: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo, revision=revision, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, or a broken cache
        raise WeightsMissing(
            f"weights for model {name} are not on this machine ({repo} is not in the Hugging Face cache).", hint=hint
        ) from e


def _hf_file(repo: str, filename: str, name: str, hint: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, local_files_only=True))
    except Exception as e:
        raise WeightsMissing(
            f"model {name} needs the spatial upsampler {repo}/{filename}, which is not in the Hugging Face cache.",
            hint=hint,
        ) from e


def _model_dir_problem(model_dir: Path) -> str | None:
    if not (model_dir / "config.json").is_file():
        return f"{model_dir} has no config.json: not an MLX LTX-2 model folder (or an incomplete download)."
    if (model_dir / "model.safetensors").is_file():
        return None
    missing = [f"{part}.safetensors" for part in SPLIT_FILES if not (model_dir / f"{part}.safetensors").is_file()]
    if missing:
        return f"{model_dir} has neither model.safetensors nor {', '.join(missing)}."
    return None


def _text_encoder_problem(text_encoder_dir: Path, model_dir: Path) -> str | None:
    if not (text_encoder_dir / "config.json").is_file():
        return "no config.json"
    if not any(text_encoder_dir.glob("*.safetensors")):
        return "no *.safetensors weights"
    tokenizer_dirs = (model_dir / "tokenizer", text_encoder_dir)
    if not any((d / f).is_file() for d in tokenizer_dirs for f in ("tokenizer.json", "tokenizer.model")):
        return "no tokenizer (tokenizer.json or tokenizer.model)"
    return None


def _has_upsampler(model_dir: Path) -> bool:
    if (model_dir / "upsampler.safetensors").is_file():
        return True
    single = model_dir / "model.safetensors"
    return single.is_file() and any(k.startswith("upsampler.") for k in _safetensors_keys(single))


def _safetensors_keys(path: Path) -> list[str]:
    """Tensor names from the header only (cheap even for a 42 GB file)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return [k for k in header if k != "__metadata__"]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _load_text_encoder(paths: _Paths, name: str):
    import mlx.core as mx
    from mlx_video.models.ltx.text_encoder import LTX2TextEncoder

    with _WeightAudit() as audit:
        encoder = LTX2TextEncoder()
        encoder.load(model_path=paths.model_dir, text_encoder_path=str(paths.text_encoder_dir), use_unified=True)
    audit.check(name, "text encoder", encoder)
    mx.eval(encoder.parameters())
    return encoder


def transformer_config(model_dir: Path) -> dict[str, Any]:
    """The package's transformer config for an MLX-format model (generate_av.py:1493-1553).

    Sizes the package hard-codes (48 layers, 32 x 128 heads) can be overridden by
    `hotfolder_arch.json` in the model folder, which only the tiny model has.
    """
    from mlx_video.generate_av import AUDIO_LATENT_CHANNELS, AUDIO_MEL_BINS
    from mlx_video.models.ltx.config import LTXModelType, LTXRopeType

    from hotfolder.backends.mlx import tiny as tiny_mlx
    t_cfg = _read_json(model_dir / "embedded_config.json").get("transformer", {})
    first = t_cfg.get("caption_projection_first_linear", True)
    second = t_cfg.get("caption_projection_second_linear", True)
    gated = bool(t_cfg.get("apply_gated_attention", False))
    if not first and not second:
        caption = t_cfg.get("connector_num_attention_heads", 32) * t_cfg.get("connector_attention_head_dim", 128)
        audio_caption = t_cfg.get("audio_connector_num_attention_heads", 32) * t_cfg.get(
            "audio_connector_attention_head_dim", 64
        )
    else:
        caption = t_cfg.get("caption_channels", 3840)
        audio_caption = t_cfg.get("audio_caption_channels", 3840)
    cfg: dict[str, Any] = dict(
        model_type=LTXModelType.AudioVideo,
        num_attention_heads=32,
        attention_head_dim=128,
        in_channels=128,
        out_channels=128,
        num_layers=48,
        cross_attention_dim=4096,
        caption_channels=caption,
        caption_projection_first_linear=first,
        caption_projection_second_linear=second,
        adaln_embedding_coefficient=9 if gated else 6,
        apply_gated_attention=gated,
        audio_num_attention_heads=32,
        audio_attention_head_dim=64,
        audio_in_channels=AUDIO_LATENT_CHANNELS * AUDIO_MEL_BINS,
        audio_out_channels=AUDIO_LATENT_CHANNELS * AUDIO_MEL_BINS,
        audio_cross_attention_dim=2048,
        audio_caption_channels=audio_caption,
        rope_type=LTXRopeType.SPLIT,
        double_precision_rope=True,
        positional_embedding_theta=10000.0,
        positional_embedding_max_pos=[20, 2048, 2048],
        audio_positional_embedding_max_pos=[20],
        use_middle_indices_grid=True,
        timestep_scale_multiplier=1000,
    )
    cfg.update(_read_json(model_dir / tiny_mlx.ARCH_FILE).get("transformer", {}))
    return cfg


def _load_transformer(paths: _Paths, name: str):
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_video.generate_av import load_unified_weights
    from mlx_video.models.ltx.config import LTXModelConfig
    from mlx_video.models.ltx.ltx import LTXModel

    weights = load_unified_weights(paths.model_dir, "transformer.")
    model = LTXModel(LTXModelConfig(**transformer_config(paths.model_dir)))
    if paths.quantized:  # as the package: quantize the Linear layers that have scales
        manifest = _read_json(paths.model_dir / "split_model.json")
        quantized = {k.rsplit(".", 1)[0] for k in weights if k.endswith(".scales")}
        nn.quantize(
            model,
            group_size=manifest.get("quantization_group_size", 64),
            bits=manifest.get("quantization_bits", 4),
            class_predicate=lambda path, module: isinstance(module, nn.Linear) and path in quantized,
        )
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(expected.keys() - weights.keys())
    wrong = sorted(k for k in expected.keys() & weights.keys() if tuple(weights[k].shape) != tuple(expected[k].shape))
    if missing or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} of {len(expected)} parameters missing (e.g. {', '.join(missing[:3])})")
        if wrong:
            k = wrong[0]
            got, want = tuple(weights[k].shape), tuple(expected[k].shape)
            detail.append(f"{len(wrong)} with another shape (e.g. {k}: {got} instead of {want})")
        raise _mismatch(name, "transformer", "; ".join(detail))
    model.load_weights(list(weights.items()), strict=False)
    return model


def _mismatch(name: str, component: str, detail: str) -> WeightsMissing:
    return WeightsMissing(
        f"model {name}: the {component} weights do not match what {PACKAGE} {PINNED_VERSION} builds: {detail}.",
        hint=f"The download may be incomplete or of another version. Run: hotfolder models pull {name}",
    )


class _WeightAudit:
    """Records what the package's loaders read from disk, to find parameters left random.

    The loaders call `load_weights(strict=False)` and set a few arrays by hand
    (latent statistics, registers). While active, this notes the keys given to
    `load_weights` and the arrays `mx.load` returned; a parameter that is neither
    was never loaded. Used only on the MLX thread, only while loading.
    """

    def __enter__(self) -> _WeightAudit:
        import mlx.core as mx
        import mlx.nn as nn

        self._calls: list[tuple[Any, set[str]]] = []
        self._from_disk: list[Any] = []  # kept alive so that ids stay unique
        self._mx, self._nn = mx, nn
        self._load, self._load_weights = mx.load, nn.Module.load_weights
        audit = self

        def load(*args, **kwargs):
            result = audit._load(*args, **kwargs)
            if isinstance(result, dict):
                audit._from_disk.extend(result.values())
            return result

        def load_weights(module, file_or_weights, strict=True):
            weights = file_or_weights
            if isinstance(weights, str):
                weights = list(load(weights).items())
            weights = list(weights)
            audit._calls.append((module, {k for k, _ in weights}))
            return audit._load_weights(module, weights, strict=strict)

        mx.load = load
        nn.Module.load_weights = load_weights
        return self

    def __exit__(self, *exc) -> None:
        self._mx.load = self._load
        self._nn.Module.load_weights = self._load_weights

    def check(self, name: str, component: str, module) -> None:
        from mlx.utils import tree_flatten

        paths = {id(m): path for path, m in module.named_modules()}
        covered: set[str] = set()
        for loaded_module, keys in self._calls:
            if id(loaded_module) in paths:
                prefix = paths[id(loaded_module)]
                covered |= {f"{prefix}.{k}" if prefix else k for k in keys}
        from_disk = {id(a) for a in self._from_disk}
        params = dict(tree_flatten(module.parameters()))
        missing = sorted(
            k for k, v in params.items() if k not in covered and id(v) not in from_disk and not _optional(module, k)
        )
        if missing:
            raise _mismatch(
                name, component, f"{len(missing)} of {len(params)} parameters missing (e.g. {', '.join(missing[:3])})"
            )


def _optional(module, key: str) -> bool:
    """Checkpoint-only buffers a vocoder may lack: unused unless they feed bandwidth extension."""
    if ".mel_stft." in f".{key}":
        return not (type(module).__name__ == "VocoderWithBWE" and key.startswith("mel_stft."))
    return False


def _eval_in_chunks(trees, max_bytes: int = 512 * 2**20) -> None:
    """Materialise weights in bounded batches (one huge eval can trip the macOS GPU watchdog)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    batch, size = [], 0
    for tree in trees:
        for _, array in tree_flatten(tree):
            batch.append(array)
            size += array.nbytes
            if size >= max_bytes or len(batch) >= 64:
                mx.eval(*batch)
                batch, size = [], 0
    if batch:
        mx.eval(*batch)


def _rng_key():
    import mlx.core as mx

    key = mx.array(mx.random.state[0])
    mx.eval(key)
    return key


def _count_draws(before, after, limit: int = 10_000) -> int | None:
    """How many times the global random key was split between two states."""
    import mlx.core as mx

    key = before
    for n in range(limit + 1):
        if mx.array_equal(key, after).item():
            return n
        key = mx.random.split(key)[0]
    return None


def _skip_draws(count: int | None) -> None:
    """Advance the global random key as `count` draws would (empty draws: no work)."""
    import mlx.core as mx

    for _ in range(count or 0):
        mx.random.uniform(shape=(0,))


def _rms_norm_fixed(x, eps: float = 1e-6):
    import mlx.core as mx

    return mx.fast.rms_norm(x, None, eps)


def apply_rms_norm_fix() -> None:
    """Swap the package's broken compiled `rms_norm` in the modules that call it (idempotent)."""
    from mlx_video.models.ltx import text_encoder, transformer

    text_encoder.rms_norm = _rms_norm_fixed
    transformer.rms_norm = _rms_norm_fixed


def upstream_rms_norm_is_broken() -> bool:
    """Probe the package's own `mlx_video.utils.rms_norm`: narrow first, then wide.

    That order fails on the CPU (a broadcast error) and reads past the weight on
    a GPU. Float16 5-D inputs keep the compiled function's cache entries for the
    pipeline's shapes untouched. True while the upstream bug exists.
    """
    import mlx.core as mx
    from mlx_video.utils import rms_norm

    narrow = mx.full((1, 1, 1, 2, 4), 3.0, dtype=mx.float16)
    wide = mx.full((1, 1, 1, 2, 8), 3.0, dtype=mx.float16)
    try:
        mx.eval(rms_norm(narrow))
        out = rms_norm(wide)
        mx.eval(out)
    except Exception:
        return True
    return tuple(out.shape) != tuple(wide.shape) or not mx.allclose(out, mx.ones_like(wide), atol=1e-2).item()
