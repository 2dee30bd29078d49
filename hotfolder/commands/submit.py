"""Put jobs into the inbox atomically, follow them, and check job files without running them.

Every job is staged under `inbox/.incoming/` (a hidden name the daemon ignores): a
lone job file, or a job folder holding the job file and copies of the files it
names (--image, --audio, a job file's own attachments, a job folder given whole).
The staged copy is checked with the daemon's own rules first (the parser, the
attachment checks, the speech engine, and whether this machine has the model's
weights): what the daemon would reject is never submitted. Only when every job
given passes is each moved into the inbox (or its preset folder) with one rename
that never overwrites (`names.move_to_free_name`): two submits of the same name at
the same moment give two jobs.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import tomli_w

from hotfolder import fsutil
from hotfolder.config import Config
from hotfolder.errors import JobInvalid, Problem, UsageError
from hotfolder.folders import status as status_file
from hotfolder.job.attachments import check_job
from hotfolder.job.names import (NAME_MAX_BYTES, fit_name, is_ignored, is_job_file_name, job_file_in_folder,
                                 move_to_free_name, split_name)
from hotfolder.job.spec import JobSpec, attachment_names, parse

INCOMING = ".incoming"
POLL_S = 0.25  # how often --wait looks at the folders and status.json


@dataclass(frozen=True)
class SubmitRequest:
    """What `hotfolder submit` was asked to do: the inputs as given, the options, and what stdin held.

    An input `-` stands for standard input: the caller reads it once into `stdin_text`
    (None when no input is `-`). A second `-` finds it already read, as a stream would be.
    `prompts` (-p/--prompt) are text, never paths.
    """

    inputs: tuple[str, ...]
    prompts: tuple[str, ...] = ()
    preset: str | None = None
    format: str | None = None
    mode: str | None = None
    duration: float | None = None
    seed: str | None = None
    model: str | None = None
    priority: int | None = None
    negative_prompt: str | None = None
    steps: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    name: str | None = None
    image: Path | None = None
    strength: float | None = None
    audio: Path | None = None
    tts: str | None = None
    narrate: bool = False
    wait: bool = False
    timeout: float | None = None
    stdin_text: str | None = None


@dataclass
class Staged:
    """One job to drop, before staging: a job file (name and bytes) with the files to copy beside it,
    or a job folder to copy whole (`folder`), whose job file is replaced by `data` when that is set."""

    name: str  # the job file's name ("lake.toml"), or the job folder's name ("harbour")
    data: bytes | None
    files: dict[str, Path] = field(default_factory=dict)  # name in the job folder -> source
    folder: Path | None = None
    preset: str | None = None
    preset_why: str = ""  # "--preset", "from the folder name"
    given: str = ""  # what the person typed, for messages
    edits: tuple[dict[str, Any], str | None, dict[str, dict[str, Any]]] | None = None  # a folder's: the flags

    @property
    def is_folder(self) -> bool:
        return self.folder is not None or bool(self.files)

    @property
    def drop_name(self) -> tuple[str, str]:
        """(stem, suffix) of what lands in the inbox: the job file, or the job folder (no suffix)."""
        if self.folder is not None:
            return self.name, ""
        stem, suffix = split_name(self.name)
        return (stem, "") if self.files else (stem, suffix)


@dataclass
class Checked:
    """A staged job that passed every check: where it waits, and where it goes."""

    tmp: Path
    dest: Path  # inbox/ or inbox/<preset>/
    stem: str
    suffix: str
    specs: list[JobSpec]


# -- building the jobs from the arguments ---------------------------------------------------------
def _options(request: SubmitRequest) -> dict[str, Any]:
    """The job keys the generation flags set (only keys the job file has)."""
    opts: dict[str, Any] = {}
    for key in ("format", "mode", "duration", "model", "priority", "negative_prompt", "steps", "fps", "width",
                "height"):
        if getattr(request, key) is not None:
            opts[key] = getattr(request, key)
    if isinstance(opts.get("fps"), float) and opts["fps"].is_integer():
        opts["fps"] = int(opts["fps"])
    if request.seed is not None:
        opts["seed"] = request.seed if request.seed == "random" else _int(request.seed, "--seed")
    return opts


def _attachment_flags(request: SubmitRequest) -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    """The [image]/[audio] tables the flags ask for, and the files to copy (name in the job folder -> source)."""
    tables: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}
    for flag, table in (("image", "image"), ("audio", "audio")):
        source = getattr(request, flag)
        if source is None:
            continue
        if not Path(source).is_file():
            raise UsageError(f"--{flag} {source}: no such file")
        name = Path(source).name
        if name in files or is_job_file_name(name) or is_ignored(name):
            name = f"{flag}-{name.lstrip('.')}"
        files[name] = Path(source)
        tables.setdefault(table, {})["file"] = name
    if request.strength is not None:
        if "image" not in tables:
            raise UsageError("--strength goes with --image: it says how closely the video follows the image.")
        tables["image"]["strength"] = request.strength
    if request.tts is not None and request.narrate:
        raise UsageError("use --tts TEXT (narrate TEXT) or --narrate (narrate the prompt), not both.")
    if request.tts is not None:
        tables.setdefault("audio", {})["tts"] = request.tts
    elif request.narrate:
        tables.setdefault("audio", {})["tts"] = True
    return tables, files


def _merge_tables(doc: dict[str, Any], tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for table, values in tables.items():
        current = doc.get(table)
        doc[table] = {**(current if isinstance(current, dict) else {}), **values}
    return doc


def _named_files(path: Path, config: Config) -> dict[str, Path]:
    """The attachments a job file names, found beside it, to be copied into its staged folder."""
    try:
        specs = parse(path, config, display_name=path.name)
    except JobInvalid:
        return {}  # the check of the staged copy reports it
    names = {n for spec in specs for n in attachment_names(spec)}
    return {n: path.parent / n for n in sorted(names)}


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f'{flag} {text!r} is not a whole number (or "random").') from None


def _job_document(text: str, opts: dict[str, Any], name: str | None,
                  tables: dict[str, dict[str, Any]] | None = None) -> bytes:
    doc: dict[str, Any] = {"prompt": text.strip(), **opts}
    if name:
        doc["output"] = {"name": name}
    return tomli_w.dumps(_merge_tables(doc, tables or {})).encode()


def _rewrite(path: Path, data: bytes, opts: dict[str, Any], name: str | None,
             tables: dict[str, dict[str, Any]]) -> tuple[str, bytes]:
    """A job file with the flags applied: (its new name, its bytes). A .txt prompt becomes a .toml job."""
    if path.suffix.lower() == ".txt":
        return f"{path.stem}.toml", _job_document(data.decode("utf-8", "replace"), opts, name, tables)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: {e}") from e
    doc.update(opts)
    if name:
        output = doc.get("output") if isinstance(doc.get("output"), dict) else {}
        doc["output"] = {**output, "name": name}
    return path.name, tomli_w.dumps(_merge_tables(doc, tables)).encode()


def _safe_name(name: str, suffix: str, what: str) -> str:
    """A base name the daemon will read: made safe as one path component, or refused."""
    stem = fit_name(name.strip(), NAME_MAX_BYTES - len(suffix.encode()) - len(" 9999"))
    if is_ignored(stem + suffix) or is_ignored(stem):
        raise UsageError(
            f"{what} {name!r}: the daemon never reads a job named {stem + suffix!r} (hidden and temporary-looking "
            "names such as .x, x.tmp, x.part or ~$x are skipped in the inbox). Choose another name."
        )
    return stem


def _looks_like_path(text: str) -> bool:
    """Whether text that names nothing on disk was meant as a path (then it is an error, not a prompt)."""
    t = text.strip()
    if not t or "\n" in t:
        return False
    one_word = not any(c.isspace() for c in t)
    if one_word and (is_job_file_name(t) or "/" in t or t in (".", "..", "~")):
        return True
    if t.startswith(("/", "~/", "./", "../")):
        # "/Users/me/My Drafts/x" is a path, "/imagine a red fox" a prompt: does its first folder exist?
        parts = Path(t).expanduser().parts
        return len(parts) > 1 and Path(*parts[:2]).exists()
    return False


def _preset_of(path: Path, config: Config, request_preset: str | None) -> tuple[str | None, str]:
    """The preset for a file or folder: --preset, else the folder it lives in when that is named after one."""
    if request_preset is not None:
        return request_preset, "--preset"
    parent = path.absolute().parent.name
    if parent in config.presets:
        return parent, "from the folder name"
    return None, ""


def _staged_jobs(request: SubmitRequest, config: Config) -> list[Staged]:
    """What to drop for each input: prompt text, a job file (with the files it names), a job folder, or stdin."""
    opts = _options(request)
    tables, files = _attachment_flags(request)
    name = request.name
    stem = _safe_name(name, ".toml", "--name") if name is not None else None
    preset_flag = (request.preset, "--preset") if request.preset is not None else (None, "")
    stdin_left = request.stdin_text or ""
    jobs: list[Staged] = []

    def prompt_job(text: str, given: str) -> Staged:
        return Staged(f"{stem or _slug(text)}.toml", _job_document(text, opts, name, tables), dict(files),
                      preset=preset_flag[0], preset_why=preset_flag[1], given=given)

    if not request.inputs and not request.prompts:
        raise UsageError("give a prompt, a job file, a job folder, or - to read the prompt from standard input "
                         "(see hotfolder submit --help).")
    for item in request.inputs:
        path = Path(item).expanduser()
        if item == "-":
            text, stdin_left = stdin_left, ""  # standard input is read once: a second `-` finds it empty
            if not text.strip():
                raise UsageError("nothing on standard input: pipe a prompt into `hotfolder submit -`.")
            jobs.append(prompt_job(text, "standard input"))
        elif path.is_dir():
            preset, why = _preset_of(path, config, request.preset)
            folder_name = stem or _safe_name(path.absolute().name, "", "the folder")
            for rel in files:
                if os.path.lexists(path / rel):
                    raise UsageError(f"{path} already holds a file named {rel}: rename the one you add with "
                                     f"--image/--audio, or put it into the folder and name it in the job file.")
            edits = (opts, name, tables) if (opts or name or tables) else None
            jobs.append(Staged(folder_name, None, dict(files), folder=path, preset=preset, preset_why=why, given=item,
                               edits=edits))
        elif path.is_file():
            preset, why = _preset_of(path, config, request.preset)
            data = path.read_bytes()
            file_stem, suffix = split_name(path.name)
            named = _named_files(path, config) if suffix.lower() == ".toml" else {}
            if opts or name or tables:
                new_name, data = _rewrite(path, data, opts, name, tables)
                file_stem, suffix = split_name(new_name)
            jobs.append(Staged(f"{stem or _safe_name(file_stem, suffix, 'the file')}{suffix}", data,
                               {**named, **files}, preset=preset, preset_why=why, given=item))
        elif _looks_like_path(item):
            raise UsageError(f"{item}: no such file or folder. To submit these words as a prompt, give them "
                             f"with -p: hotfolder submit -p {shlex.quote(item)}")
        else:
            jobs.append(prompt_job(item, item))
    for text in request.prompts:
        if not text.strip():
            raise UsageError("-p/--prompt is empty: write what the video should show.")
        jobs.append(prompt_job(text, text))
    return jobs


def _slug(text: str) -> str:
    """A job's name from its prompt's first words: "A lighthouse in a storm" -> a-lighthouse-in-a-storm."""
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return "-".join(words[:6])[:60].strip("-") or "prompt"


# -- staging and checking ----------------------------------------------------------------------------
def _stage(job: Staged, tmp: Path) -> Path:
    """Write the job at `tmp` under inbox/.incoming/ (a file, or a folder); returns its job file."""
    if not job.is_folder:
        assert job.data is not None
        fsutil.write_new(tmp, job.data, mode=0o644)
        return tmp
    if job.folder is not None:
        # Links are copied as links, so that the check refuses them as the daemon would.
        shutil.copytree(job.folder, tmp, symlinks=True)
        job_file = job_file_in_folder(tmp, job.name)
        if job.edits is not None:
            new_name, data = _rewrite(job_file, job_file.read_bytes(), *job.edits)
            job_file.unlink()
            job_file = tmp / new_name
            job_file.write_bytes(data)
    else:
        tmp.mkdir()
        assert job.data is not None
        job_file = tmp / job.name
        job_file.write_bytes(job.data)
    for rel, source in job.files.items():
        if not source.is_file():
            raise UsageError(f"{source}: no such file (named by {job.given or job.name})")
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp / rel)
    return job_file


def check_path(path: Path, config: Config, *, preset: str | None, label: str, folder: bool) -> list[JobSpec]:
    """What the daemon would make of a job file or job folder: its specs, or JobInvalid naming every problem.

    The parser (with the preset), then the files it names (inside the job's folder, no links, the right
    kind, not cut off) and the speech engine narration needs: the checks `validate` and `submit` share.
    """
    job_file = job_file_in_folder(path, label) if folder else path
    specs = parse(job_file, config, preset=preset, display_name=label)
    return check_job(specs, job_file.parent, config, label=label, loose=not folder)


def check_weights(specs: list[JobSpec], config: Config, label: str) -> None:
    """JobInvalid when this machine lacks the weights a job's model needs (the daemon would fail it at once)."""
    from hotfolder.backends.choose import weights_problem

    problems = []
    for spec in specs:
        model = config.model_info(spec.model)
        problem = weights_problem(model, config, backend=spec.backend) if model is not None else None
        if problem:
            problems.append(Problem(problem + " The daemon would fail this job.", key="model", value=spec.model))
    if problems:
        raise JobInvalid(label, problems)


