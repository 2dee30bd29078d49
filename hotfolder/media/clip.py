"""What a backend hands over: frames and (optionally) sound, before anything is encoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Clip:
    """What a backend returns: frames plus (optionally) native audio, before encoding."""

    frames: "np.ndarray"  # uint8, shape (num_frames, height, width, 3)
    fps: float
    audio: "np.ndarray | None" = None  # float32 in [-1, 1], shape (channels, samples)
    sample_rate: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # e.g. stages run, guidance used
