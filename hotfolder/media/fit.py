"""Fitting a voice or an image to the video: one rule each, used by every backend and the daemon.

Sound is trimmed, or padded with silence, to exactly the video's length (the video
is never shortened). An image covers the frame and is centre-cropped.
"""

from __future__ import annotations

import numpy as np

MIX_RATE = 48000  # the soundtrack's sample rate after a voice-over or narration


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


def describe_image_fit(size: tuple[int, int], width: int, height: int) -> str:
    """How an image of `size` covers a width x height video: scaled, then centre-cropped."""
    w, h = size
    scale = max(width / w, height / h)
    sw, sh = round(w * scale), round(h * scale)
    if (sw, sh) == (width, height):
        return f"scaled from {w}x{h} to {width}x{height}"
    return f"cover and centre-crop: scaled from {w}x{h} to {sw}x{sh}, cropped to {width}x{height}"
