"""The frozen `Config` every part of the daemon reads, the tables it carries, and the config file's check.

Precedence, lowest first: built-in defaults < config.toml < environment
(`HOTFOLDER_ROOT`) < command-line flags. Nothing below the CLI reads argv or the
environment; they get a `Config`.

The config file and job files are both files a person typed, so both are read and
checked by the same machinery, at the end of this module (the lowest layer both can
reach): `read_text_file` takes only a plain file (never a pipe, a socket or a device)
and never more than its limit; `load_toml` turns any parser failure into a message with
the line and column; `Checker` says the key, the value as written, what is allowed and
a did-you-mean. The settings' rules are here (`CONFIG_KEYS`, `MODEL_KEYS`); the job
keys' rules are `job/spec.py`'s, which also checks the file's [defaults] and presets
(`spec.check_config`).
"""

from __future__ import annotations

import difflib
import errno
import json
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import platformdirs

from hotfolder.errors import Problem, UsageError

APP = "hotfolder"


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the model table: what a name means to each backend, and how its makers run it.

    Every default a model's documentation gives lives here, in this one table (`BUILTIN_MODELS`),
    and each can be changed in a `[models.NAME]` table of the config file (`MODEL_KEYS`):
    steps per mode, guidance per modality (video, audio), spatio-temporal (STG) and modality
    guidance, the frame rate, the duration limit, the H.264 CRF the conditioning image goes
    through, and which features the model has (image-to-video, a duration head, a prompt
    enhancer). A job may override only what a job key names (`steps`, `fps`, `duration`...);
    a job naming a feature the model lacks is refused by `job/spec.py` with the reason.
    """

    name: str
    family: str  # "ltx2" (video + audio) or "ltx" (LTX-Video, no audio)
    diffusers_repo: str | None = None
    mlx_repo: str | None = None
    mlx_text_encoder_repo: str | None = None
    revision: str | None = None
    has_audio: bool = True
    max_duration: float = 20.0
    guidance: float = 4.0  # classifier-free guidance, video (1: off)
    tiny: bool = False  # random weights built in code: the output is noise
    size_gb: float = 0.0  # approximate download size, for doctor and pull
    local_path: str | None = None  # a folder of weights given as the model name
    # --- how the model is run (issue 13); defaults are LTX-2's (January 2026) ---
    version: str = "2"  # "2", "2.3", "2.5" (LTX-2 generations); "" for LTX-Video
    pipeline: str = ""  # the Diffusers pipeline class; "" = the family's (LTX2Pipeline / LTXPipeline)
    distilled: bool = False  # fixed 8-step schedule (DISTILLED_SIGMA_VALUES), guidance 1, no stage-2 LoRA
    steps_preview: int = 10
    steps_production: int = 30  # stage 1 of production (stage 2 is always the 3-step distilled schedule)
    audio_guidance: float | None = None  # classifier-free guidance for the audio; None: the video's
    stg_scale: float = 0.0  # spatio-temporal guidance, video and audio (0: off)
    stg_block: int | None = None  # the transformer block STG perturbs (needed when stg_scale > 0)
    modality_scale: float = 1.0  # modality-isolation guidance, video and audio (1: off)
    fps: float = 24.0  # the frame rate a job gets when neither it nor the config's [defaults] says
    image_crf: int = 33  # H.264 CRF the conditioning image goes through (33 through LTX-2.3, 18 from LTX-2.5)
    image_to_video: bool = True  # whether hotfolder runs an [image] job on it
    duration_head: bool = False  # duration = "auto": the model chooses the length (LTX-2.5)
    prompt_enhancer: str | None = None  # enhance_prompt = true: the enhancer's identity (in the cache key)
    stage2_lora_repo: str | None = None  # production's stage 2 on non-distilled weights: the distilled LoRA ...
    stage2_lora: str | None = None  # ... file in that repository (loaded once, enabled for stage 2 only)

    @property
    def label(self) -> str:
        """How the model is named wherever a person sees it."""
        if self.tiny:
            return f"{self.name} (tiny random weights: the output is noise, for tests and the demo)"
        return self.name

    def steps(self, mode: str) -> int:
        """Denoising steps a job in `mode` gets when it names none (a distilled model's are fixed: 8)."""
        if self.distilled:
            return DISTILLED_STEPS
        return self.steps_production if mode == "production" else self.steps_preview

    @property
    def pipeline_class(self) -> str:
        return self.pipeline or ("LTX2Pipeline" if self.family == "ltx2" else "LTXPipeline")


# Distilled checkpoints run Diffusers' `DISTILLED_SIGMA_VALUES`: 8 steps, whatever a job asks.
DISTILLED_STEPS = 8
# The distilled LoRA the Diffusers LTX-2 docs load for production's stage 2 on the non-distilled weights
# (`Lightricks/LTX-2`, https://huggingface.co/Lightricks/LTX-2/blob/main/ltx-2-19b-distilled-lora-384.safetensors).
LTX2_STAGE2_LORA = ("Lightricks/LTX-2", "ltx-2-19b-distilled-lora-384.safetensors")
# LTX-2.3's (Lightricks/LTX-2.3 commit 76730e6, "Upload model files": ltx-2.3-22b-distilled-lora-384-1.1.safetensors).
LTX23_STAGE2_LORA = ("Lightricks/LTX-2.3", "ltx-2.3-22b-distilled-lora-384-1.1.safetensors")
GEMMA3_MLX = "mlx-community/gemma-3-12b-it-bf16"
# LTX-2.3 defaults: the `LTX2Pipeline.__call__` docstring of diffusers 0.42 ("for LTX-2.3 they suggest 3.0 for video
# and 7.0 for audio"; STG 1.0 and modality 3.0 for both; STG block 28 for LTX-2.3, 29 for LTX-2.0).
_LTX23 = dict(version="2.3", guidance=3.0, audio_guidance=7.0, stg_scale=1.0, modality_scale=3.0, stg_block=28,
              max_duration=20.0)
# LTX-2.5: `LTX2DFRPipeline` (diffusers 0.42 `pipeline_ltx2_dfr.py`, example repo `Lightricks/LTX-2.5-Diffusers`):
# the distilled schedule with no guidance, a duration head (`num_frames` omitted: 1 to 20 s), a Gemma 4 prompt
# enhancer (`google/gemma-4-E2B-it`, `LTX2_5_T2V_DEFAULT_SYSTEM_PROMPT` / `LTX2_5_I2V_...`), CRF 18 images.
_LTX25 = dict(version="2.5", pipeline="LTX2DFRPipeline", distilled=True, guidance=1.0, image_crf=18,
              duration_head=True, prompt_enhancer="gemma-4-E2B-it (LTX2_5 default system prompts)",
              max_duration=20.0)
_DISTILLED = dict(distilled=True, guidance=1.0)
# revision of a tiny model: bump when the code that builds its weights changes (it is their cache identity).
_TINY = dict(tiny=True, max_duration=20.0)

BUILTIN_MODELS: dict[str, ModelInfo] = {
    # LTX-2 (19B, January 2026), Diffusers layout in Lightricks/LTX-2 (latent_upsampler/ folder beside the
    # components). The Diffusers LTX-2 two-stage recipe (docs/source/en/api/pipelines/ltx2.md) passes guidance 4.0
    # and leaves the rest to LTX2Pipeline's defaults: audio guidance 7.0, STG 1.0, modality 3.0; its docstring
    # recommends STG block 29 for LTX-2.0 (28 is LTX-2.3's) and the legacy use_cross_timestep=False for 2.0.
    # MLX: the unified mlx-video-with-audio 0.1.37 default (notapalindrome/ltx2-mlx-av).
    "ltx-2": ModelInfo(
        name="ltx-2",
        family="ltx2",
        diffusers_repo="Lightricks/LTX-2",
        mlx_repo="notapalindrome/ltx2-mlx-av",
        mlx_text_encoder_repo=GEMMA3_MLX,
        max_duration=20.0,
        guidance=4.0,
        audio_guidance=7.0,
        stg_scale=1.0,
        stg_block=29,
        modality_scale=3.0,
        size_gb=42.0,
        stage2_lora_repo=LTX2_STAGE2_LORA[0],
        stage2_lora=LTX2_STAGE2_LORA[1],
    ),
    # LTX-2 distilled (8 steps, no guidance: the fast pipeline Lightricks recommends). Lightricks ships it only as a
    # single file (ltx-2-19b-distilled.safetensors in Lightricks/LTX-2); the Diffusers LTX-2 docs' "Distilled
    # checkpoint generation" example (docs/source/en/api/pipelines/ltx2.md) loads this conversion, with its own
    # latent_upsampler/ folder: rootonchair/LTX-2-19b-distilled.
    "ltx-2-distilled": ModelInfo(
        name="ltx-2-distilled",
        family="ltx2",
        diffusers_repo="rootonchair/LTX-2-19b-distilled",
        size_gb=42.0,  # (on MLX, `ltx-2` already runs the distilled 8 + 3 step schedule)
        **_DISTILLED,
    ),
    # LTX-2.3 (22B): Diffusers layout in the diffusers organisation (NVIDIA NeMo's model coverage page
    # "LTX-2.3-Diffusers, HF Org diffusers"; the distilled sibling https://huggingface.co/diffusers/
    # LTX-2.3-Distilled-Diffusers is an LTX2Pipeline with an LTX2VocoderWithBWE).
    "ltx-2.3": ModelInfo(
        name="ltx-2.3",
        family="ltx2",
        diffusers_repo="diffusers/LTX-2.3-Diffusers",
        size_gb=46.0,
        stage2_lora_repo=LTX23_STAGE2_LORA[0],
        stage2_lora=LTX23_STAGE2_LORA[1],
        **_LTX23,
    ),
    "ltx-2.3-distilled": ModelInfo(
        name="ltx-2.3-distilled",
        family="ltx2",
        diffusers_repo="diffusers/LTX-2.3-Distilled-Diffusers",  # its model card on huggingface.co
        size_gb=46.0,
        **{**_LTX23, **_DISTILLED, "audio_guidance": None, "stg_scale": 0.0, "modality_scale": 1.0},
    ),
    # LTX-2.3 distilled, 4-bit, for mlx-video-with-audio 0.1.37 (its README's q4 checkpoint, ~19 GB).
    "ltx-2.3-q4": ModelInfo(
        name="ltx-2.3-q4",
        family="ltx2",
        mlx_repo="dgrauet/ltx-2.3-mlx-distilled-q4",
        mlx_text_encoder_repo=GEMMA3_MLX,
        size_gb=19.4,
        **{**_LTX23, **_DISTILLED, "audio_guidance": None, "stg_scale": 0.0, "modality_scale": 1.0},
    ),
    # LTX-2.5: https://huggingface.co/Lightricks/LTX-2.5-Diffusers (gated: accept the licence on the page first),
    # the repository the LTX2DFRPipeline docstring loads.
    "ltx-2.5": ModelInfo(
        name="ltx-2.5",
        family="ltx2",
        diffusers_repo="Lightricks/LTX-2.5-Diffusers",
        size_gb=60.0,
        **_LTX25,
    ),
    "ltx-video": ModelInfo(
        name="ltx-video",
        family="ltx",
        diffusers_repo="Lightricks/LTX-Video",
        has_audio=False,
        max_duration=10.0,
        guidance=3.0,
        size_gb=9.5,
        version="",
        image_crf=0,
    ),
    # The tiny models: each family's real pipeline classes with random weights (noise), built in code by
    # hotfolder.backends.diffusers.tiny; guidance off (noise whatever the guidance). Non-distilled ones carry a tiny
    # distilled LoRA for production's stage 2, saved in the real file's format.
    "tiny": ModelInfo(name="tiny", family="ltx2", guidance=1.0, revision="builtin-1",
                      stage2_lora_repo="builtin", stage2_lora="tiny-distilled-lora.safetensors", **_TINY),
    "tiny-distilled": ModelInfo(name="tiny-distilled", family="ltx2", revision="builtin-1",
                                **{**_DISTILLED, **_TINY}),
    "tiny-2.3": ModelInfo(name="tiny-2.3", family="ltx2", revision="builtin-1", stage2_lora_repo="builtin",
                          stage2_lora="tiny-2.3-distilled-lora.safetensors",
                          **{**_LTX23, "guidance": 1.0, "audio_guidance": None, "stg_scale": 0.0,
                             "modality_scale": 1.0, **_TINY}),
    "tiny-2.5": ModelInfo(name="tiny-2.5", family="ltx2", revision="builtin-1",
                          **{**_LTX25, "prompt_enhancer": "tiny Gemma 4 (LTX2_5 default system prompts)", **_TINY}),
    "tiny-ltx-video": ModelInfo(
        name="tiny-ltx-video",
        family="ltx",
        tiny=True,
        has_audio=False,
        guidance=1.0,
        max_duration=20.0,
        revision="builtin-1",
        version="",
        image_crf=0,
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

# Denoising steps when neither the job nor its model says (each model's own are `ModelInfo.steps(mode)`).
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

# What a job file may hold; `job/spec.py` gives each key its rule. Kept with the other job tables
# so that the config file's check can tell a job key written at its top level ("put it under [defaults]").
JOB_KEYS = (
    "prompt", "negative_prompt", "format", "mode", "duration", "fps", "seed", "steps", "width", "height",
    "priority", "cache", "backend", "model", "enhance_prompt", "image", "audio", "output", "jobs",
)  # fmt: skip
JOB_TABLES: dict[str, tuple[str, ...]] = {
    "audio": ("file", "generate", "tts"),
    "output": ("name", "gif", "thumbnail"),
    "image": ("file", "strength"),
}


@dataclass(frozen=True)
class Setting:
    """What one key of the config file (or of a [models.NAME] table) may be set to."""

    kind: str  # "number" | "integer" | "bool" | "text" | "path" | "choice" | "table"
    allowed: str = ""  # the rule in words, for the message
    ok: Callable[[Any], bool] = lambda value: True
    choices: Callable[[], tuple[str, ...]] = tuple  # "choice": read when checked (tests add backends)


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda value: value >= low


def _above(low: float) -> Callable[[Any], bool]:
    return lambda value: value > low


# Where generation runs: "local" (this process, one resident model) or "ray" (actors on a Ray cluster).
EXECUTORS = ("local", "ray")

CONFIG_KEYS: dict[str, Setting] = {
    "root": Setting("path"),
    "settle_seconds": Setting("number", "give seconds, 0 or more", _at_least(0)),
    "rescan_seconds": Setting("number", "give seconds greater than 0 (the inbox is rescanned this often)", _above(0)),
    "backend": Setting("choice", choices=lambda: ("auto", *BACKEND_MODULES)),
    "model": Setting("text", "give a model name from [models] (`hotfolder models list`) or a folder of weights"),
    "max_prompt_bytes": Setting("integer", "give a whole number of bytes greater than 0", _above(0)),
    "max_attachment_bytes": Setting("integer", "give a whole number of bytes greater than 0 (2 GiB is 2147483648)",
                                    _above(0)),
    "attachment_wait_seconds": Setting("number", "give seconds, 0 or more", _at_least(0)),
    "max_attempts": Setting("integer", "give a whole number, 1 or more (1: a failed generation is not tried again)",
                            _at_least(1)),
    "retry_backoff_seconds": Setting("number", "give seconds, 0 or more", _at_least(0)),
    "cache_dir": Setting("path"),
    "cache_max_bytes": Setting("integer", "give a whole number of bytes, 0 or more (20 GiB is 21474836480; "
                               "0 keeps nothing)", _at_least(0)),
    "log_dir": Setting("path"),
    "state_dir": Setting("path"),
    "polling": Setting("bool"),
    "idle_unload_minutes": Setting("number", "give minutes, 0 or more (0 keeps the model loaded)", _at_least(0)),
    "mlx_keep_text_encoder": Setting("bool"),
    "mlx_memory_limit_gb": Setting("number", "give GiB (2**30 bytes) greater than 0", _above(0)),
    "mlx_cache_limit_gb": Setting("number", "give GiB (2**30 bytes), 0 or more", _at_least(0)),
    "memory_check": Setting("bool"),
    "notifications": Setting("bool"),
    "executor": Setting("choice", choices=lambda: EXECUTORS),
    "ray_address": Setting("text", 'give a Ray cluster\'s address: "auto" (the cluster `ray start` made on this machine), '
                           '"HOST:6379" (its head node) or "ray://HOST:10001" (Ray Client)'),
    "workers": Setting("integer", "give a whole number of workers, 1 or more (leave it out for one per GPU in the "
                       "cluster)", _at_least(1)),
    "defaults": Setting("table", "job keys for every job, like duration = 8.0"),
    "presets": Setting("table", "one table per inbox folder, like [presets.longform] with mode = \"production\""),
    "models": Setting("table", "one table per model, like [models.my-ltx] with diffusers_repo = \"me/my-ltx\""),
}

# The keys of a [models.NAME] table: ModelInfo's fields (its name is the table's name).
MODEL_FAMILIES = ("ltx2", "ltx")
_REPO = 'give a Hugging Face repository, like "Lightricks/LTX-2"'
MODEL_KEYS: dict[str, Setting] = {
    "family": Setting("choice", choices=lambda: MODEL_FAMILIES),
    "diffusers_repo": Setting("text", _REPO),
    "mlx_repo": Setting("text", _REPO),
    "mlx_text_encoder_repo": Setting("text", _REPO),
    "revision": Setting("text", "give a branch, tag or commit of the repository"),
    "has_audio": Setting("bool"),
    "max_duration": Setting("number", "give seconds greater than 0", _above(0)),
    "guidance": Setting("number", "give a number, 0 or more", _at_least(0)),
    "tiny": Setting("bool"),
    "size_gb": Setting("number", "give the weights' size in GB (10**9 bytes), 0 or more", _at_least(0)),
    "local_path": Setting("path"),
    "version": Setting("choice", choices=lambda: MODEL_VERSIONS),
    "pipeline": Setting("choice", choices=lambda: PIPELINES),
    "distilled": Setting("bool"),
    "steps_preview": Setting("integer", "give a whole number of denoising steps from 1 to 200",
                             lambda v: 1 <= v <= 200),
    "steps_production": Setting("integer", "give a whole number of denoising steps from 1 to 200",
                                lambda v: 1 <= v <= 200),
    "audio_guidance": Setting("number", "give a number, 0 or more (the audio's classifier-free guidance)",
                              _at_least(0)),
    "stg_scale": Setting("number", "give a number, 0 or more (0 turns spatio-temporal guidance off)", _at_least(0)),
    "stg_block": Setting("integer", "give the index of a transformer block, 0 or more (29 for LTX-2, 28 for "
                         "LTX-2.3)", _at_least(0)),
    "modality_scale": Setting("number", "give a number, 1 or more (1 turns modality guidance off)", _at_least(1)),
    "fps": Setting("number", "give frames per second from 1 to 60", lambda v: 1 <= v <= 60),
    "image_crf": Setting("integer", "give an H.264 CRF from 0 (no re-compression) to 51 (33 through LTX-2.3, 18 "
                         "from LTX-2.5)", lambda v: 0 <= v <= 51),
    "image_to_video": Setting("bool"),
    "duration_head": Setting("bool"),
    "prompt_enhancer": Setting("text", "give the prompt enhancer's name (it is part of the cache key)"),
    "stage2_lora_repo": Setting("text", _REPO),
    "stage2_lora": Setting("text", 'give the LoRA file\'s name in stage2_lora_repo, like '
                           '"ltx-2-19b-distilled-lora-384.safetensors"'),
}
MODEL_VERSIONS = ("2", "2.3", "2.5", "")
PIPELINES = ("LTX2Pipeline", "LTX2DFRPipeline", "LTXPipeline")
CONFIG_MAX_BYTES = 1024 * 1024  # a config file is a few kB: more is a wrong file

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
    max_attachment_bytes: int = 2 * 1024**3  # 2 GiB: an image or audio file a job names
    attachment_wait_seconds: float = 300.0  # how long a loose job file waits for the files it names
    max_attempts: int = 2
    retry_backoff_seconds: float = 5.0  # first retry after this; each later one waits 4x longer (max 5 min)
    cache_dir: Path = field(default_factory=lambda: Path(platformdirs.user_cache_dir(APP)))
    cache_max_bytes: int = 20 * 1024**3  # 20 GiB
    log_dir: Path = field(default_factory=lambda: Path(platformdirs.user_log_dir(APP)))
    state_dir: Path = field(default_factory=lambda: Path(platformdirs.user_state_dir(APP)))
    polling: bool = False
    idle_unload_minutes: float = 30.0  # free the model after this long without a job; 0 keeps it forever
    mlx_keep_text_encoder: bool = True  # False: load Gemma per job (Gemma + LTX-2 in bf16 exceed 64 GB)
    mlx_memory_limit_gb: float | None = None  # GiB (2**30 bytes)
    mlx_cache_limit_gb: float | None = None  # GiB
    memory_check: bool = True  # refuse a model whose estimate exceeds this machine's memory (backends/memory.py)
    notifications: bool = True
    executor: str = "local"  # "ray": generation runs on a Ray cluster's actors (daemon/cluster.py)
    ray_address: str = "auto"  # the cluster the "ray" executor joins
    workers: int | None = None  # Ray actors (jobs in flight); None: one per GPU (or mlx slot) in the cluster
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
            family, extra = "ltx2", {}
            index = path / "model_index.json"
            text = index.read_text(errors="replace") if index.is_file() else ""
            if '"LTXPipeline"' in text:
                family, extra = "ltx", {"version": "", "image_crf": 0}
            elif '"LTX2DFRPipeline"' in text:  # an LTX-2.5 folder: run as ltx-2.5 is
                extra = {k: v for k, v in _LTX25.items() if k != "prompt_enhancer"}
            return ModelInfo(name=str(path), family=family, has_audio=family == "ltx2", local_path=str(path), **extra)
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
    """Build the Config: defaults < config.toml < environment < flags.

    The file is checked first, every key at once: a UsageError (exit 2) names the file,
    each key, its value and what is allowed. Its job keys ([defaults], presets) are checked
    with the job rules by `job.spec.check_config`.
    """
    env = os.environ if env is None else env
    explicit = config_file is not None
    path = config_file or default_config_file()
    data: dict[str, Any] = {}
    exists = os.path.lexists(path)
    if exists:
        try:
            data = load_toml(read_text_file(path, limit=CONFIG_MAX_BYTES, follow_links=True,
                                            limit_note="for a config file"), example='model = "ltx-2"')
        except TextInvalid as e:
            raise UsageError(f"config file {path}: {e.problem.message}. Fix it there, or move it away and run "
                             "`hotfolder config init` for a fresh documented one.") from None
    elif explicit:
        raise UsageError(f"config file {path} does not exist. Create it with `hotfolder config init` or drop --config.")
    problems = check_settings(data)
    if problems:
        raise UsageError(config_problems(path, problems))

    kwargs: dict[str, Any] = {"config_file": path if exists else None}
    origins: dict[str, str] = {}
    in_file = f"config file {path}"
    for key, value in data.items():
        if key in PATH_KEYS:
            kwargs[key] = Path(value).expanduser()
        elif key not in TABLE_KEYS and key != "root":  # a plain setting: a Config field of the same name
            kwargs[key] = float(value) if CONFIG_KEYS[key].kind == "number" else value
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
            models[name] = replace(base, name=name, **{k: float(v) if MODEL_KEYS[k].kind == "number" else v
                                                       for k, v in table.items()})
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


def config_problems(path: Path | None, problems: list[Problem]) -> str:
    """The UsageError text for a config file's problems: the file, then each problem on its own line."""
    where = f"config file {path}" if path is not None else "the configuration"
    unique = list(dict.fromkeys(p.message for p in problems))
    body = f" {unique[0]}" if len(unique) == 1 else "\n  " + "\n  ".join(unique)
    return (f"{where}:{body}\nFix it there (`hotfolder config show` prints every value and where it came from; "
            "`hotfolder config init` writes a documented file).")


# --- The config file's settings ------------------------------------------------------


def check_settings(data: Mapping[str, Any]) -> list[Problem]:
    """Every problem of a config file's table, except its job keys (those are `job.spec.check_config`'s)."""
    problems: list[Problem] = []
    check = Checker({key: Field(value, "") for key, value in data.items()}, problems)
    for key in data:
        if key not in CONFIG_KEYS:
            problems.append(_unknown_setting(key))
        else:
            check.setting(key, CONFIG_KEYS[key])
    for table in TABLE_KEYS:
        if isinstance(data.get(table), Mapping) and table != "defaults":
            for name, value in data[table].items():
                if not isinstance(value, Mapping):
                    check.fields[f"{table}.{name}"] = Field(value, "")
                    check.bad(f"{table}.{name}", f"write it as a table, a line [{table}.{name}] followed by its keys")
                elif table == "models":
                    _check_model(name, value, problems)
                elif name in ("", ".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
                    problems.append(Problem(f"[presets.{json.dumps(name)}]: a preset's name is its inbox folder's "
                                            "(inbox/NAME/): give a plain folder name, like [presets.longform]",
                                            key=f"presets.{name}"))  # fmt: skip
    defaults = data.get("defaults")
    if isinstance(defaults, Mapping):  # these two move onto Config itself (--model and --backend override them)
        sub = Checker({f"defaults.{k}": Field(defaults[k], "") for k in ("model", "backend") if k in defaults},
                      problems)
        for key in ("model", "backend"):
            sub.setting(f"defaults.{key}", CONFIG_KEYS[key])
    return problems


def _unknown_setting(key: str) -> Problem:
    """`key 'settle_secnds' is not a setting; did you mean ...`, or where a job key belongs."""
    if key in JOB_KEYS:
        table = f"[defaults.{key}]" if key in JOB_TABLES else "[defaults]"
        advice = (f" is a job key: put it under [defaults] to apply it to every job (a line {table} above it), "
                  "or into the job files themselves")
        return Problem(f"key '{key}'{advice}", key=key)
    advice = did_you_mean(key, CONFIG_KEYS) or f"; the settings are {', '.join(sorted(CONFIG_KEYS))}"
    return Problem(f"key '{key}' is not a setting{advice}", key=key)


def _check_model(name: str, table: Mapping[str, Any], problems: list[Problem]) -> None:
    """One [models.NAME] table: known keys of the right kind, and weights to load when the model is new."""
    prefix = f"models.{name}"
    check = Checker({f"{prefix}.{k}": Field(v, "") for k, v in table.items()}, problems)
    unknown = [key for key in table if key not in MODEL_KEYS]
    for key in table:
        label = f"{prefix}.{key}"
        if key in MODEL_KEYS:
            check.setting(label, MODEL_KEYS[key])
        elif key in CONFIG_KEYS:
            problems.append(Problem(f"key '{label}' is a setting, not a model key: put it at the top of the file, "
                                    "above the first [table] line", key=label))  # fmt: skip
        else:
            advice = did_you_mean(key, MODEL_KEYS) or (f"; the model keys are {', '.join(MODEL_KEYS)} (its name "
                                                        f"is the table's: [models.{name}])")
            problems.append(Problem(f"key '{label}' is not a model key{advice}", key=label))
    weights = ("diffusers_repo", "mlx_repo", "local_path")
    if name not in BUILTIN_MODELS and not unknown and not any(table.get(k) for k in weights):
        problems.append(Problem(f"[models.{name}] names no weights: give diffusers_repo, mlx_repo or local_path "
                                "(a folder of weights)", key=prefix))  # fmt: skip


# --- Files people write: read, parse, check (the config file and job files) ----------


class TextInvalid(UsageError):
    """A file a person wrote cannot be read as text or TOML; `problem` says why (and where).

    `job/spec.py` turns it into a JobInvalid for the job file, `load_config` into a
    UsageError naming the config file; should one escape, it still reads well (exit 2).
    """

    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(problem.message)


def file_kind(mode: int) -> str:
    """What a file that is not a plain file is, in words: "a named pipe (FIFO)", "a folder", ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"


NEVER_FOLLOWS = "hotfolder never follows links: copy the file itself"


def read_text_file(path: Path, *, limit: int, limit_note: str, follow_links: bool = False) -> str:
    """The UTF-8 text of the plain file at `path`: at most `limit` bytes, never blocking, never a link.

    Only a plain file is opened: a named pipe, a socket or a device is refused from its
    lstat, before any open (a pipe with no writer would block its reader forever). The
    open itself refuses a link (O_NOFOLLOW, unless `follow_links`: the config file may be
    one) and cannot block (O_NONBLOCK); fstat then checks again what was opened. No more
    than `limit` + 1 bytes are read, whatever the file's size. `limit_note` says whose
    limit it is ("for a job file (max_prompt_bytes in the config file)"). An empty file
    is "" (the caller decides whether that is allowed). Raises TextInvalid.
    """

    def invalid(message: str) -> TextInvalid:
        return TextInvalid(Problem(message))

    try:
        st = os.stat(path) if follow_links else os.lstat(path)
    except OSError as e:
        raise invalid(f"the file cannot be read ({e.strerror or e})") from None
    if stat.S_ISLNK(st.st_mode):
        raise invalid(f"the file is a symbolic link; {NEVER_FOLLOWS}")
    if not stat.S_ISREG(st.st_mode):
        raise invalid(f"the file is {file_kind(st.st_mode)}, not a plain file: save it as an ordinary text file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:  # replaced by a link since the lstat
            raise invalid(f"the file is a symbolic link; {NEVER_FOLLOWS}") from None
        raise invalid(f"the file cannot be read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced since the lstat
            raise invalid(f"the file is {file_kind(st.st_mode)}, not a plain file: save it as an ordinary text file")
        os.set_blocking(fd, True)  # a plain file: a blocking read lets a cloud file (iCloud) be fetched
        chunks: list[bytes] = []
        left = limit + 1  # the file may still grow: never read more than the limit (and one byte to tell)
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise invalid(f"the file cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        size = max(st.st_size, len(data))
        raise invalid(f"the file is {size:,} bytes, over the limit of {limit:,} bytes {limit_note}")
    return _decode(data, invalid)


def _decode(data: bytes, invalid: Callable[[str], TextInvalid]) -> str:
    """UTF-8 text, or why not: UTF-16, binary, or the first byte that is not UTF-8 (offset and line)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise invalid("the file is saved as UTF-16 text: save it as UTF-8 text instead")
    if b"\x00" in data:
        raise invalid("the file is not a text file (it holds binary data): save it as plain UTF-8 text")
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # editors on Windows add a UTF-8 mark; it is harmless
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = bom + e.start
        line = data.count(b"\n", 0, offset) + 1
        raise invalid(
            f"the file is not UTF-8 text (byte 0x{data[offset]:02X} at byte offset {offset}, line {line}, "
            f"cannot be read): save it as UTF-8 text"
        ) from None


def load_toml(text: str, *, example: str) -> dict[str, Any]:
    """The TOML table of `text`, or TextInvalid: the line and column of a syntax error, and a hint.

    Anything the parser raises on hostile text (nesting deeper than Python's recursion,
    numbers of thousands of digits) is a message too, never a traceback. `example` is
    a correct line to show when a value lacks its quotes.
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, column, reason = _toml_error_position(e, text)
        hint = ""
        if reason.lower().startswith("invalid value") and _starts_a_word(text, line, column):
            hint = f" (text must be in double quotes, like {example})"
        where = f"line {line}, column {column}"
        if "at end of document" in str(e):
            where += " (the end of the file)"
        raise TextInvalid(Problem(f"the TOML is not valid at {where}: {reason}{hint}", line=line, column=column)) \
            from None
    except RecursionError:
        raise TextInvalid(Problem("the TOML is nested too deeply (lists or tables inside each other hundreds of "
                                  "levels deep): write plain keys and values")) from None  # fmt: skip
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        reason = str(e).split(";")[0]
        raise TextInvalid(Problem(f"the TOML cannot be read ({reason}): write numbers of at most 19 digits"))\
            from None
    except Exception as e:  # noqa: BLE001 - whatever else hostile text makes the parser raise
        raise TextInvalid(Problem(f"the TOML cannot be read ({type(e).__name__}: {e})")) from None


def _starts_a_word(text: str, line: int | None, column: int | None) -> bool:
    """Whether the syntax error points at a letter: an unquoted word, the usual reason for "invalid value"."""
    lines = text.splitlines()
    if not line or not column or line > len(lines) or column > len(lines[line - 1]):
        return False
    return lines[line - 1][column - 1].isalpha()


def _toml_error_position(e: tomllib.TOMLDecodeError, text: str) -> tuple[int, int, str]:
    """(line, column, reason) of a TOML error: Python 3.14 has attributes, 3.11 only the message."""
    if getattr(e, "lineno", None) and getattr(e, "colno", None):
        return e.lineno, e.colno, getattr(e, "msg", str(e))  # type: ignore[attr-defined]
    message = str(e)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", message)
    if match:
        return int(match.group(1)), int(match.group(2)), message[: match.start()]
    reason = re.sub(r"\s*\(at end of document\)\s*$", "", message)
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1, reason


@dataclass(frozen=True)
class Field:
    """One value of a checked file and the layer it came from ("" for the file itself)."""

    value: Any
    origin: str


class Checker:
    """Type and range checks over a file's fields; each failure becomes a Problem naming key, value and rule.

    Every method returns the value when it is present and valid, else None (missing or
    wrong). `label` and `where` say how a key is named and where its value came from;
    the job file's checker (job/spec.py) names batch entries and presets there.
    """

    def __init__(self, fields: dict[str, Field], problems: list[Problem]):
        self.fields = fields
        self.problems = problems

    def label(self, key: str, origin: str) -> str:
        return key

    def where(self, origin: str) -> str:
        return f" (set by {origin})" if origin else ""

    def bad(self, key: str, allowed: str, *, verb: str = "is not allowed") -> None:
        """`duration = -3 is not allowed: give seconds greater than 0 ...`"""
        self.say(key, f"{verb}: {allowed}")

    def say(self, key: str, text: str) -> None:
        """A problem that starts with the key and the value as written, and ends with where the value came from."""
        f = self.fields[key]
        label = self.label(key, f.origin)
        value = f.value if isinstance(f.value, (str, int, float, bool)) else show(f.value)
        self.problems.append(Problem(f"{label} = {show(f.value)} {text}{self.where(f.origin)}", key=label, value=value))

    def text(self, key: str) -> str | None:
        if key not in self.fields:
            return None
        value = self.fields[key].value
        if not isinstance(value, str):
            self.bad(key, f"give text in double quotes, not {kind(value)}")
            return None
        return value

    def boolean(self, key: str) -> bool | None:
        if key not in self.fields:
            return None
        value = self.fields[key].value
        if not isinstance(value, bool):
            self.bad(key, f"give true or false (without quotes), not {kind(value)}")
            return None
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        if key not in self.fields:
            return None
        value = self.fields[key].value
        if not isinstance(value, str) or value not in choices:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            self.bad(key, f"give {one_of(choices)}{hint}")
            return None
        return value

    def integer(self, key: str, lo: int, hi: int, allowed: str) -> int | None:
        if key not in self.fields:
            return None
        value = self.fields[key].value
        if not is_int(value) or not lo <= value <= hi:
            self.bad(key, allowed + ("" if is_number(value) else f", not {kind(value)}"))
            return None
        return value

    def number(self, key: str, ok: Any, allowed: str) -> float | None:
        if key not in self.fields:
            return None
        value = self.fields[key].value
        if not is_number(value) or (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
            self.bad(key, allowed + ("" if is_number(value) else f", not {kind(value)}"))
            return None
        return value

    def setting(self, key: str, rule: Setting) -> Any:
        """A config-file key checked by its `Setting`."""
        if key not in self.fields:
            return None
        value = self.fields[key].value
        if rule.kind == "number":
            return self.number(key, rule.ok, rule.allowed)
        if rule.kind == "integer":
            if is_int(value) and rule.ok(value):
                return value
            self.bad(key, rule.allowed + ("" if is_number(value) else f", not {kind(value)}"))
            return None
        if rule.kind == "bool":
            return self.boolean(key)
        if rule.kind == "choice":
            return self.choice(key, rule.choices())
        if rule.kind == "table":
            if not isinstance(value, Mapping):
                name = key.rpartition(".")[2]
                self.bad(key, f"write it as a table, a line [{name}] followed by its keys: {rule.allowed}")
                return None
            return value
        text = self.text(key)  # "text" and "path"
        if text is not None and not text.strip():
            self.bad(key, "give a folder" if rule.kind == "path" else rule.allowed or "give some text")
            return None
        return text


def did_you_mean(word: str, choices: Any, *, prefix: str = "") -> str:
    """'; did you mean 'X'?' for the closest choice (case-insensitive), or ''."""
    lowered = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{lowered[match[0]]}'?" if match else ""


def one_of(choices: Any) -> str:
    """'"a", "b" or "c"'."""
    items = [f'"{c}"' for c in choices]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def show(value: Any) -> str:
    """A value the way it is written in TOML, shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, list):
        text = "[" + ", ".join(show(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def kind(value: Any) -> str:
    """What a value is, in words: "text", "a whole number", "a table"..."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "text"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return "a date or time"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
