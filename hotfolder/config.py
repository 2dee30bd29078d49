"""The frozen `Config` every part of the daemon reads, and the tables it carries.

Precedence, lowest first: built-in defaults < config.toml < environment
(`HOTFOLDER_ROOT`) < command-line flags. Nothing below the CLI reads argv or the
environment; they get a `Config`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import platformdirs

from hotfolder.errors import UsageError

APP = "hotfolder"


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the model table: what a name means to each backend."""

    name: str
    family: str  # "ltx2" (video + audio) or "ltx" (LTX-Video, no audio)
    diffusers_repo: str | None = None
    mlx_repo: str | None = None
    mlx_text_encoder_repo: str | None = None
    revision: str | None = None
    has_audio: bool = True
    max_duration: float = 20.0
    guidance: float = 4.0
    tiny: bool = False  # random weights built in code: the output is noise
    size_gb: float = 0.0  # approximate download size, for doctor and pull
    local_path: str | None = None  # a folder of weights given as the model name

    @property
    def label(self) -> str:
        """How the model is named wherever a person sees it."""
        if self.tiny:
            return f"{self.name} (tiny random weights: the output is noise, for tests and the demo)"
        return self.name


BUILTIN_MODELS: dict[str, ModelInfo] = {
    "ltx-2": ModelInfo(
        name="ltx-2",
        family="ltx2",
        diffusers_repo="Lightricks/LTX-2",
        mlx_repo="notapalindrome/ltx2-mlx-av",
        mlx_text_encoder_repo="mlx-community/gemma-3-12b-it-bf16",
        max_duration=20.0,
        guidance=4.0,
        size_gb=42.0,
    ),
    "ltx-2.3-q4": ModelInfo(
        name="ltx-2.3-q4",
        family="ltx2",
        mlx_repo="dgrauet/ltx-2.3-mlx-distilled-q4",
        mlx_text_encoder_repo="mlx-community/gemma-3-12b-it-bf16",
        max_duration=20.0,
        guidance=1.0,
        size_gb=19.4,
    ),
    "ltx-video": ModelInfo(
        name="ltx-video",
        family="ltx",
        diffusers_repo="Lightricks/LTX-Video",
        has_audio=False,
        max_duration=10.0,
        guidance=3.0,
        size_gb=9.5,
    ),
    # revision: bump when the code that builds the tiny weights changes (it is their cache identity).
    "tiny": ModelInfo(name="tiny", family="ltx2", tiny=True, guidance=1.0, max_duration=20.0, revision="builtin-1"),
    "tiny-ltx-video": ModelInfo(
        name="tiny-ltx-video",
        family="ltx",
        tiny=True,
        has_audio=False,
        guidance=1.0,
        max_duration=20.0,
        revision="builtin-1",
    ),
}

# The backends: the module that implements each (imported only when a job needs it) and the
# multiple its width and height must be. Tests register a fake backend in both tables.
BACKEND_MODULES: dict[str, str] = {
    "diffusers": "hotfolder.backends.diffusers.backend",
    "mlx": "hotfolder.backends.mlx.backend",
}
SIZE_MULTIPLE: dict[str, int] = {"diffusers": 32, "mlx": 64}

# Nominal sizes of the format presets (production). Preview halves them; both are
# then snapped to what the backend accepts, and the snap is recorded.
FORMATS: dict[str, tuple[int, int]] = {
    "linkedin": (1280, 720),  # 16:9
    "tiktok": (720, 1280),  # 9:16
    "instagram": (720, 720),  # 1:1
}

# Denoising steps when a job does not say.
MODE_STEPS: dict[str, int] = {"preview": 10, "production": 30}

# Job-file defaults (section 3 of the spec); presets and job files override them.
JOB_DEFAULTS: dict[str, Any] = {
    "format": "linkedin",
    "mode": "preview",
    "duration": 5.0,
    "fps": 24,
    "seed": 42,
    "priority": 0,
    "cache": True,
    "backend": "auto",
}

