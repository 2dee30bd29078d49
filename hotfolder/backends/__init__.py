"""The backend contract, and `create`, which imports the one backend asked for.

The MLX path must never import torch and the Diffusers path never mlx, so the
registry (`config.BACKEND_MODULES`) maps names to module paths and only the one
asked for is imported. Which backend serves a job is `choose.py`'s question.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Protocol

from hotfolder.config import BACKEND_MODULES, SIZE_MULTIPLE
from hotfolder.media.clip import Clip

if TYPE_CHECKING:
    from hotfolder.config import Config, ModelInfo
    from hotfolder.job.spec import JobSpec

__all__ = ["BACKEND_MODULES", "SIZE_MULTIPLE", "Backend", "Clip", "OnStep", "create"]

# on_step(stage, step, total): called once per denoising step (step counts from 1).
# It may raise `hotfolder.errors.Interrupted` to stop the job at once; backends
# let that exception propagate and stay usable for the next job.
OnStep = Callable[[str, int, int], None]


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


def create(name: str, model: ModelInfo, config: Config) -> Backend:
    """Build (not load) the backend `name` for `model`; imports only that backend's module."""
    module = importlib.import_module(BACKEND_MODULES[name])
    return module.create(model, config)
