"""The MLX pipeline's pieces: the package's two-stage maths, one call at a time.

What `MlxBackend._pipeline` (backend.py) strings together: the denoise loop one
step per call (progress and cancel), image conditioning (the package's
LatentState + apply_conditioning and its noiser), the image encoded as one latent
frame, the job checks the package needs (sizes, frames, strength, a readable
image), the global random key's bookkeeping (so a seed reproduces the package's
entry point bit for bit), and the audio's peak normalisation as the package's
WAV writer does it. mlx and mlx_video are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hotfolder.errors import JobInvalid, Problem
from hotfolder.media import fit as media_fit

if TYPE_CHECKING:
    from hotfolder.backends import OnStep
    from hotfolder.job.spec import JobSpec

AUDIO_PEAK = 0.95  # the package's WAV writer peak-normalises to this; we match it


# --- the denoise loop and image conditioning ----------------------------------


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


def _encode_image(encoder, image, width: int, height: int, dtype):
    """Image -> one normalised latent frame (1, 128, 1, height/32, width/32), as the package prepares it.

    The image is fitted by `media.fit.fit_image` (cover + centre-crop, one Lanczos resize
    of the crop box): with the target's aspect ratio, the package's own `load_image`.
    """
    import mlx.core as mx
    from mlx_video.utils import prepare_image_for_encoding

    fitted, info = media_fit.fit_image(image, width, height)
    pixels = np.asarray(fitted, dtype=np.uint8)
    tensor = mx.array(pixels.astype(np.float32) / 255.0, dtype=dtype)  # as mlx_video.utils.load_image
    latent = encoder(prepare_image_for_encoding(tensor, height, width, dtype=dtype))
    mx.eval(latent)
    return latent, info


# --- what the package needs of a job -------------------------------------------


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


# --- the global random key: the package's draw order ----------------------------


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


# --- memory, tiling, audio --------------------------------------------------------


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


def normalise_and_fit_audio(waveform: np.ndarray, duration: float, sample_rate: int) -> tuple[np.ndarray, int]:
    """Peak-normalise as the package's writer does, then fit to the video's length (`media.fit.fit_audio`).

    The vocoder yields (4 * latents - 3) mel hops of audio, a few ms short of the
    video. Returns the audio and the number of samples added (negative: removed).
    """
    audio = np.asarray(waveform, dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 1e-6:
        audio = audio * np.float32(AUDIO_PEAK / peak)
    target = round(duration * sample_rate)
    delta = target - audio.shape[1]
    return np.ascontiguousarray(np.clip(media_fit.fit_audio(audio, target), -1.0, 1.0)), delta
