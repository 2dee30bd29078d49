"""A job file, parsed and validated into frozen `JobSpec`s (one per generation).

Every error names the file, the key, the value and what is allowed. Sizes and
frame counts are snapped to what the backend accepts and each change is kept
in `adjustments`, so the result's metadata and log can say what was changed.

How a job's values are found, lowest first: the config's `[defaults]` < the
preset of the inbox subfolder < the top-level keys of the file < the file's
`[[jobs]]` entry. Each value remembers where it came from, so a message can
say `jobs[2].duration = ...` or "(from preset 'tiktok')".
"""

from __future__ import annotations

import math
import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

from hotfolder.backends import choose
from hotfolder.config import (CONFIG_KEYS, FORMATS, JOB_DEFAULTS, JOB_KEYS, JOB_TABLES, MODE_STEPS, SIZE_MULTIPLE,
                              Checker, Config, Field, ModelInfo, TextInvalid, config_problems, did_you_mean, kind,
                              load_toml, read_text_file, show)
from hotfolder.errors import JobInvalid, Problem, UsageError
from hotfolder.job.names import (AUDIO_FORMATS, AUDIO_SUFFIXES, IMAGE_FORMATS, IMAGE_SUFFIXES, JOB_FILE_SUFFIXES,
                                 RESULT_NAME_MAX_BYTES, fit_name, is_ignored, not_a_job_message)

CacheMode = Literal["use", "off", "refresh"]


@dataclass(frozen=True)
class JobSpec:
    """One generation request, fully resolved: nothing here is left to defaults."""

    source: str  # the job as dropped, relative to the inbox (e.g. "tiktok/cat.toml")
    index: int  # position in a [[jobs]] batch; 0 for a single job
    name: str  # base name of the result files, sanitised
    prompt: str
    negative_prompt: str
    format: str  # linkedin | tiktok | instagram | custom
    mode: str  # preview | production
    duration: float  # seconds, as asked
    fps: float
    seed: int
    seed_random: bool  # seed was "random": drawn at parse time, never a cache hit
    steps: int
    width: int  # snapped
    height: int  # snapped
    num_frames: int  # snapped to 8k+1
    priority: int
    cache: CacheMode
    backend: str  # resolved: "diffusers" or "mlx"
    model: str  # a model table name or a local path
    generate_audio: bool
    gif: bool
    thumbnail: bool
    preset: str | None  # the inbox subfolder that supplied defaults, if any
    adjustments: tuple[str, ...] = ()
    # Attachments (issue 6). Paths are relative to the job's folder as claimed; the daemon
    # hands backends a copy of the spec whose `image` is an absolute path.
    image: str | None = None  # [image] file: image-to-video conditioning
    image_strength: float = 1.0
    image_sha256: str | None = None  # part of the cache key
    audio_file: str | None = None  # [audio] file: replaces the soundtrack (post-processing, not in the key)
    audio_sha256: str | None = None  # the voice-over's digest, for the metadata only
    tts: str | None = None  # [audio] tts: text to narrate (post-processing, not in the key)
    # LTX-2.5 (issue 13). duration = "auto": the model's duration head chooses the length; until the clip exists
    # `duration` is 0.0 and `num_frames` 0, and the clip (and its info's "duration") says what was chosen.
    duration_auto: bool = False
    enhance_prompt: bool = False  # the model's prompt enhancer rewrites the prompt (info keeps both)


# --- What a job file may hold --------------------------------------------------