# Inbox subfolders that apply defaults: inbox/<name>/ -> these keys.
BUILTIN_PRESETS: dict[str, dict[str, Any]] = {name: {"format": name} for name in FORMATS}

CONFIG_KEYS = {
    "root": str,
    "settle_seconds": (int, float),
    "rescan_seconds": (int, float),
    "backend": str,
    "model": str,
    "max_prompt_bytes": int,
    "max_attachment_bytes": int,
    "attachment_wait_seconds": (int, float),
    "max_attempts": int,
    "retry_backoff_seconds": (int, float),
    "cache_dir": str,
    "cache_max_bytes": int,
    "log_dir": str,
    "state_dir": str,
    "polling": bool,
    "idle_unload_minutes": (int, float),
    "mlx_keep_text_encoder": bool,
    "mlx_memory_limit_gb": (int, float),
    "mlx_cache_limit_gb": (int, float),
    "notifications": bool,
    "defaults": dict,
    "presets": dict,
    "models": dict,
}

PATH_KEYS = ("cache_dir", "log_dir", "state_dir")
TABLE_KEYS = ("defaults", "presets", "models")  # merged with the built-in tables below


@dataclass(frozen=True)
class Config:
    """Everything the daemon and the commands need to know, resolved once."""

    root: Path
    settle_seconds: float = 1.0
    rescan_seconds: float = 5.0
    backend: str = "auto"  # the default for jobs that say "auto"
    model: str = "ltx-2"  # the default model for jobs that name none
    max_prompt_bytes: int = 1024 * 1024
    max_attachment_bytes: int = 2 * 1024**3  # an image or audio file a job names
    attachment_wait_seconds: float = 300.0  # how long a loose job file waits for the files it names
    max_attempts: int = 2
    retry_backoff_seconds: float = 5.0  # first retry after this; each later one waits 4x longer (max 5 min)
    cache_dir: Path = field(default_factory=lambda: Path(platformdirs.user_cache_dir(APP)))
    cache_max_bytes: int = 20 * 1024**3
    log_dir: Path = field(default_factory=lambda: Path(platformdirs.user_log_dir(APP)))
    state_dir: Path = field(default_factory=lambda: Path(platformdirs.user_state_dir(APP)))
    polling: bool = False
    idle_unload_minutes: float = 30.0  # free the model after this long without a job; 0 keeps it forever
    mlx_keep_text_encoder: bool = True  # False: load Gemma per job (Gemma + LTX-2 in bf16 exceed 64 GB)
    mlx_memory_limit_gb: float | None = None
    mlx_cache_limit_gb: float | None = None
    notifications: bool = True
    job_defaults: Mapping[str, Any] = field(default_factory=lambda: dict(JOB_DEFAULTS))
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: dict(BUILTIN_PRESETS))
    models: Mapping[str, ModelInfo] = field(default_factory=lambda: dict(BUILTIN_MODELS))
    config_file: Path | None = None
    # Where each value came from, as load_config applied the layers: "root" -> "env HOTFOLDER_ROOT",
    # "defaults.fps" -> "config file ... [defaults]", "models.ltx-2" -> ...; absent means built in.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)

    # Folder layout (section 1 of the spec).
    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def processing(self) -> Path:
        return self.root / "processing"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    def model_info(self, name: str) -> ModelInfo | None:
        """A model by table name, or a local folder of weights given as a path."""
        if name in self.models:
            return self.models[name]
        path = Path(name).expanduser()
        if path.is_dir():
            family = "ltx2"
            index = path / "model_index.json"
            if index.is_file() and '"LTXPipeline"' in index.read_text(errors="replace"):
                family = "ltx"
            return ModelInfo(name=str(path), family=family, has_audio=family == "ltx2", local_path=str(path))
        return None

    def with_overrides(self, **kwargs: Any) -> Config:
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


