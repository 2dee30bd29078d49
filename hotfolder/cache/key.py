"""The cache key: a SHA-256 over everything that changes the pixels or samples, and the model's identity.

The key (`cache_key`) is computed over a canonical, versioned JSON encoding of the
request (spec section 5). Post-processing (external audio, TTS, GIF, thumbnail,
output name) is not in it: the store keeps the clip *before* post-processing, and
the daemon post-processes the delivered copy. Imports no backend (no torch,
diffusers, mlx): a hit costs a few stats and a clone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from hotfolder import weights

if TYPE_CHECKING:  # attribute access only
    from hotfolder.config import ModelInfo
    from hotfolder.job.spec import JobSpec

# bump when the key, its fields or what is generated change (2: two-stage production; 3: image fit; 4: the model
# table's run settings, stage 2's distilled LoRA, duration = "auto" and the prompt enhancer)
KEY_SCHEMA = 4
DERIVED_SCHEMA = 1  # bump when the way derived files (GIF, thumbnail) are made changes for the same settings

_HEX64 = re.compile(r"[0-9a-f]{64}")


def cache_key(
    spec: JobSpec,
    model: ModelInfo,
    *,
    model_identity: str,
    attachments: Mapping[str, str] = {},  # noqa: B006 - read only
    extra: Mapping[str, Any] = {},  # noqa: B006 - read only
) -> str:
    """The SHA-256 hex key of everything in `spec` that changes the pixels or samples.

    `model_identity` comes from `model_identity()` (weights revision or digest);
    `attachments` maps each conditioning attachment's role (e.g. "image", "audio")
    to the SHA-256 hex of its bytes (`file_sha256`); `extra` carries any other
    generation input the JobSpec grows (e.g. {"image_strength": 1.0}), JSON scalars.
    Not in the key: output name, gif, thumbnail, priority, source, preset, format
    and duration (their effect is in width/height/num_frames; `duration = "auto"` is), external audio / TTS.
    With `enhance_prompt` the key holds the prompt as written and the enhancer's identity, not its output.
    """
    digests: dict[str, str] = {}
    for name, digest in attachments.items():
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
            raise ValueError(f"attachment {name!r}: {digest!r} is not a SHA-256 hex digest")
        digests[str(name)] = digest.lower()
    for name, value in extra.items():
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise TypeError(f"extra {name!r}: {value!r} is not a JSON scalar")
    payload = {
        "v": KEY_SCHEMA,
        "backend": spec.backend,
        "model": model_identity,
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "width": int(spec.width),
        "height": int(spec.height),
        "num_frames": int(spec.num_frames),
        "fps": float(spec.fps),  # 24 and 24.0 are one key
        "steps": int(spec.steps),
        "guidance": float(model.guidance),
        # How the model table says to run it (each can be changed in [models.NAME]): a change is another video.
        "run": {
            "pipeline": model.pipeline_class,
            "distilled": bool(model.distilled),
            "audio_guidance": None if model.audio_guidance is None else float(model.audio_guidance),
            "stg": [float(model.stg_scale), model.stg_block],
            "modality": float(model.modality_scale),
            "image_crf": int(model.image_crf),
            "stage2_lora": f"{model.stage2_lora_repo}/{model.stage2_lora}" if model.stage2_lora else None,
        },
        # duration = "auto": the duration head's choice follows from the rest (num_frames is 0 until then).
        "duration_auto": bool(spec.duration_auto),
        # enhance_prompt: the prompt as written (above) plus who rewrites it: the enhancer, in these weights.
        "enhancer": f"{model.prompt_enhancer}@{model_identity}" if spec.enhance_prompt else None,
        "seed": int(spec.seed),
        "mode": spec.mode,
        # A model without an audio branch makes the same clip either way.
        "generate_audio": bool(spec.generate_audio and model.has_audio),
        "attachments": digests,
        "extra": {str(k): (float(v) if isinstance(v, float) else v) for k, v in extra.items()},
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def derived_name(kind: str, suffix: str, settings: Mapping[str, Any]) -> str:
    """The name, inside a cache entry, of a file made from the clip alone with `settings` (the preview GIF,
    the thumbnail): `<kind>-<16 hex>.<suffix>`, the hex a SHA-256 of the settings, so that other settings
    (another width, another description in the thumbnail's EXIF) name another file and never get this one."""
    blob = json.dumps({"v": DERIVED_SCHEMA, "kind": kind, "settings": dict(settings)}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return f"{kind}-{hashlib.sha256(blob.encode('utf-8')).hexdigest()[:16]}.{suffix}"


def reads_cache(spec: JobSpec) -> bool:
    """Whether a job may be served from the cache (a drawn "random" seed never is)."""
    return spec.cache == "use" and not spec.seed_random


def writes_cache(spec: JobSpec) -> bool:
    """Whether a job's result is stored ("refresh" replaces the entry)."""
    return spec.cache != "off"


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file's bytes (for conditioning attachments)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_identity(model: ModelInfo, backend: str, *, hub_cache: Path | None = None) -> str:
    """What identifies the weights `backend` will load for `model`; offline, never downloads.

    - tiny: `name@revision` (`builtin` when the table gives none; bump the revision
      whenever the code that builds the tiny weights changes).
    - a local folder: `local:<digest>` of its files' relative paths, sizes and mtimes
      (hidden names such as .DS_Store and .cache/ skipped; no file is read).
    - a hub model: `repo@<commit>` as the local Hugging Face cache resolves the
      revision (`refs/<revision>`); falls back to `repo@<revision or main>` when the
      repo is not in the cache. For MLX the text-encoder repo is appended with `+`.
    """
    if model.tiny:
        return f"{model.name}@{model.revision or 'builtin'}"
    if model.local_path:
        return f"local:{_folder_digest(Path(model.local_path).expanduser())}"
    repos = [model.mlx_repo, model.mlx_text_encoder_repo] if backend == "mlx" else [model.diffusers_repo]
    repos = [r for r in repos if r]
    if not repos:
        return f"{model.name}@{model.revision or 'main'}"
    parts = []
    for i, repo in enumerate(repos):
        revision = model.revision if i == 0 else None  # the revision pins the main repo only
        parts.append(f"{repo}@{weights.commit(repo, revision, hub_cache)}")
    return "+".join(parts)


def _folder_digest(root: Path) -> str:
    h = hashlib.sha256()
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            try:
                st = os.stat(path)  # follows links: an HF snapshot folder is links to blobs
                rows.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
            except OSError:
                rows.append(f"{rel}\0broken")
    for row in sorted(rows):
        h.update(row.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()