TOP_KEYS = JOB_KEYS  # the vocabulary lives with the other job tables in config.py; the rules are here
TABLE_KEYS = JOB_TABLES
MODES = tuple(MODE_STEPS)
BACKENDS = ("auto", "mlx", "diffusers")
SEED_MAX = 2**32 - 1
STEPS_RANGE = (1, 200)
FPS_RANGE = (1, 60)
SIZE_RANGE = (64, 4096)
NAME_MAX = 100  # characters; and at most names.RESULT_NAME_MAX_BYTES bytes, with what the daemon adds
MIN_FRAMES = 9
ATTACHMENT_KEYS = ("image.file", "audio.file")  # paths relative to the job's folder
CONFIG_MODEL, CONFIG_DEFAULTS = "the config's model", "the config's [defaults]"  # origins of the config's values
_CONFIG_LAYERS = (CONFIG_MODEL, CONFIG_DEFAULTS)


Fields = dict[str, Field]  # dotted key ("duration", "output.gif") -> value and where it came from ("jobs[2]")


def parse(path: Path, config: Config, *, preset: str | None = None, display_name: str | None = None) -> list[JobSpec]:
    """Parse a `.toml` or `.txt` job file into one JobSpec per generation.

    Raises `JobInvalid` naming every problem found.
    """
    label = display_name or path.name

    # 1. The file itself: job type, size, text encoding. Nothing else can be checked without its text.
    suffix = path.suffix.lower()
    if suffix not in JOB_FILE_SUFFIXES:
        raise JobInvalid(label, [Problem(not_a_job_message(path.name))])
    text = _read_text(path, config, label)

    # 2. The file's own values: a .txt is only a prompt; a .toml is a table, maybe with [[jobs]].
    if suffix == ".txt":
        prompt = text.strip()
        if not prompt:
            raise JobInvalid(label, [Problem("the file holds only spaces or blank lines: write a prompt in it")])
        data: dict[str, Any] = {"prompt": prompt}
    else:
        data = _load_toml(text, label)
    return _specs(data, config, preset=preset, label=label,
                  stem=Path(display_name).stem if display_name else path.stem)


def check_config(config: Config) -> None:
    """The job keys the config file sets ([defaults], each [presets.NAME]) and its model, checked with the
    job rules: a UsageError naming the file, each key, its value and what is allowed.

    Without it a mistake there fails every job that inherits it; with it, the commands refuse at start.
    """
    problems: list[Problem] = []
    for preset in (None, *config.presets):
        try:
            _specs({"prompt": "the config file's check"}, config, preset=preset, label="", stem="check")
        except JobInvalid as e:
            problems.extend(e.problems)
    if problems:
        raise UsageError(config_problems(config.config_file, problems))


def _specs(data: Mapping[str, Any], config: Config, *, preset: str | None, label: str, stem: str) -> list[JobSpec]:
    """Steps 3 to 5: a job file's table over the config's layers, validated and resolved; JobInvalid if wrong."""
    problems: list[Problem] = []

    # 3. The layers under the file: the model default, the config's [defaults], the preset.
    layers: Fields = {"model": Field(config.model, CONFIG_MODEL)}
    layers |= _flatten(config.job_defaults, CONFIG_DEFAULTS, problems)
    if preset is not None:
        if preset not in config.presets:
            problems.append(_unknown_preset(preset, config))
        elif not isinstance(config.presets[preset], Mapping):
            problems.append(Problem(f"preset '{preset}' in the config file is not a table of job keys", key="preset"))
        else:
            layers |= _flatten(config.presets[preset], f"preset '{preset}'", problems)
    top = layers | _flatten(data, "", problems)

    # 4. One set of fields per job: the top level alone, or each [[jobs]] entry over it.
    entries = _batch_entries(data, problems)
    if entries is None:
        jobs = [top]
    else:
        jobs = [top | _flatten(entry, f"jobs[{i}]", problems) for i, entry in enumerate(entries)]

    # 5. Validate and resolve each job; collect every problem before giving up.
    specs: list[JobSpec] = []
    for index, fields in enumerate(jobs):
        spec = _resolve(
            fields, config, problems,
            index=index, batch=len(jobs) > 1, source=label, preset=preset, stem=stem,
        )  # fmt: skip
        if spec is not None:
            specs.append(spec)
    if problems:
        raise JobInvalid(label, problems)
    return specs


