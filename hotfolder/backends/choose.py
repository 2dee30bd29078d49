"""Which backend serves a job, and which backend's weights this machine wants: one set of rules.

Read from package metadata and the Hugging Face cache folder only: this module never
imports torch, diffusers or mlx, so `validate`, `submit`, the daemon's scan thread
and `doctor` decide in microseconds (a test imports them in a fresh interpreter and
checks that neither framework was loaded).
"""

from __future__ import annotations

import functools
import platform
import sys
from importlib import metadata
from typing import TYPE_CHECKING

from hotfolder import weights
from hotfolder.config import BACKEND_MODULES

if TYPE_CHECKING:
    from hotfolder.config import Config, ModelInfo

MLX_PACKAGE = "mlx-video-with-audio"
MLX_PINNED_VERSION = "0.1.37"  # the MLX backend calls this version's internal functions


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def mlx_package_problem() -> str | None:
    """Why the MLX backend's packages are not usable here (None when they are), from metadata alone."""
    try:
        version = metadata.version(MLX_PACKAGE)
    except metadata.PackageNotFoundError:
        return (f"{MLX_PACKAGE} is not installed (the MLX backend needs {MLX_PACKAGE}=={MLX_PINNED_VERSION}): "
                f"pip install 'hotfolder[mlx]'")
    if version != MLX_PINNED_VERSION:
        return (
            f"{MLX_PACKAGE} {version} is installed, but hotfolder's MLX backend is built and tested against "
            f"{MLX_PINNED_VERSION} only (it calls the package's internal functions). "
            f"Install it with: pip install '{MLX_PACKAGE}=={MLX_PINNED_VERSION}'"
        )
    try:
        metadata.version("mlx")
    except metadata.PackageNotFoundError:
        return "mlx is not installed: on macOS pip install mlx, on Linux pip install 'mlx[cpu]'"
    return None


@functools.cache
def mlx_status() -> tuple[bool, str]:
    """Whether the MLX backend can run here, and why (or why not); metadata only, cached per process."""
    problem = mlx_package_problem()
    if problem:
        return False, problem
    return True, f"mlx {metadata.version('mlx')} with {MLX_PACKAGE} {MLX_PINNED_VERSION}"


def mlx_weights_present(model: ModelInfo) -> bool:
    """Whether the model's MLX weights (and text encoder) are complete in the local cache or folder."""
    if model.tiny:
        return True
    if model.local_path:
        from pathlib import Path

        return (Path(model.local_path).expanduser() / "config.json").is_file()
    repos = [(model.mlx_repo, model.revision), (model.mlx_text_encoder_repo, None)]
    repos = [(r, rev) for r, rev in repos if r]
    return bool(repos) and all(weights.repo_state(r, rev).complete for r, rev in repos)


def wanted(model: ModelInfo, config: Config, requested: str = "auto") -> tuple[str, str]:
    """The backend this machine wants for `model`, whether or not its weights are here yet: (name, why).

    What `models pull` fetches and `doctor` checks. auto: MLX for models that exist only
    for MLX, and on Apple Silicon with the MLX packages installed; Diffusers otherwise.
    """
    if requested == "auto":
        requested = config.backend
    if requested in BACKEND_MODULES:
        return requested, "asked for"
    if model.diffusers_repo is None and model.mlx_repo is not None and not model.tiny:
        return "mlx", f"model {model.name} exists only for MLX"
    if not is_apple_silicon():
        return "diffusers", "not an Apple Silicon Mac"
    ok, why = mlx_status()
    if not ok:
        return "diffusers", f"the MLX backend is not usable: {why}"
    if model.mlx_repo is None and not (model.tiny or model.local_path):
        return "diffusers", f"model {model.name} has no MLX weights"
    return "mlx", "Apple Silicon with mlx-video-with-audio"


def resolve(requested: str, model: ModelInfo | None, config: Config) -> tuple[str, str]:
    """The backend that serves a job now: (name, why).

    As `wanted`, except that on a Mac whose MLX weights for the model are not here
    yet, a model that also exists for Diffusers runs there rather than failing.
    """
    if model is None:
        if requested == "auto":
            requested = config.backend
        if requested in BACKEND_MODULES:
            return requested, "asked for"
        return ("mlx", "Apple Silicon with mlx-video-with-audio") if is_apple_silicon() and mlx_status()[0] \
            else ("diffusers", "not an Apple Silicon Mac" if not is_apple_silicon() else mlx_status()[1])
    name, why = wanted(model, config, requested)
    if name == "mlx" and why != "asked for" and model.diffusers_repo is not None and not mlx_weights_present(model):
        return "diffusers", f"the MLX weights of {model.name} are not on this machine"
    if name == "mlx" and why.startswith("Apple Silicon"):
        why = "Apple Silicon with mlx-video-with-audio and the model's MLX weights"
    return name, why