def _check(config: Config, job: Staged, tmp: Path, job_file: Path, *, weights: bool = True) -> Checked:
    stem, suffix = job.drop_name
    label = stem + suffix
    specs = check_path(tmp if job.is_folder else job_file, config, preset=job.preset, label=label,
                       folder=job.is_folder)
    if weights:
        check_weights(specs, config, label)
    for path in [tmp, *tmp.rglob("*")] if job.is_folder else [tmp]:
        if path.is_file() and not path.is_symlink():
            fsutil.fsync_path(path)
    dest = config.inbox / job.preset if job.preset else config.inbox
    return Checked(tmp, dest, stem, suffix, specs)


def served_by(config: Config) -> tuple[Config, bool]:
    """The config as the daemon serving this root will judge a job, and whether to check weights here.

    A live daemon that says in status.json which model and backend it gives jobs that name none
    (`hotfolder run --model X --backend Y` may differ from the config file) is the one to ask;
    a backend this process does not know keeps its weights its own way.
    """
    from hotfolder.config import BACKEND_MODULES

    seen = status_file.read(config.root)
    if not seen.alive:
        return config, True
    model, backend = seen.daemon.get("model"), seen.daemon.get("backend")
    known = ("auto", *BACKEND_MODULES)
    changes: dict[str, Any] = {}
    if isinstance(model, str) and config.model_info(model) is not None:
        changes["model"] = model
    if isinstance(backend, str) and backend in known:
        changes["backend"] = backend
    weights_here = not (isinstance(backend, str) and backend not in known)
    return config.with_overrides(**changes), weights_here


