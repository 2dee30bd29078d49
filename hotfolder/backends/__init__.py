"""The backend contract and a registry that imports backends lazily by name.

The MLX path must never import torch and the Diffusers path never mlx, so the
registry maps names to module paths and imports only the one asked for.
"""

from __future__ import annotations

import functools
import importlib
import platform
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import numpy as np

    from hotfolder.config import Config, ModelInfo
    from hotfolder.spec import JobSpec

# on_step(stage, step, total): called once per denoising step (step counts from 1).
# It may raise `hotfolder.errors.Interrupted` to stop the job at once; backends
# let that exception propagate and stay usable for the next job.
OnStep = Callable[[str, int, int], None]

# Width/height must be multiples of this for each backend.
SIZE_MULTIPLE = {"diffusers": 32, "mlx": 64}


@dataclass
class Clip:
    """What a backend returns: frames plus (optionally) native audio, before encoding."""

    frames: "np.ndarray"  # uint8, shape (num_frames, height, width, 3)
    fps: float
    audio: "np.ndarray | None" = None  # float32 in [-1, 1], shape (channels, samples)
    sample_rate: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # e.g. stages run, guidance used


class Backend(Protocol):
    """A resident generator: load once, generate many, close when done."""

    name: str  # "diffusers" | "mlx"
    device: str  # e.g. "cpu", "cuda", "mps", "gpu"

    def load(self) -> None:
        """Load the model's weights (slow, once). Raises WeightsMissing when they are not on disk."""

    def generate(self, spec: JobSpec, on_step: OnStep) -> Clip:
        """Generate one clip for `spec`. Raises BackendError (retryable) or lets Interrupted through."""

    def close(self) -> None:
        """Release the model and its memory (the daemon also calls this for idle unload)."""


BACKEND_MODULES = {
    "diffusers": "hotfolder.backends.diffusers_ltx",
    "mlx": "hotfolder.backends.mlx_av",
}


def create(name: str, model: ModelInfo, config: Config) -> Backend:
    """Build (not load) the backend `name` for `model`; imports only that backend's module."""
    module = importlib.import_module(BACKEND_MODULES[name])
    return module.create(model, config)


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def resolve(requested: str, model: ModelInfo | None, config: Config) -> tuple[str, str]:
    """Pick the concrete backend for a job: returns (name, why).

    auto: MLX on Apple Silicon when mlx-video-with-audio imports and the model's MLX
    weights are on this machine; Diffusers otherwise.
    """
    if requested == "auto":
        requested = config.backend
    if requested in BACKEND_MODULES:
        return requested, "asked for"
    if model is not None and model.diffusers_repo is None and model.mlx_repo is not None and not model.tiny:
        return "mlx", f"model {model.name} exists only for MLX"
    if not is_apple_silicon():
        return "diffusers", "not an Apple Silicon Mac"
    ok, why = mlx_status()
    if not ok:
        return "diffusers", f"the MLX backend is not usable: {why}"
    if model is not None and not mlx_weights_present(model, config):
        return "diffusers", f"the MLX weights of {model.name} are not on this machine"
    return "mlx", "Apple Silicon with mlx-video-with-audio and the model's MLX weights"


@functools.cache
def mlx_status() -> tuple[bool, str]:
    """Whether the MLX backend can run here (its package imports, at the pinned version)."""
    try:
        from hotfolder.backends import mlx_av
    except ImportError as e:
        return False, f"mlx-video-with-audio is not installed ({e}); `pip install 'hotfolder[mlx]'`"
    return mlx_av.available()


def mlx_weights_present(model: ModelInfo, config: Config) -> bool:
    from hotfolder.backends import mlx_av

    return mlx_av.weights_present(model, config)
