"""A result's metadata back into a job file: "Run again" on the gallery page.

Every value that goes into the cache key is written out as it was resolved (the
size after snapping, the seed that was drawn, the negative prompt even when empty,
so that no `[defaults]` of the config can slip in), so the file, dropped into the
inbox, asks for the same clip and comes back from the cache at once. "Variations"
is the same file with another seed (the page swaps the `seed = ` line).
"""

from __future__ import annotations

from typing import Any

import tomli_w

BACKENDS = ("mlx", "diffusers")  # what a job file may name ("auto" resolved to one of them)
SEED_LINE = "seed = "  # the page's Variations replaces the line that starts with this


def job_toml(meta: dict[str, Any], *, name: str) -> str:
    """The job file (TOML text) that makes this result again; raises ValueError when it cannot."""
    prompt = meta.get("prompt")
    seed = meta.get("seed")
    if not isinstance(prompt, str) or not prompt.strip() or not _is_int(seed):
        raise ValueError("the metadata has no prompt or seed")
    top: dict[str, Any] = {"prompt": prompt, "negative_prompt": _str(meta.get("negative_prompt"))}
    for key in ("format", "mode"):
        if isinstance(meta.get(key), str) and meta[key]:
            top[key] = meta[key]
    if _is_int(meta.get("width")) and _is_int(meta.get("height")):
        top["width"], top["height"] = int(meta["width"]), int(meta["height"])
    for key in ("duration", "fps"):
        value = meta.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            top[key] = int(value) if float(value).is_integer() else float(value)
    if _is_int(meta.get("steps")):
        top["steps"] = int(meta["steps"])
    top["seed"] = int(seed)
    if isinstance(meta.get("model"), str) and meta["model"]:
        top["model"] = meta["model"]
    if meta.get("backend") in BACKENDS:
        top["backend"] = meta["backend"]

    attachments = [a for a in meta.get("attachments") or [] if isinstance(a, dict)]
    notes: list[str] = []
    image = next((a for a in attachments if a.get("kind") == "image" and isinstance(a.get("name"), str)), None)
    if image is not None:
        top["image"] = {"file": image["name"]}
        if isinstance(image.get("strength"), (int, float)):
            top["image"]["strength"] = float(image["strength"])
        notes.append(image["name"])
    audio: dict[str, Any] = {}
    kind = _str(meta.get("audio"))
    if "generated" in kind:
        audio["generate"] = True
    elif kind in ("none", "narration"):
        audio["generate"] = False
    voice = next((a for a in attachments if a.get("kind") == "voice-over" and isinstance(a.get("name"), str)), None)
    if voice is not None:
        audio["file"] = voice["name"]
        notes.append(voice["name"])
    narration = next((a for a in attachments if a.get("kind") == "narration"), None)
    if narration is not None and isinstance(narration.get("text"), str):
        audio["tts"] = narration["text"]
    if audio:
        top["audio"] = audio
    top["output"] = {"name": name}

    header = [f"# Run again: {name}, seed {int(seed)} (model {top.get('model', '?')}).",
              "# Save it as a .toml file in the inbox: the same prompt and seed come back from the cache at once."]
    if notes:
        header.append(f"# Put {' and '.join(notes)} (in the result's folder) next to it.")
    return "\n".join(header) + "\n" + tomli_w.dumps(top)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