def submit(config: Config, request: SubmitRequest) -> int:
    """Stage and check every job given; drop them all only when all pass; with --wait follow them to the end."""
    config, weights_here = served_by(config)
    jobs = _staged_jobs(request, config)
    incoming = config.inbox / INCOMING
    incoming.mkdir(parents=True, exist_ok=True)
    staged: list[Path] = []
    checked: list[Checked] = []
    invalid: list[str] = []
    try:
        for job in jobs:
            if job.preset:
                print(f"hotfolder: applying preset {job.preset} ({job.preset_why}) to {job.given or job.name}",
                      file=sys.stderr)
            tmp = incoming / f"{secrets.token_hex(6)}-{''.join(job.drop_name)}"
            staged.append(tmp)
            try:
                checked.append(_check(config, job, tmp, _stage(job, tmp), weights=weights_here))
            except JobInvalid as e:
                invalid.append(e.describe())
        if invalid:
            print("\n".join(invalid), file=sys.stderr)
            print("hotfolder: nothing was submitted; fix the above and run it again "
                  "(`hotfolder validate FILE` checks a job file on its own).", file=sys.stderr)
            return 2
        dropped: list[tuple[Path, int]] = []
        for c in checked:
            c.dest.mkdir(parents=True, exist_ok=True)
            target = move_to_free_name(c.tmp, c.dest, c.stem, c.suffix)
            staged.remove(c.tmp)
            fsutil.fsync_path(c.dest)
            ref = target.relative_to(config.inbox).as_posix()
            dropped.append((target, len(c.specs)))
            print(f"submitted {target} (job {ref})", file=sys.stderr if request.wait else sys.stdout)
    finally:
        for tmp in staged:  # what was staged but not placed (an invalid job, an error, Ctrl-C)
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
    if not request.wait:
        return 0
    return wait_for(config, dropped, timeout=request.timeout)