# --- Step 1: reading the file -----------------------------------------------------


def _read_text(path: Path, config: Config, label: str) -> str:
    """The file's text, or JobInvalid saying why it cannot be a job: not a plain file (a pipe, a socket,
    a link), empty, too big, binary, not UTF-8. Read as config.py reads every file a person writes."""
    try:
        text = read_text_file(path, limit=config.max_prompt_bytes,
                              limit_note="for a job file (max_prompt_bytes in the config file)")
    except TextInvalid as e:
        raise JobInvalid(label, [e.problem]) from None
    if not text:
        raise JobInvalid(label, [Problem("the file is empty: write a prompt in it")])
    return text


def _load_toml(text: str, label: str) -> dict[str, Any]:
    """The TOML table, or JobInvalid with the line and column of the syntax error (any parser failure is one)."""
    try:
        return load_toml(text, example='prompt = "a red fox in the snow"')
    except TextInvalid as e:
        raise JobInvalid(label, [e.problem]) from None


# --- Steps 2-4: layers of values ---------------------------------------------------


def _flatten(table: Mapping[str, Any], origin: str, problems: list[Problem]) -> Fields:
    """A layer's values under dotted keys, with problems for unknown keys."""
    fields: Fields = {}
    for key, value in table.items():
        label = _label(key, origin)
        if key == "jobs":
            if origin:  # only the top of the file may hold [[jobs]]
                problems.append(Problem(f"{label} is not allowed here: [[jobs]] tables belong in the job file only"
                                        f"{_from(origin)}", key=label))  # fmt: skip
            continue
        if key not in TOP_KEYS:
            problems.append(_unknown_key(key, origin))
            continue
        if key not in TABLE_KEYS:
            fields[key] = Field(value, origin)
            continue
        if not isinstance(value, Mapping):
            problems.append(Problem(
                f"{label} = {show(value)} is not allowed: write it as a table, a line [{key}] followed by "
                f"its keys ({', '.join(TABLE_KEYS[key])}){_from(origin)}", key=label, value=value,
            ))  # fmt: skip
            continue
        for sub, subvalue in value.items():
            dotted = f"{key}.{sub}"
            if sub not in TABLE_KEYS[key]:
                problems.append(_unknown_key(dotted, origin))
            else:
                fields[dotted] = Field(subvalue, origin)
    return fields


def _batch_entries(data: Mapping[str, Any], problems: list[Problem]) -> list[Mapping[str, Any]] | None:
    """The file's [[jobs]] entries (None when it has none); a malformed list is a problem."""
    if "jobs" not in data:
        return None
    jobs = data["jobs"]
    if not isinstance(jobs, list):
        problems.append(Problem(
            f"jobs = {show(jobs)} is not allowed: write each job as its own [[jobs]] table", key="jobs", value=jobs
        ))  # fmt: skip
        return []
    if not jobs:
        problems.append(Problem("jobs = [] holds no jobs: add [[jobs]] tables, or remove jobs", key="jobs", value=[]))
        return []
    entries = []
    for i, entry in enumerate(jobs):
        if isinstance(entry, Mapping):
            entries.append(entry)
        else:
            problems.append(Problem(
                f"jobs[{i}] = {show(entry)} is not allowed: each job must be a [[jobs]] table with its own keys",
                key=f"jobs[{i}]", value=entry,
            ))  # fmt: skip
    return entries


# --- Step 5: one job, validated and resolved ---------------------------------------


