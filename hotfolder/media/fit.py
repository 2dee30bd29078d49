"""Fitting a voice or an image to the video: one rule each, used by every backend and the daemon.

Sound is trimmed, or padded with silence, to exactly the video's length (the video
is never shortened). An image covers the frame and is centre-cropped: the centred
box of the original with the video's aspect ratio (`cover_crop_box`), resized once
with Lanczos (`fit_image`); `describe_image_fit` puts the same box into words.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIX_RATE = 48000  # the soundtrack's sample rate after a voice-over or narration
IMAGE_FIT_METHOD = "cover+centre-crop"


def fit_audio(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Trim, or pad with silence, to exactly `num_samples`: the MP4's audio then ends with its
    video, with no reliance on `-shortest` (which broke with much shorter audio)."""
    channels, have = audio.shape
    if have >= num_samples:
        return audio[:, :num_samples]
    out = np.zeros((channels, num_samples), dtype=np.float32)
    out[:, :have] = audio
    return out


def describe_fit(source_s: float, target_s: float) -> str:
    """How a soundtrack was fitted to the video, in words for the metadata and log."""
    if abs(source_s - target_s) < 0.5 / MIX_RATE * 100:  # within ~1 ms: as long as the video
        return f"as long as the video ({target_s:.2f} s)"
    if source_s > target_s:
        return f"trimmed from {source_s:.2f} s to the video's {target_s:.2f} s"
    return f"padded with {target_s - source_s:.2f} s of silence to the video's {target_s:.2f} s"


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


def fit_image(image: Any, width: int, height: int) -> tuple[Any, dict[str, Any]]:
    """Cover `width` x `height` with a Pillow `image` and centre-crop it: the `cover_crop_box`
    of the original, resized once (Lanczos) to the target.

    With the target's aspect ratio the box is the whole image, and this is a plain
    Lanczos resize (what mlx-video-with-audio's `load_image` does). Returns the
    fitted Pillow image and what was done, for the clip's metadata.
    """
    from PIL import Image

    box = cover_crop_box(image.size, (width, height))
    fitted = image.resize((width, height), Image.Resampling.LANCZOS, box=box)
    info = {
        "method": IMAGE_FIT_METHOD,
        "source_size": [image.size[0], image.size[1]],
        "crop_box": list(box),  # left, top, right, bottom in the source's pixels
        "target_size": [width, height],
    }
    return fitted, info


def describe_image_fit(size: tuple[int, int], width: int, height: int) -> str:
    """How an image of `size` covers a width x height video (`fit_image`'s rule), in words."""
    w, h = size
    left, top, right, bottom = cover_crop_box(size, (width, height))
    cw, ch = right - left, bottom - top
    if (cw, ch) == (w, h):
        return f"as it is ({w}x{h})" if (w, h) == (width, height) else f"scaled from {w}x{h} to {width}x{height}"
    cropped = f"cover and centre-crop: {w}x{h} cropped to {cw}x{ch} at ({left}, {top})"
    return cropped if (cw, ch) == (width, height) else f"{cropped}, scaled to {width}x{height}"