# -- following submitted jobs -------------------------------------------------------------------
class Progress:
    """What --wait shows on stderr: a tqdm bar on a terminal, else one plain line per change of stage."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.bar: Any = None
        self.last: dict[str, tuple[Any, ...]] = {}

    def show(self, source: str, where: Any) -> None:
        key = where.key()
        if self.tty:
            self._bar(source, where)
        elif self.last.get(source) != key:
            print(f"hotfolder: {source}: {where.line(steps=False)}", file=self.stream, flush=True)
        self.last[source] = key

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(f"hotfolder: {text}", file=self.stream)
        else:
            print(f"hotfolder: {text}", file=self.stream, flush=True)

    def _bar(self, source: str, where: Any) -> None:
        from tqdm import tqdm

        total = where.total or None
        desc = f"{source}: {where.line(steps=False, count=False)}"
        # A stage without steps is a line of text; the denoising steps are a bar with the time left.
        fmt = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]" if total
               else "{desc} [{elapsed}]")
        if self.bar is None:
            self.bar = tqdm(total=total, file=self.stream, leave=False, ncols=self._columns(), desc=desc,
                            bar_format=fmt, mininterval=0)
        self.bar.bar_format = fmt
        self.bar.set_description_str(desc, refresh=False)
        if self.bar.total != total:
            self.bar.reset(total=total)
        self.bar.n = where.step if total else 0
        self.bar.refresh()

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            return 80

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def wait_for(config: Config, dropped: list[tuple[Path, int]], *, timeout: float | None = None,
             stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> int:
    """Follow submitted jobs until each entry is delivered or failed; print the .mp4 paths last."""
    from hotfolder.commands.status import job_state

    stream = stream or sys.stderr
    started_wall = time.time()
    t0 = clock()
    pending = {p.relative_to(config.inbox).as_posix(): n for p, n in dropped}
    videos: list[str] = []
    failed = False
    seen: set[Path] = set()
    progress = Progress(stream)
    try:
        while pending:
            for folder, source, kind in _new_results(config, started_wall - 2, seen):
                if source not in pending:
                    continue
                if kind == "done":
                    meta = json.loads(next(folder.glob("*.json")).read_text())
                    videos.append(str(folder / meta["outputs"]["video"]))
                    progress.note(f"{source}: done: {folder}")
                else:
                    failed = True
                    progress.note(f"{source}: failed: {folder}")
                    print((folder / "error.txt").read_text().rstrip(), file=stream)
                pending[source] -= 1
                if pending[source] <= 0:
                    del pending[source]
            if not pending:
                break
            beat = status_file.read(config.root)
            # A terminal has one bar, for the first job not finished; a pipe gets every job's changes.
            for source in list(pending)[:1] if progress.tty else pending:
                progress.show(source, job_state(config, source, beat))
            if timeout is not None and clock() - t0 > timeout:
                progress.close()
                print(f"hotfolder: gave up waiting after {timeout:g} s; the job is not finished "
                      "(`hotfolder status` follows it)", file=stream)
                return 1
            sleep(POLL_S)
    finally:
        progress.close()
    for v in videos:
        print(v)
    return 1 if failed else 0


def _new_results(config: Config, since: float, seen: set[Path]) -> list[tuple[Path, str, str]]:
    found = []
    for base, kind, pattern in ((config.outbox, "done", "*.json"), (config.failed, "failed", "error.json")):
        try:
            entries = list(os.scandir(base))
        except FileNotFoundError:
            continue
        for e in entries:
            folder = Path(e.path)
            if folder in seen or not e.is_dir() or e.stat().st_mtime < since:
                continue
            for meta_path in folder.glob(pattern):
                try:
                    meta = json.loads(meta_path.read_text())
                except (OSError, ValueError):
                    continue
                if "source" in meta:
                    seen.add(folder)
                    found.append((folder, meta["source"], kind))
                    break
    return found


# -- validate ---------------------------------------------------------------------------------------
def validate(config: Config, files: list[Path], *, preset: str | None = None) -> int:
    """Print what the daemon would make of each file or job folder; exit 2 if any is invalid."""
    from hotfolder.backends.choose import weights_problem

    bad = 0
    for path in files:
        path = Path(path)
        p, why = _preset_of(path, config, preset)
        try:
            if not path.exists():
                raise UsageError(f"{path}: no such file or folder")
            if p is not None:
                print(f"{path}: applying preset {p} ({why})")
            folder_job = path.is_dir()
            specs = check_path(path, config, preset=p, label=path.name, folder=folder_job)
        except JobInvalid as e:
            bad += 1
            print(e.describe())
            continue
        except UsageError as e:
            bad += 1
            print(e)
            continue
        for s in specs:
            print(f"ok {path}: {s.name}: {s.width}x{s.height}, {s.num_frames} frames at {s.fps:g} fps, "
                  f"{s.steps} steps, seed {s.seed}, {s.mode}, model {s.model} ({s.backend})")
            for a in s.adjustments:
                print(f"   adjusted: {a}")
        # What the daemon would say next: not a mistake in the file, but it fails here until fetched.
        notes = {weights_problem(m, config, backend=s.backend) for s in specs
                 if (m := config.model_info(s.model)) is not None}
        for note in sorted(n for n in notes if n):
            print(f"   note: {note} `submit` refuses it until then.")
    return 2 if bad else 0
