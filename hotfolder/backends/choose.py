"""Which backend serves a job, and which backend's weights this machine wants: one set of rules.

Also what a model's weights are on this machine for a backend (`model_state`, `weights_problem`),
the one rule `submit`, `agent install`, `models`, `doctor` and the daemon's start use. Read from
package metadata and the Hugging Face cache folder only: this module never
imports torch, diffusers or mlx, so `validate`, `submit`, the daemon's scan thread
and `doctor` decide in microseconds (a test imports them in a fresh interpreter and
checks that neither framework was loaded).
"""

from __future__ import annotations

import functools
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
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
    if model.local_path and not model.tiny:
        return (Path(model.local_path).expanduser() / "config.json").is_file()
    return model_state(model, "mlx").present


# -- what a model's weights are on this machine (models list, pull, doctor, submit, the daemon's start) ------
@dataclass(frozen=True)
class ModelState:
    """A model as this machine has it, for one backend."""

    model: ModelInfo
    backend: str
    repos: tuple[weights.RepoState, ...]

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.repos)

    @property
    def present(self) -> bool:
        if self.model.tiny:
            return True
        if self.model.local_path:
            return Path(self.model.local_path).expanduser().is_dir()
        return bool(self.repos) and all(r.complete for r in self.repos)

    @property
    def status(self) -> str:
        if self.model.tiny:
            return "built in"
        if self.model.local_path:
            return "local folder" if self.present else "folder missing"
        if not self.repos:
            return f"none for {self.backend}"
        if self.present:
            return "present"
        return "partial" if self.bytes else "missing"

    @property
    def problem(self) -> str | None:
        return next((f"{r.repo}: {r.problem}" for r in self.repos if r.problem), None)


def repos_for(model: ModelInfo, backend: str) -> list[tuple[str, str | None]]:
    """(repo, revision) pairs the backend loads for this model; the revision pins the main repo only."""
    if model.tiny or model.local_path:
        return []
    if backend == "mlx":
        pairs = [(model.mlx_repo, model.revision), (model.mlx_text_encoder_repo, None)]
    else:
        pairs = [(model.diffusers_repo, model.revision)]
    return [(r, rev) for r, rev in pairs if r]


def model_state(model: ModelInfo, backend: str, cache: Path | None = None) -> ModelState:
    repos = tuple(weights.repo_state(r, rev, cache) for r, rev in repos_for(model, backend))
    return ModelState(model, backend, repos)


def weights_problem(model: ModelInfo, config: Config, backend: str | None = None,
                    cache: Path | None = None) -> str | None:
    """Why the daemon could not serve `model` on this machine for want of weights (None when it can).

    Tiny models are built in code and a local folder of weights serves itself while it exists;
    every other model needs its weights, for the backend that will run it, in the Hugging Face
    cache. Read from the cache folder only: offline and instant.
    """
    if model.tiny:
        return None
    if model.local_path:
        folder = Path(model.local_path).expanduser()
        return None if folder.is_dir() else f"the weights folder {folder} of model {model.name} does not exist."
    backend = backend or wanted(model, config)[0]
    if backend not in ("diffusers", "mlx"):
        return None  # a backend of another kind: its weights are not Hugging Face repositories we know
    state = model_state(model, backend, cache)
    if state.present:
        return None
    where = cache or weights.hub_cache()
    size = f" (about {model.size_gb:.0f} GB)" if model.size_gb else ""
    if not state.repos:
        return f"model {model.name} has no weights for the {backend} backend; choose another model or backend."
    if state.status == "partial":
        return (f"the weights of model {model.name} are incomplete on this machine ({weights.gb(state.bytes)} in {where}: "
                f"{state.problem}). Finish the download first: hotfolder models pull {model.name}{size}; "
                "it resumes.")
    return (f"the weights of model {model.name} are not on this machine (looked in {where}). "
            f"Download them first: hotfolder models pull {model.name}{size}.")


def _asked(requested: str, config: Config) -> str | None:
    """The backend a job or the config names outright; None for "auto"."""
    if requested == "auto":
        requested = config.backend
    return requested if requested in BACKEND_MODULES else None


def _by_platform() -> tuple[str, str]:
    """What "auto" means on this machine, before the model is looked at: MLX on Apple Silicon with its packages."""
    if not is_apple_silicon():
        return "diffusers", "not an Apple Silicon Mac"
    ok, why = mlx_status()
    if not ok:
        return "diffusers", f"the MLX backend is not usable: {why}"
    return "mlx", "Apple Silicon with mlx-video-with-audio"


def runs_on(model: ModelInfo, backend: str) -> bool:
    """Whether `backend` can run `model` at all: tiny models and local folders run anywhere, except that the
    MLX backend builds only an LTX-2 tiny model (the tiny LTX-2.3 and LTX-2.5 run on Diffusers only); a model
    from the table runs where it has weights."""
    if model.tiny:
        return backend != "mlx" or (model.family == "ltx2" and model.version == "2")
    if model.local_path or (model.diffusers_repo is None and model.mlx_repo is None):
        return True
    return (model.mlx_repo if backend == "mlx" else model.diffusers_repo) is not None


