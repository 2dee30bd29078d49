"""What a result's files say about themselves: the MP4's tags and the JPEG's description.

Finder's Get Info, Spotlight, QuickTime, VLC and photo viewers show these, so the
prompt and seed travel with a video that is copied anywhere, without its `.json`.
`media.encode_mp4(..., tags=mp4_tags(spec, model))` and
`media.make_thumbnail(..., description=describe(spec, model))` write them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hotfolder import __version__

if TYPE_CHECKING:  # attribute access only
    from hotfolder.config import ModelInfo
    from hotfolder.job.spec import JobSpec

TITLE_MAX = 120  # a player's title bar; the whole prompt is in the comment and description


def describe(spec: JobSpec, model: ModelInfo) -> str:
    """The prompt, then how it was made: "<prompt>\\n\\nseed 42, model ltx-2, 640x352, 121 frames at 24 fps"."""
    made = (f"seed {spec.seed}, model {model.label}, {spec.width}x{spec.height}, "
            f"{spec.num_frames} frames at {spec.fps:g} fps")
    negative = f"\nnegative prompt: {spec.negative_prompt}" if spec.negative_prompt else ""
    return f"{spec.prompt}{negative}\n\n{made} (hotfolder)"


def title(prompt: str) -> str:
    """The prompt's first line, cut at TITLE_MAX characters."""
    line = (prompt.strip().splitlines() or [""])[0].strip()
    return line if len(line) <= TITLE_MAX else line[: TITLE_MAX - 1].rstrip() + "\u2026"


def mp4_tags(spec: JobSpec, model: ModelInfo) -> dict[str, str]:
    """title, comment, description and encoder for `media.encode_mp4(tags=...)` (creation_time: the encode's)."""
    about = describe(spec, model)
    return {"title": title(spec.prompt), "comment": about, "description": about,
            "encoder": f"hotfolder {__version__} ({model.name})"}