def _resolve(
    fields: Fields,
    config: Config,
    problems: list[Problem],
    *,
    index: int,
    batch: bool,
    source: str,
    preset: str | None,
    stem: str,
) -> JobSpec | None:
    """Check one job's merged values and work out everything the backend needs; None if it has problems."""
    found: list[Problem] = []
    adjustments: list[str] = []
    check = _Checker(fields, found)

    # 1. What to show.
    prompt = check.text("prompt")
    if "prompt" not in fields:
        where = f"jobs[{index}]" if batch else "the job"
        found.append(Problem(
            f"{where} has no prompt: add a line like prompt = \"a red fox in the snow\" at the top of the file"
            + (" or in this [[jobs]] entry" if batch else ""), key=f"jobs[{index}].prompt" if batch else "prompt",
        ))  # fmt: skip
    elif prompt is not None:
        prompt = prompt.strip()
        if not prompt:
            check.bad("prompt", "write what the video should show")
    negative_prompt = check.text("negative_prompt") or ""

    # 2. The model, and the backend that will run it.
    model_name = check.text("model")
    model: ModelInfo | None = None
    if model_name is not None:
        model = config.model_info(model_name)
        if model is None:
            known = sorted(config.models)
            check.say("model", f"is not a known model{did_you_mean(model_name, known) or '.'} "
                      f"The models are {', '.join(known)}; a path to a folder of weights also works")  # fmt: skip
    requested = check.choice("backend", BACKENDS) or "auto"
    backend, why = choose.resolve(requested, model, config)
    if model is not None and not choose.runs_on(model, backend):
        other = "mlx" if backend == "diffusers" else "diffusers"
        check.bad("model", f"it has weights only for the {other} backend, and this job runs on {backend} ({why}); "
                  f"use backend = \"{other}\" or another model", verb=f"cannot run on {backend}")  # fmt: skip

    # 3. Mode, steps, format. Each model has its own steps per mode; a distilled one's schedule is fixed.
    mode = check.choice("mode", MODES) or JOB_DEFAULTS["mode"]
    steps = check.integer("steps", *STEPS_RANGE, "give a whole number of denoising steps from 1 to 200")
    if steps is not None and model is not None and model.distilled:
        _lacks(check, "steps", model, f"it is distilled and runs a fixed schedule of {model.steps(mode)} steps "
               "(Diffusers' DISTILLED_SIGMA_VALUES); remove steps, or use a model that is not distilled")
    if steps is None or (model is not None and model.distilled):
        steps = model.steps(mode) if model is not None else MODE_STEPS[mode]
    fmt = check.choice("format", (*FORMATS, "custom")) or JOB_DEFAULTS["format"]

    # 4. Duration and frame rate (the number of frames is worked out with the size, in step 6).
    #    duration = "auto": the model's duration head chooses (LTX-2.5); the frames are known once the clip is.
    limit = model.max_duration if model is not None else None
    duration_auto = "duration" in fields and fields["duration"].value == "auto"
    if duration_auto and model is not None and not model.duration_head:
        _lacks(check, "duration", model, "it has no duration head to choose the length (LTX-2.5 has one); give "
               "seconds instead, like duration = 5.0")
    duration = None if duration_auto else check.number(
        "duration",
        lambda v: v > 0 and (limit is None or v <= limit),
        "give seconds greater than 0"
        + (f" and at most {_num(limit)} (the limit of model '{model.name}')" if model is not None else "")
        + (', or "auto" (the model chooses)' if model is not None and model.duration_head else ""),
    )  # fmt: skip
    fps = check.number("fps", lambda v: FPS_RANGE[0] <= v <= FPS_RANGE[1], "give frames per second from 1 to 60")
    duration = float(duration if duration is not None else JOB_DEFAULTS["duration"])
    if fps is None and model is not None and fields.get("fps", Field(0, CONFIG_DEFAULTS)).origin == CONFIG_DEFAULTS \
            and "defaults.fps" not in config.origins:
        fps = model.fps  # neither the job, its preset nor the config file says: the model's own frame rate
    fps = float(fps if fps is not None else JOB_DEFAULTS["fps"])

    # 4b. The prompt enhancer (LTX-2.5): the prompt as written goes into the cache key, with the enhancer's name.
    enhance_prompt = check.boolean("enhance_prompt") or False
    if enhance_prompt and model is not None and not model.prompt_enhancer:
        _lacks(check, "enhance_prompt", model, "it has no prompt enhancer (LTX-2.5 has one); remove enhance_prompt "
               "and write the prompt out in full")

    # 5. Seed: fixed for reproducible results, or drawn now and recorded.
    seed, seed_random = JOB_DEFAULTS["seed"], False
    if "seed" in fields:
        value = fields["seed"].value
        if value == "random":
            seed, seed_random = secrets.randbelow(2**32), True
            adjustments.append(f'seed "random" drew {seed}')
        else:
            seed = check.integer("seed", 0, SEED_MAX, f'give a whole number from 0 to {SEED_MAX}, or "random"')
            seed = JOB_DEFAULTS["seed"] if seed is None else seed

    # 6. Size: the format's size (halved in preview), or width and height as given; snapped for the backend.
    #    Then frames: duration x fps, snapped to 8k+1.
    width = check.integer("width", *SIZE_RANGE, "give a whole number of pixels from 64 to 4096")
    height = check.integer("height", *SIZE_RANGE, "give a whole number of pixels from 64 to 4096")
    for given, missing in (("width", "height"), ("height", "width")):
        if given in fields and missing not in fields:
            found.append(Problem(
                f"{_label(given, fields[given].origin)} = {show(fields[given].value)} is given without {missing}: "
                f"give both width and height, or neither to use the format's size{_from(fields[given].origin)}",
                key=_label(given, fields[given].origin), value=fields[given].value,
            ))  # fmt: skip
    if fmt == "custom" and ("width" not in fields or "height" not in fields):
        check.bad("format", "add width and height, for example width = 768 and height = 512", verb="needs a size")
    if width is not None and height is not None:
        size = (width, height)
    else:
        size = FORMATS.get(fmt, FORMATS[JOB_DEFAULTS["format"]])
        if mode == "preview":
            size = (size[0] // 2, size[1] // 2)
    width = _snap_size("width", size[0], backend, adjustments)
    height = _snap_size("height", size[1], backend, adjustments)
    if duration_auto:
        duration, num_frames = 0.0, 0
        adjustments.append(f'duration "auto": the duration head of model \'{model.name if model else "?"}\' '
                           f"chooses the length (1 to {_num(limit or 20)} s); the result's metadata says what it chose")
    else:
        num_frames = _snap_frames(duration, fps, adjustments)

    # 7. Queue and cache.
    priority = check.integer("priority", -(2**63), 2**63 - 1, "give a whole number (higher runs first)")
    cache = _cache_mode(check)

    # 8. Outputs and sound.
    gif = check.boolean("output.gif")
    thumbnail = check.boolean("output.thumbnail")
    generate_audio = check.boolean("audio.generate")
    if generate_audio and model is not None and not model.has_audio and _in_job(fields["audio.generate"]):
        _lacks(check, "audio.generate", model, "it makes no sound (LTX-Video is video only); remove it, or use an "
               "LTX-2 model (ltx-2, ltx-2.3, ltx-2.5)")
    generate_audio = True if generate_audio is None else generate_audio
    if generate_audio and model is not None and not model.has_audio:
        generate_audio = False
        adjustments.append(f"audio.generate true -> false (model '{model.name}' makes no sound)")

    # 9. Attachments: paths inside the job's folder (the files themselves are checked after the claim).
    image = _attachment_path(check, "image.file")
    audio_file = _attachment_path(check, "audio.file")
    strength = check.number("image.strength", lambda v: 0 < v <= 1,
                            "give a number greater than 0 and at most 1 (1: the video starts exactly on the image)")
    if image is not None and model is not None and not model.image_to_video:
        _lacks(check, "image.file", model, "hotfolder has no image-to-video path for it; remove [image], or use "
               "ltx-2, ltx-2.3 or ltx-2-distilled")
    if "image.strength" in fields and "image.file" not in fields:
        check.bad("image.strength", 'add the image itself under [image], like file = "first_frame.png"',
                  verb="is given without image.file")  # fmt: skip
    tts = _narration_text(check, prompt)

    # 10. The result's name: [output].name, else the job's name; numbered within a batch.
    #     It is bounded in bytes too, leaving room for the number and for what the daemon adds (names.py).
    raw_name = check.text("output.name")
    numbered = batch and not ("output.name" in fields and fields["output.name"].origin == f"jobs[{index}]")
    number = f"-{index + 1}" if numbered else ""
    name, why = _safe_name(raw_name if raw_name is not None else stem, room=len(number))
    if raw_name is not None and name != raw_name:
        adjustments.append(f"output.name {show(raw_name)} -> {show(name)} ({'; '.join(why)})")
    name += number

    problems.extend(found)
    if found:
        return None
    assert prompt is not None and model is not None
    return JobSpec(
        source=source,
        index=index,
        name=name,
        prompt=prompt,
        negative_prompt=negative_prompt,
        format=fmt,
        mode=mode,
        duration=duration,
        fps=fps,
        seed=seed,
        seed_random=seed_random,
        steps=steps,
        width=width,
        height=height,
        num_frames=num_frames,
        priority=priority or 0,
        cache=cache,
        backend=backend,
        model=model.name,
        generate_audio=generate_audio,
        gif=True if gif is None else gif,
        thumbnail=True if thumbnail is None else thumbnail,
        preset=preset,
        adjustments=tuple(adjustments),
        image=image,
        image_strength=float(strength) if strength is not None else 1.0,
        audio_file=audio_file,
        tts=tts,
        duration_auto=duration_auto,
        enhance_prompt=enhance_prompt,
    )


def attachment_names(spec: JobSpec) -> tuple[str, ...]:
    """The files a job names, relative to its folder, in a stable order."""
    return tuple(name for name in (spec.image, spec.audio_file) if name)


def _attachment_path(check: _Checker, key: str) -> str | None:
    """`file = "voice.mp3"` as a clean relative path inside the job's folder, or None (missing or refused).

    Only the text is judged here; symlinks, sizes and contents are checked on the claimed files.
    """
    value = check.text(key)
    if value is None:
        return None
    relative = 'give a path relative to the job file, like file = "voice.mp3", with the file beside the job file'
    if not value.strip() or "\x00" in value:
        check.bad(key, relative)
        return None
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):  # echoed as written ("https://", never "https:/")
        example = PurePosixPath(urlsplit(value).path).name or "picture.png"
        check.bad(key, "hotfolder downloads nothing; only files in the job's folder can be used: download it into "
                  f'the job\'s folder and name it there, like file = "{example}"', verb="is a web address")
        return None
    if value.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", value):
        check.bad(key, f"{relative} (or inside the job's folder)", verb="is an absolute path, which is not allowed")
        return None
    if "\\" in value:
        check.bad(key, 'separate folder names with "/", like file = "media/voice.mp3"')
        return None
    parts = PurePosixPath(value).parts
    if ".." in parts:
        check.bad(key, f"{relative}; the file must be inside the job's folder", verb="leaves the job's folder ('..')")
        return None
    hidden = next((p for p in parts if is_ignored(p)), None)
    if hidden is not None:
        check.bad(key, f"'{hidden}' is a hidden or temporary name, which hotfolder never touches: rename the file",
                  verb="names a file the inbox ignores")  # fmt: skip
        return None
    if PurePosixPath(value).suffix.lower() in JOB_FILE_SUFFIXES:
        check.bad(key, f"an attachment is an image ({IMAGE_FORMATS}) or an audio file ({AUDIO_FORMATS}), not a job "
                  "file", verb="is not an image or audio file")  # fmt: skip
        return None
    image = key == "image.file"
    suffixes, formats = (IMAGE_SUFFIXES, IMAGE_FORMATS) if image else (AUDIO_SUFFIXES, AUDIO_FORMATS)
    if PurePosixPath(value).suffix.lower() not in suffixes:
        other = "a voice-over goes under [audio]" if image else "a picture goes under [image]"
        swapped = PurePosixPath(value).suffix.lower() in (AUDIO_SUFFIXES if image else IMAGE_SUFFIXES)
        check.bad(key, f"give a file whose name ends in {' '.join(suffixes)}" + (f"; {other}" if swapped else ""),
                  verb=f"is not a {formats} file")
        return None
    return PurePosixPath(value).as_posix()


