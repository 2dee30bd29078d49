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

It is built and checked against one version of the package
(`choose.MLX_PINNED_VERSION`), because it calls that version's internal
functions. All MLX work runs on one thread that the backend owns: MLX's random
seed and default device are process-wide and its streams belong to the thread
that made them.

Where things are: this module holds the backend and its MLX thread;
`pipeline.py` the pipeline's pieces (denoise, conditioning, random-key
bookkeeping, audio normalisation); `weights.py` finding, loading and auditing
the weights; `patches.py` the workarounds for upstream defects (listed there);
`choose.py` the package gate; `media/fit.py` how the image is fitted.

Deliberate differences from the package's entry point:
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
import importlib
import queue
import shutil
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hotfolder.backends import Clip, OnStep, choose
from hotfolder.backends.choose import MLX_PACKAGE, MLX_PINNED_VERSION
from hotfolder.backends.mlx import tiny as tiny_mlx
from hotfolder.backends.mlx.patches import apply_rms_norm_fix
from hotfolder.backends.mlx.pipeline import (
    AUDIO_PEAK,
    _check_spec,
    _condition,
    _count_draws,
    _denoise,
    _describe_tiling,
    _encode_image,
    _eval_in_chunks,
    _memory_hint,
    _noise_state,
    _rng_key,
    _skip_draws,
    _tree_bytes,
    normalise_and_fit_audio,
    open_image,
)
from hotfolder.backends.mlx.weights import (
    _load_text_encoder,
    _load_transformer,
    _load_vae_encoder,
    _Parts,
    _resolve,
    _WeightAudit,
)
from hotfolder.errors import BackendError, HotfolderError

if TYPE_CHECKING:
    from hotfolder.config import Config, ModelInfo
    from hotfolder.job.spec import JobSpec

MAX_PROMPT_TOKENS = 1024  # as the package's entry point

# Why the package cannot be used here (None when it can), from its metadata (choose.py, the one
# home of the gate), checked once when this module is imported. A module attribute, so that a
# test can put another answer in its place.
PACKAGE_PROBLEM = choose.mlx_package_problem()


def _require_package() -> None:
    if PACKAGE_PROBLEM:
        raise BackendError(PACKAGE_PROBLEM, hint=f"pip install '{MLX_PACKAGE}=={MLX_PINNED_VERSION}'")


# --- what `doctor` needs ----------------------------------------------------


def available() -> tuple[bool, str]:
    """Whether the MLX backend can run here, and why (or why not)."""
    if PACKAGE_PROBLEM:
        return False, PACKAGE_PROBLEM
    try:
        import mlx.core as mx

        importlib.import_module("mlx_video.generate_av")
    except Exception as e:  # a missing libmlx raises OSError/ImportError, bad wheels anything
        return False, f"mlx does not import ({type(e).__name__}: {e}). On Linux install 'mlx[cpu]', on macOS 'mlx'."
    version = metadata.version("mlx")
    if mx.metal.is_available():
        return True, f"mlx {version} on the Apple GPU (Metal), {MLX_PACKAGE} {MLX_PINNED_VERSION}"
    return True, f"mlx {version} on the CPU only: works, but practical only for the tiny model"


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
            waveform_np = np.array(waveform.astype(mx.float32))[0]
            audio_np, fitted = normalise_and_fit_audio(waveform_np, frames / fps, sample_rate)

        steps1, steps2 = len(DEFAULT_STAGE_1_SIGMAS) - 1, len(DEFAULT_STAGE_2_SIGMAS) - 1
        info: dict[str, Any] = {
            "backend": self.name,
            "model": self.model.label,
            "device": self.device,
            "package": f"{MLX_PACKAGE} {MLX_PINNED_VERSION}",
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
            info["tiny"] = True
            info["warning"] = tiny_mlx.LABEL
        return Clip(frames=pixels, fps=spec.fps, audio=audio_np, sample_rate=sample_rate, info=info)


class _TinyFolder:
    """The tiny model's weights: built into a private temporary folder, removed on unload."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def build(self) -> Path:
        if self.path is None:
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