def wanted(model: ModelInfo, config: Config, requested: str = "auto") -> tuple[str, str]:
    """The backend this machine wants for `model`, whether or not its weights are here yet: (name, why).

    What `models pull` fetches and `doctor` checks. auto: MLX for models that exist only
    for MLX, and on Apple Silicon with the MLX packages installed; Diffusers otherwise.
    """
    asked = _asked(requested, config)
    if asked:
        return asked, "asked for"
    if not runs_on(model, "diffusers"):
        return "mlx", f"model {model.name} exists only for MLX"
    name, why = _by_platform()
    if name == "mlx" and not runs_on(model, "mlx"):
        return "diffusers", f"model {model.name} has no MLX weights"
    return name, why


def resolve(requested: str, model: ModelInfo | None, config: Config) -> tuple[str, str]:
    """The backend that serves a job now: (name, why).

    As `wanted`, except that on a Mac whose MLX weights for the model are not here
    yet, a model that also exists for Diffusers runs there rather than failing.
    """
    if model is None:
        asked = _asked(requested, config)
        return (asked, "asked for") if asked else _by_platform()
    name, why = wanted(model, config, requested)
    if name == "mlx" and why != "asked for" and model.diffusers_repo is not None and not mlx_weights_present(model):
        return "diffusers", f"the MLX weights of {model.name} are not on this machine"
    if name == "mlx" and why.startswith("Apple Silicon"):
        why = "Apple Silicon with mlx-video-with-audio and the model's MLX weights"
    return name, why


# -- what production needs beyond the pipeline: the latent upsampler, and the stage-2 LoRA (models, pull, doctor) ---
# The latent upsampler's folder in an LTX-2 Diffusers repository (not a pipeline component, so not in
# model_index.json): what `LTX2LatentUpsamplerModel.from_pretrained(repo, subfolder="latent_upsampler")` reads in
# the Diffusers LTX-2 docs; the Diffusers backend loads it, `models pull` fetches it.
UPSAMPLER_SUBFOLDER = "latent_upsampler"


@dataclass(frozen=True)
class Extra:
    """One file or folder a production job loads besides the pipeline's components."""

    what: str  # "latent upsampler" | "stage-2 LoRA"
    repo: str
    path: str  # inside the repository: a folder ("latent_upsampler/") or a file
    present: bool
    bytes: int = 0

    @property
    def where(self) -> str:
        return f"{self.repo}/{self.path}"


def stage2_lora(model: ModelInfo) -> tuple[str, str] | None:
    """(repository, file) of the distilled LoRA production's stage 2 loads on non-distilled weights; else None.

    The one rule for where it comes from, for `models pull` and the Diffusers backend alike: `stage2_lora_repo`,
    else an "org/repo/file.safetensors" name, else the model's own Diffusers repository."""
    if model.tiny or model.distilled or not model.stage2_lora:
        return None
    name, repo = model.stage2_lora, model.stage2_lora_repo
    if not repo and name.count("/") >= 2:  # "org/repo/file.safetensors"
        org, rest = name.split("/", 1)
        repo_name, name = rest.split("/", 1)
        repo = f"{org}/{repo_name}"
    repo = repo or model.diffusers_repo
    return (repo, name) if repo else None


def production_extras(model: ModelInfo, backend: str, cache: Path | None = None) -> list[Extra]:
    """The latent upsampler (an LTX-2 Diffusers repo's `latent_upsampler/` folder) and the stage-2 LoRA, as on disk.

    Only for the Diffusers backend (MLX repos carry their upsampler inside, and run the distilled schedule).
    """
    if backend != "diffusers" or model.tiny or model.local_path or model.family != "ltx2" or not model.diffusers_repo:
        return []
    extras = []
    main = weights.repo_state(model.diffusers_repo, model.revision, cache)
    folder = main.snapshot / UPSAMPLER_SUBFOLDER if main.snapshot else None
    files = [p for p in folder.iterdir() if p.is_file()] if folder is not None and folder.is_dir() else []
    present = any(p.name == "config.json" for p in files) and any(p.suffix == ".safetensors" for p in files)
    extras.append(Extra("latent upsampler", model.diffusers_repo, UPSAMPLER_SUBFOLDER + "/", present,
                        sum(p.stat().st_size for p in files) if present else 0))
    lora = stage2_lora(model)
    if lora is not None:
        repo, name = lora
        state = main if repo == model.diffusers_repo else weights.repo_state(repo, None, cache)
        path = state.snapshot / name if state.snapshot else None
        present = path is not None and path.is_file()  # is_file follows the link: a missing blob is absent
        extras.append(Extra("stage-2 LoRA", repo, name, present, path.stat().st_size if present else 0))
    return extras


def production_problem(model: ModelInfo, backend: str, cache: Path | None = None) -> str | None:
    """What `mode = "production"` lacks on this machine (None when nothing): names each file and the pull."""
    missing = [e for e in production_extras(model, backend, cache) if not e.present]
    if not missing:
        return None
    return (f'mode = "production" with model {model.name} needs '
            + " and ".join(f"the {e.what} ({e.where})" for e in missing)
            + f", not on this machine: hotfolder models pull {model.name}")