def _narration_text(check: _Checker, prompt: str | None) -> str | None:
    """`tts = true` narrates the prompt; `tts = "text"` narrates the text; false or absent: no narration."""
    if "audio.tts" not in check.fields:
        return None
    value = check.fields["audio.tts"].value
    if value is True:
        return prompt
    if value is False:
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    allowed = 'give true (narrate the prompt), false, or the text to narrate in double quotes'
    check.bad("audio.tts", allowed if isinstance(value, str) else f"{allowed}, not {kind(value)}")
    return None


class _Checker(Checker):
    """config.py's Checker, naming keys as the job file has them: `jobs[2].duration`, "(set by preset 'tiktok')"."""

    def label(self, key: str, origin: str) -> str:
        return _label(key, origin)

    def where(self, origin: str) -> str:
        return _from(origin)


def _cache_mode(check: _Checker) -> CacheMode:
    """`cache = true | false | "refresh"` as the JobSpec's "use" | "off" | "refresh"."""
    if "cache" not in check.fields:
        return "use"
    value = check.fields["cache"].value
    if value is True:
        return "use"
    if value is False:
        return "off"
    if value == "refresh":
        return "refresh"
    close = {"on": "true", "yes": "true", "use": "true", "off": "false", "no": "false", "none": "false",
             "true": "true", "false": "false"}  # fmt: skip
    hint = ""
    if isinstance(value, str) and value.strip().lower() in close:
        hint = f"; did you mean {close[value.strip().lower()]} (without quotes)?"
    check.bad("cache", f'give true, false or "refresh"{hint}')
    return "use"


