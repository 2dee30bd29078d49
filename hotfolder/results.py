"""Build one result folder: the MP4, GIF, thumbnail, metadata, log and the original job.

Everything is written into the job's staging folder inside processing/; the
daemon then moves the finished folder into the outbox with one rename, so no
one ever sees a half-written result.
"""

from __future__ import annotations

import functools
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from hotfolder import __version__
from hotfolder.config import ModelInfo
from hotfolder.spec import JobSpec
from hotfolder.spool import Job, write_json_atomic

# Distributions whose versions go into every result's metadata (read without importing them).
VERSIONED = ("torch", "diffusers", "transformers", "mlx", "mlx-video-with-audio", "imageio-ffmpeg")


@functools.cache
def versions() -> dict[str, str]:
    """Read once per process: the installed packages do not change under a running daemon."""
    found = {"hotfolder": __version__, "python": platform.python_version()}
    for dist in VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(wall)) + f".{int(wall % 1 * 1000):03d}"


@dataclass
class Timings:
    queued: float  # wall clock of the claim
    started: float = 0.0
    finished: float = 0.0
    load_s: float = 0.0
    generate_s: float = 0.0
    encode_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "queued": iso(self.queued),
            "started": iso(self.started),
            "finished": iso(self.finished),
            "load_s": round(self.load_s, 3),
            "generate_s": round(self.generate_s, 3),
            "encode_s": round(self.encode_s, 3),
            "total_s": round(self.finished - self.started, 3),
            "wait_s": round(self.started - self.queued, 3),
        }


@dataclass
class Outcome:
    """What the generation step produced, for the metadata."""

    backend: str
    device: str
    model: ModelInfo
    cache_hit: bool = False
    cache_key: str | None = None
    has_audio: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def entry_id(job: Job, index: int, count: int) -> str:
    """A batch's entries get their own ids: <job_id>.1, <job_id>.2, ..."""
    return job.job_id if count == 1 else f"{job.job_id}.{index + 1}"


def copy_original(job: Job, dest: Path) -> str:
    """Copy the job file (or the folder's files) as dropped; returns the name in the result."""
    src = job.input_path
    target = dest / src.name
    if target.exists():
        target = dest / f"job-{src.name}"
    if src.is_dir():
        shutil.copytree(src, target, symlinks=True)
    else:
        shutil.copy2(src, target)
    return target.name


def audio_kind(spec: JobSpec, outcome: Outcome) -> str:
    """What the MP4's soundtrack is: generated, a voice-over, narration, or none."""
    base = "voice-over" if spec.audio_file else ("generated" if outcome.has_audio else "")
    if spec.tts:
        return f"{base} + narration" if base else "narration"
    return base or "none"


def write_metadata(
    folder: Path,
    *,
    job: Job,
    index: int,
    count: int,
    spec: JobSpec,
    outcome: Outcome,
    timings: Timings,
    outputs: dict[str, str],
    attachments: list[dict[str, Any]] | None = None,
) -> Path:
    """`<name>.json`: every field of SPEC section 4, plus what a person needs to reproduce it.

    `attachments`: the image, voice-over and narration used (name, kind, sha256, how fitted).
    """
    model = outcome.model
    meta: dict[str, Any] = {
        "job_id": entry_id(job, index, count),
        "source": job.source,
        "batch_index": index if count > 1 else None,
        "status": "done",
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "format": spec.format,
        "mode": spec.mode,
        "duration": spec.duration,
        "width": spec.width,
        "height": spec.height,
        "num_frames": spec.num_frames,
        "fps": spec.fps,
        "seed": spec.seed,
        "seed_random": spec.seed_random,
        "steps": spec.steps,
        "guidance": model.guidance,
        "backend": outcome.backend,
        "model": model.name,
        "model_label": model.label,
        "device": outcome.device,
        "audio": audio_kind(spec, outcome),
        "attachments": attachments or [],
        "cache_hit": outcome.cache_hit,
        "cache_key": outcome.cache_key,
        "adjustments": list(spec.adjustments),
        "timings": timings.to_dict(),
        "outputs": outputs,
        "versions": dict(versions()),
        "backend_info": outcome.info,
    }
    if model.tiny:
        meta["warning"] = "tiny model: random weights, the video and sound are noise (for tests and the demo)"
    path = folder / f"{spec.name}.json"
    write_json_atomic(path, meta)
    return path