def default_root() -> Path:
    """~/Movies/Hotfolder on macOS: outside Desktop/Documents/Downloads (privacy-protected)."""
    return Path(platformdirs.user_videos_dir()) / "Hotfolder"


def default_config_file() -> Path:
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def load_config(
    config_file: Path | None = None,
    *,
    root: Path | None = None,
    env: Mapping[str, str] | None = None,
    **flags: Any,
) -> Config:
    """Build the Config: defaults < config.toml < environment < flags."""
    env = os.environ if env is None else env
    explicit = config_file is not None
    path = config_file or default_config_file()
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"config file {path}: {e}. Fix the TOML syntax there.") from e
        except UnicodeDecodeError as e:
            raise UsageError(f"config file {path} is not UTF-8 text ({e}).") from e
    elif explicit:
        raise UsageError(f"config file {path} does not exist. Create it with `hotfolder config init` or drop --config.")

    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise UsageError(f"config file {path}: unknown key {key!r}. Allowed: {', '.join(sorted(CONFIG_KEYS))}.")
        want = CONFIG_KEYS[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise UsageError(f"config file {path}: {key} = {value!r} has the wrong type.")

    kwargs: dict[str, Any] = {"config_file": path if path.is_file() else None}
    origins: dict[str, str] = {}
    in_file = f"config file {path}"
    for key, value in data.items():
        if key in PATH_KEYS:
            kwargs[key] = Path(value).expanduser()
        elif key not in TABLE_KEYS and key != "root":  # a plain setting: a Config field of the same name
            kwargs[key] = float(value) if CONFIG_KEYS[key] == (int, float) else value
        if key not in TABLE_KEYS and key != "root":
            origins[key] = in_file
    if "defaults" in data:
        defaults = {**JOB_DEFAULTS, **data["defaults"]}
        origins.update({f"defaults.{k}": f"{in_file} [defaults]" for k in data["defaults"]})
        # The model and backend defaults live on Config itself, so --model / --backend flags can override them.
        # (only what the file's [defaults] really sets moves there, not JOB_DEFAULTS' own "auto").
        for key in ("model", "backend"):
            if key in data["defaults"]:
                kwargs[key] = defaults.pop(key)
                origins[key] = f"{in_file} [defaults]"
        kwargs["job_defaults"] = defaults
    if "presets" in data:
        kwargs["presets"] = {**BUILTIN_PRESETS, **data["presets"]}
        origins.update({f"presets.{k}": in_file for k in data["presets"]})
    if "models" in data:
        models = dict(BUILTIN_MODELS)
        for name, table in data["models"].items():
            base = models.get(name, ModelInfo(name=name, family="ltx2"))
            try:
                models[name] = replace(base, name=name, **table)
            except TypeError as e:
                raise UsageError(f"config file {path}: [models.{name}]: {e}") from e
            origins[f"models.{name}"] = f"built in, changed in {in_file}" if name in BUILTIN_MODELS else in_file
        kwargs["models"] = models

    if root is not None:
        chosen_root, origins["root"] = root, "flag --root"
    elif env.get("HOTFOLDER_ROOT"):
        chosen_root, origins["root"] = Path(env["HOTFOLDER_ROOT"]), "env HOTFOLDER_ROOT"
    elif "root" in data:
        chosen_root, origins["root"] = Path(data["root"]), in_file
    else:
        chosen_root = None
    kwargs["root"] = (chosen_root or default_root()).expanduser().absolute()
    for key, value in flags.items():
        if value is not None:
            kwargs[key] = value
            origins[key] = f"flag --{key.replace('_', '-')}"
    kwargs["origins"] = origins
    if kwargs.get("backend", "auto") not in ("auto", *BACKEND_MODULES):
        allowed = ", ".join(("auto", *BACKEND_MODULES))
        raise UsageError(f"backend {kwargs['backend']!r} is not one of {allowed}.")
    return Config(**kwargs)