def _lacks(check: _Checker, key: str, model: ModelInfo, reason: str) -> None:
    """A job key naming a feature its model lacks: refused with the model and the reason, never ignored."""
    check.say(key, f"cannot be used with model '{model.name}': {reason}")


def _in_job(field: Field) -> bool:
    """Whether a value was written in the job file itself (its top level or a [[jobs]] entry)."""
    return not field.origin or field.origin.startswith("jobs[")


# --- Snapping ---------------------------------------------------------------------


def _snap_size(key: str, value: int, backend: str, adjustments: list[str]) -> int:
    """Nearest multiple the backend accepts, ties upward, at least one multiple."""
    multiple = SIZE_MULTIPLE[backend]
    snapped = max(multiple, (value + multiple // 2) // multiple * multiple)
    if snapped != value:
        adjustments.append(f"{key} {value} -> {snapped} ({backend} needs multiples of {multiple})")
    return snapped


def _snap_frames(duration: float, fps: float, adjustments: list[str]) -> int:
    """round(duration * fps) moved to the nearest 8k+1 (ties upward), at least 9: the video VAE's 8x time step."""
    frames = max(1, math.floor(duration * fps + 0.5))
    snapped = max(MIN_FRAMES, (frames + 3) // 8 * 8 + 1)
    if snapped != frames:
        adjustments.append(f"num_frames {frames} -> {snapped} (frames must be 8k+1)")
    return snapped


def safe_name(raw: str) -> str:
    """A file name safe in any folder and on any file system, with room for what the daemon adds to it:
    letters, digits, space and - _ . kept, others -> '-', no leading dot, at most NAME_MAX characters and
    names.RESULT_NAME_MAX_BYTES bytes (cut between characters), no name Windows reserves (CON -> _CON)."""
    return _safe_name(raw)[0]


def _safe_name(raw: str, *, room: int = 0) -> tuple[str, list[str]]:
    """safe_name, `room` bytes shorter (for a batch's "-2"), and why it differs from `raw`, in words."""
    composed = unicodedata.normalize("NFC", raw)  # macOS hands out decomposed accents; keep "é" one letter
    kept = "".join(c if c.isalnum() or c in " -_." else "-" for c in composed)
    trimmed = kept.lstrip(". ").rstrip()
    budget = RESULT_NAME_MAX_BYTES - room
    name = fit_name(trimmed[:NAME_MAX].rstrip(), budget) if trimmed else "video"
    why = []
    if kept != composed:
        why.append("only letters, digits, spaces and - _ . are kept")
    if trimmed != kept:
        why.append("no dot or space first, no space last")
    if len(trimmed) > NAME_MAX or len(trimmed.encode()) > budget:
        why.append(f"shortened to fit a file name: at most {NAME_MAX} characters and {budget} bytes, with the date "
                   "and number the daemon adds")  # fmt: skip
    if name.startswith("_") and not trimmed.startswith("_"):
        why.append("a name Windows reserves")
    return name, why or ["written in composed Unicode (NFC)"]


# --- Messages ---------------------------------------------------------------------


def _label(key: str, origin: str) -> str:
    """The key as a person finds it in the file: `jobs[2].duration` inside a batch entry."""
    return f"{origin}.{key}" if origin.startswith("jobs[") else key


def _from(origin: str) -> str:
    """Where a value came from when it is not the job file itself."""
    return "" if not origin or origin.startswith("jobs[") else f" (set by {origin})"


def _unknown_key(dotted: str, origin: str) -> Problem:
    """`key 'duraton' is not a job key; did you mean 'duration'?`, or where the key belongs, or the keys allowed."""
    label = _label(dotted, origin)
    table, _, leaf = dotted.rpartition(".")
    homes = [t for t, keys in TABLE_KEYS.items() if leaf in keys]
    if origin in _CONFIG_LAYERS or origin.startswith("preset '"):
        if dotted in CONFIG_KEYS:  # a setting written below the config file's [defaults] or [presets.x] line
            return Problem(f"key '{label}' is a setting, not a job key: put it at the top of the config file, above "
                           f"the first [table] line{_from(origin)}", key=label)  # fmt: skip
    if table and leaf in TOP_KEYS:  # a top-level key written below a [table] line belongs to that table in TOML
        advice = f": {leaf} belongs at the top of the file, above the first [table] line"
    elif table:
        advice = did_you_mean(leaf, TABLE_KEYS[table], prefix=_label(table, origin) + ".")
        advice = advice or f"; [{table}] may hold {', '.join(TABLE_KEYS[table])}"
    elif homes:
        advice = f"; did you mean '{_label(f'{homes[0]}.{leaf}', origin)}'? (put it under [{homes[0]}])"
    else:
        keys = [k for k in TOP_KEYS if k != "jobs"]
        advice = did_you_mean(leaf, keys, prefix=_label("", origin))
        advice = advice or f"; the job keys are {', '.join(keys)}"
        if not origin and dotted in CONFIG_KEYS:
            advice += f" ({dotted} is a setting of the config file, not of a job)"
    return Problem(f"key '{label}' is not a job key{advice}{_from(origin)}", key=label)


def _unknown_preset(preset: str, config: Config) -> Problem:
    known = sorted(config.presets)
    return Problem(
        f"preset '{preset}' (the inbox folder inbox/{preset}/) is not a known preset; "
        f"the presets are {', '.join(known)}{did_you_mean(preset, known)}",
        key="preset",
        value=preset,
    )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
