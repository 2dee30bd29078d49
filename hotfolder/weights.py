"""Every question about where a model's weights are, answered by huggingface_hub.

One home, so the daemon (started by launchd or systemd, with their environment),
`hotfolder doctor`, `models list`, the cache key and both backends agree on where
the Hugging Face cache is: `huggingface_hub.constants.HF_HUB_CACHE`, which honours
`HF_HUB_CACHE`, `HF_HOME` and `XDG_CACHE_HOME` exactly as the loaders do. Nothing
here downloads (`local_files_only=True` everywhere) or imports torch or mlx;
`commands/models.py` is the one place that downloads.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotfolder.errors import WeightsMissing

_COMMIT = re.compile(r"[0-9a-f]{40}")
GB = 1000**3  # download sizes are said in decimal GB, as Hugging Face shows them


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub resolves it."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def repo_folder(repo: str, cache: Path | None = None) -> Path:
    """`models--org--name` in the hub cache: where a repository's blobs, refs and snapshots live."""
    from huggingface_hub.file_download import repo_folder_name

    return (cache or hub_cache()) / repo_folder_name(repo_id=repo, repo_type="model")


def pull_hint(model_name: str) -> str:
    return f"Run: hotfolder models pull {model_name}"


def snapshot(repo: str, revision: str | None, *, model_name: str, cache: Path | None = None) -> Path:
    """The local snapshot folder of `repo` at `revision`; WeightsMissing (at once, offline) when absent."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo, revision=revision, local_files_only=True,
                                      cache_dir=str(cache or hub_cache())))
    except Exception as e:  # LocalEntryNotFoundError (a FileNotFoundError), or a broken cache
        raise WeightsMissing(
            f"weights for model {model_name} are not on this machine ({repo} is not in the Hugging Face cache "
            f"at {cache or hub_cache()}).",
            hint=pull_hint(model_name),
        ) from e


def file(repo: str, filename: str, *, model_name: str, what: str = "file", revision: str | None = None) -> Path:
    """One file of `repo` from the local cache; WeightsMissing naming it when absent."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision, local_files_only=True,
                                    cache_dir=str(hub_cache())))
    except Exception as e:
        raise WeightsMissing(
            f"model {model_name} needs the {what} {repo}/{filename}, which is not in the Hugging Face cache.",
            hint=pull_hint(model_name),
        ) from e


def commit(repo: str, revision: str | None, cache: Path | None = None) -> str:
    """The commit the local cache resolves `revision` (default "main") to; the revision itself when absent."""
    revision = revision or "main"
    if _COMMIT.fullmatch(revision):
        return revision
    ref = repo_folder(repo, cache) / "refs" / revision
    try:
        found = ref.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return revision
    return found if _COMMIT.fullmatch(found) else revision


# -- what a repository on this machine holds (for models list, pull and doctor) --------------
@dataclass(frozen=True)
class RepoState:
    """One Hugging Face repository in the local cache."""

    repo: str
    revision: str | None
    bytes: int  # on disk, partial downloads included
    snapshot: Path | None
    problem: str | None  # why it is not complete; None when it is

    @property
    def complete(self) -> bool:
        return self.problem is None


def repo_state(repo: str, revision: str | None, cache: Path | None = None) -> RepoState:
    """What the cache holds of `repo` at `revision`, read from the folder (instant, offline)."""
    cache = cache or hub_cache()
    folder = repo_folder(repo, cache)
    size, partial = _blob_bytes(folder)
    snap = None
    if folder.is_dir():
        rev = commit(repo, revision, cache)
        snap = folder / "snapshots" / rev
        snap = snap if snap.is_dir() else None
    if not folder.is_dir():
        problem = "not downloaded"
    elif snap is None:
        problem = "no snapshot for revision " + (revision or "main")
    elif partial:
        problem = "a download was interrupted"
    else:
        problem = snapshot_problem(snap)
    return RepoState(repo, revision, size, snap, problem)


def _blob_bytes(folder: Path) -> tuple[int, bool]:
    """(bytes of blobs, whether a download was interrupted: an `.incomplete` blob)."""
    total, partial = 0, False
    try:
        entries = list(os.scandir(folder / "blobs"))
    except FileNotFoundError:
        return 0, False
    for e in entries:
        try:
            total += e.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
        partial = partial or e.name.endswith(".incomplete")
    return total, partial


def snapshot_problem(snap: Path) -> str | None:
    """Why a snapshot folder is not a complete download (None when it is).

    Checks what an interrupted pull leaves: links to blobs that never arrived,
    shards named by a `*.safetensors.index.json` that are absent, and Diffusers
    components named by model_index.json without a folder.
    """
    files = [p for p in snap.rglob("*") if not p.is_dir()]
    if not files:
        return "the snapshot is empty"
    broken = [p for p in files if not p.exists()]
    if broken:
        return f"{len(broken)} files not downloaded (e.g. {broken[0].relative_to(snap)})"
    for index in snap.rglob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError):
            return f"{index.relative_to(snap)} is unreadable"
        missing = sorted(s for s in shards if not (index.parent / s).is_file())
        if missing:
            return f"{len(missing)} of {len(shards)} shards missing beside {index.relative_to(snap)}"
    model_index = snap / "model_index.json"
    if model_index.is_file():
        try:
            named = components(json.loads(model_index.read_text(encoding="utf-8")))
        except ValueError:
            return "model_index.json is unreadable"
        missing = [c for c in named if not (snap / c).is_dir()]
        if missing:
            return f"components not downloaded: {', '.join(missing)}"
    return None


def components(index: dict[str, Any]) -> list[str]:
    """The component folders a Diffusers model_index.json names ("vae": ["diffusers", "AutoencoderKL"])."""
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]


def gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


# -- list --------------------------------------------------------------------------
