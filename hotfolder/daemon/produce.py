"""Make one result folder: cache or model, soundtrack, GIF, thumbnail, metadata, log, then deliver it.

Everything is written into the job's staging folder inside processing/ and the
finished folder moves into the outbox with one rename, so no one ever sees a
half-written result. The daemon decides what runs when; this module decides what
one entry's result holds.

The GIF and the thumbnail depend only on the clip's pixels and their settings (size,
length, the description in the JPEG's EXIF), so they are made once, from the frames
the backend returned (no decode), and stored in the cache entry beside the clip under
a name made from those settings: a hit links or clones all three and runs no ffmpeg.
Only a voice-over or narration (never in the key) makes a hit do media work.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import shutil
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from hotfolder import __version__, gallery, log
from hotfolder.backends import OnStep
from hotfolder.cache import VIDEO, CacheEntry, ResultCache, cache_key, derived_name, model_identity, reads_cache, \
    writes_cache
from hotfolder.config import Config, ModelInfo
from hotfolder.daemon.executor import Outcome, Preview, Slot
from hotfolder.errors import Interrupted, JobInvalid, Problem
from hotfolder.folders.spool import Job, Spool, crash_point
from hotfolder.job import attachments
from hotfolder.job.names import RESULT_NAME_MAX_BYTES, fit_name
from hotfolder.job.spec import JobSpec
from hotfolder.media import ffmpeg as previews
from hotfolder.media.fit import describe_image_fit

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
    encode_s: float = 0.0  # all media work: the MP4, the previews, the soundtrack
    cache_s: float = 0.0  # a hit: looking up the entry and linking (or cloning) its files
    previews_s: float = 0.0  # making the GIF and the thumbnail (a hit: only those the cache lacked)
    soundtrack_s: float = 0.0  # a voice-over or narration mixed in (a hit too: that is real work)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "queued": iso(self.queued),
            "started": iso(self.started),
            "finished": iso(self.finished),
            "load_s": round(self.load_s, 3),
            "generate_s": round(self.generate_s, 3),
            "encode_s": round(self.encode_s, 3),
            "total_s": round(self.finished - self.started, 3),
            "wait_s": round(self.started - self.queued, 3),
        }
        for name in ("cache_s", "previews_s", "soundtrack_s"):
            if getattr(self, name):
                out[name] = round(getattr(self, name), 3)
        return out


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
    # Straight into the stage, which no one reads before the folder's one rename into the outbox; flushed with
    # the whole result before the job's input goes (Daemon._retire).
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Report:
    """How a production tells the daemon where it is: `stage("generating")`, and each denoising step.

    Stages, in order: "loading" (the model), "generating" (then each step through `on_step`),
    "encoding", "delivering"; a cache hit goes to "encoding" only when it has media work (a
    voice-over or narration to mix, a preview its entry lacks), else straight to "delivering".
    """

    stage: Callable[[str], None]
    on_step: OnStep


class Producer:
    """Turns one queued entry into a delivered result folder; owns the cache. A miss is made on the executor's
    slot the daemon lends it (this process's model, or a worker on a cluster)."""

    def __init__(self, config: Config, spool: Spool, stop: threading.Event):
        self.config = config
        self.spool = spool
        self.stop = stop
        self.log = log.get("hotfolder.daemon")
        self._identities: dict[tuple[str, str], str] = {}
        self._cache: ResultCache | None = None
        self._cache_problem = ""  # the last cache error logged, so that a broken cache is said once, not per job
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}  # keys being made now (several workers): twins wait

    @property
    def cache(self) -> ResultCache | None:
        """Opened on first use, by the worker (opening cleans up stores a crash left behind); None while the
        cache folder cannot be used: jobs then run without it (the cache only ever saves work)."""
        if self._cache is None:
            try:
                self._cache = ResultCache(self.config.cache_dir, self.config.cache_max_bytes)
            except OSError as e:
                self._cache_trouble("the cache cannot be opened: jobs run without it", e)
        return self._cache

    def _cache_trouble(self, what: str, e: BaseException) -> None:
        """A cache error never fails a job: it is logged (once while it stays the same) with the cache's path."""
        problem = f"{what}: {e}"
        if problem != self._cache_problem:
            self._cache_problem = problem
            self.log.warning(what, cache_dir=str(self.config.cache_dir), error=f"{type(e).__name__}: {e}",
                             fix="check the cache folder (cache_dir): free space, permissions, or another folder")

    def produce(self, job: Job, index: int, count: int, spec: JobSpec, timings: Timings, report: Report,
                slot: Slot) -> Path:
        """Make entry `index` of `job` and move its result folder into the outbox; returns the MP4's path.

        `report.stage` is told each stage as it begins (see `Report`); `report.on_step` is
        the backend's per-step callback (progress, stop and cancel checks). `slot` makes a miss; a hit never
        touches it (nor the cluster behind it).
        """
        model = self.config.model_info(spec.model)
        if model is None:
            raise JobInvalid(job.source, [Problem(f"model {spec.model!r} is no longer in the model table")])
        if fit_name(spec.name, RESULT_NAME_MAX_BYTES) != spec.name:  # saved by an older version: fit it here
            spec = dataclasses.replace(spec, name=fit_name(spec.name, RESULT_NAME_MAX_BYTES))
        stage = job.stage / str(index)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        mp4 = stage / f"{spec.name}.mp4"
        wanted = _previews(spec, model, stage)

        # 1. The cache, before the model is touched: a hit never loads (or imports) the backend, nor runs ffmpeg.
        image = attachments.resolve("image.file", spec.image, job.base, label=job.source) if spec.image else None
        key = None  # cache = false: neither read nor written, so not even keyed
        if reads_cache(spec) or writes_cache(spec):
            key = cache_key(spec, model, model_identity=self._identity(model, spec.backend), **_conditioning(spec))
        t0 = time.perf_counter()
        making = self._claim(key) if key else None  # an identical request in the making: wait, then hit
        try:
            hit = self._from_cache(key, spec, model, mp4, wanted) if key else None
            if hit is None:
                outcome = self._generate(slot, spec, model, mp4, timings, image, report, wanted)
                outcome.cache_key = key
                if key and writes_cache(spec):
                    self._store(key, mp4, spec, model, outcome, wanted)
            else:
                outcome, entry, missing = hit
                timings.cache_s = time.perf_counter() - t0
                if missing:  # an entry stored before (or with other settings): made once from the MP4, then kept
                    report.stage("encoding")
                    self._previews_from_video(mp4, missing, timings)
                    self._keep_previews(entry, missing)
        finally:
            self._made(key, making)

        # duration = "auto": the model chose the length; from here on the spec says what it chose (the metadata's
        # duration and frames, and the length a voice-over or narration is fitted to).
        if spec.duration_auto and "num_frames" in outcome.info:
            spec = dataclasses.replace(spec, num_frames=int(outcome.info["num_frames"]),
                                       duration=float(outcome.info["duration_s"]))

        # 2. Post-processing: everything that is not in the cache key.
        if spec.audio_file or spec.tts:
            report.stage("encoding")  # a hit re-muxes too: real work, in its timings (soundtrack_s)
        t0 = time.perf_counter()
        used = self._soundtrack(job, spec, mp4, stage, outcome)
        timings.soundtrack_s = time.perf_counter() - t0 if used else 0.0
        timings.encode_s += timings.soundtrack_s
        if image is not None:
            used.insert(0, _image_record(spec, image))
        outputs: dict[str, str] = {"video": mp4.name}
        for preview in wanted:
            outputs[preview.role] = preview.path.name
        outputs["job"] = copy_original(job, stage)
        _copy_attachments(job, stage)
        self.log.info("encoded", encode_s=round(timings.encode_s, 2))

        # 3. Metadata and log, then one rename into the outbox.
        outputs["metadata"] = f"{spec.name}.json"
        outputs["log"] = f"{spec.name}.log"
        timings.finished = time.time()
        write_metadata(stage, job=job, index=index, count=count, spec=spec, outcome=outcome,
                       timings=timings, outputs=outputs, attachments=used)
        report.stage("delivering")
        self.log.info("delivering", total_s=round(timings.finished - timings.started, 2))
        staged_log = stage / f"{spec.name}.log"

        def last_line(target: Path) -> None:
            """The result's log, ending with its own "delivered" line (written before the move, so it is whole)."""
            try:
                lines = job.log_file.read_bytes()
            except FileNotFoundError:
                lines = b""
            staged_log.write_bytes(lines + log.job_line("delivered", path=str(target / mp4.name)).encode("utf-8"))

        crash_point("staged")
        target = self.spool.deliver(job, index, stage, spec.name, before=last_line)
        self.log.info("delivered", path=str(target / mp4.name))
        return target / mp4.name

    def _claim(self, key: str) -> threading.Event:
        """This job's claim on its cache key. An identical request being made now by another worker (its clip
        not cached yet) is waited for first, so this one is a hit, as it would be one after the other."""
        while True:
            with self._lock:
                twin = self._inflight.get(key)
                if twin is None:
                    mine = self._inflight[key] = threading.Event()
                    return mine
            while not twin.wait(0.1):
                if self.stop.is_set():
                    raise Interrupted("stopping")

    def _made(self, key: str | None, making: threading.Event | None) -> None:
        if key is None or making is None:
            return
        with self._lock:
            if self._inflight.get(key) is making:
                del self._inflight[key]
        making.set()

    def _store(self, key: str, mp4: Path, spec: JobSpec, model: ModelInfo, outcome: Outcome,
               wanted: list[_Preview]) -> None:
        """Keep the clip, and the previews made from it, for identical requests. A cache that cannot take them
        (full, read-only) is logged; the job goes on and is delivered (it is never generated again for that)."""
        cache = self.cache
        if cache is None:
            return
        try:
            cache.put(key, mp4, {"backend": outcome.backend, "device": outcome.device, "has_audio": outcome.has_audio,
                                 "seed": spec.seed, "model": model.name, "width": spec.width, "height": spec.height,
                                 "num_frames": spec.num_frames, "fps": spec.fps, "info": outcome.info},
                      extras={p.cached: p.path for p in wanted})
        except OSError as e:
            self._cache_trouble("could not store the result in the cache; it is delivered anyway", e)
            return
        self._cache_problem = ""
        self.log.info("stored in cache", cache_key=key)
        crash_point("cached")

    def _keep_previews(self, entry: CacheEntry, made: list[_Preview]) -> None:
        """Previews made for a hit go into its entry, so the next hit links them too (never the job's problem)."""
        cache = self.cache
        if cache is None:
            return
        try:
            cache.add(entry, {p.cached: p.path for p in made})
        except FileNotFoundError:
            return  # replaced or evicted meanwhile: the next hit makes them again
        except OSError as e:
            self._cache_trouble("could not store the previews in the cache; the result is delivered anyway", e)

    def _from_cache(self, key: str, spec: JobSpec, model: ModelInfo, mp4: Path,
                    wanted: list[_Preview]) -> tuple[Outcome, CacheEntry, list[_Preview]] | None:
        """A hit: the clip and the previews the entry has, linked or cloned into the stage; None on a miss.

        Returns the outcome, the entry and the previews it lacked (made by the caller from the MP4).
        """
        if not reads_cache(spec):
            if spec.cache == "refresh":
                self.log.info("cache refresh: regenerating", cache_key=key)
            return None
        cache = self.cache
        if cache is None:
            return None
        targets = {VIDEO: mp4}
        try:
            entry = cache.get(key)
            if entry is None:
                return None
            targets.update({p.cached: p.path for p in wanted if entry.has(p.cached)})
            methods = cache.deliver_many(entry, targets)
        except FileNotFoundError:
            _remove(targets.values())
            return None  # evicted between get and deliver: a miss
        except OSError as e:
            _remove(targets.values())
            self._cache_trouble("could not read the cache: the job runs without it", e)
            return None
        meta = entry.meta
        how = methods[VIDEO]
        missing = [p for p in wanted if p.cached not in methods]
        self.log.info("cache hit: the model was not used", cache_key=key, delivered_by=how,
                      previews="from the cache" if wanted and not missing else "made now" if missing else None)
        outcome = Outcome(backend=meta.get("backend", spec.backend), device=meta.get("device", "none"), model=model,
                          cache_hit=True, cache_key=key, has_audio=bool(meta.get("has_audio")),
                          info={**meta.get("info", {}), "cache_delivery": how})
        return outcome, entry, missing

    def _previews_from_video(self, mp4: Path, wanted: list[_Preview], timings: Timings) -> None:
        """The GIF and thumbnail from the MP4 (ffmpeg decodes it): for a cached clip stored without them."""
        t0 = time.perf_counter()
        for preview in wanted:
            if preview.role == "gif":
                previews.make_gif(mp4, preview.path)
                crash_point("mid_encode")
            else:
                previews.make_thumbnail(mp4, preview.path, description=preview.description)
        timings.previews_s = time.perf_counter() - t0
        timings.encode_s += timings.previews_s

    def _soundtrack(self, job: Job, spec: JobSpec, mp4: Path, stage: Path, outcome: Outcome) -> list[dict[str, Any]]:
        """Voice-over, then narration, fitted to the video's length; returns what was used, for the metadata.

        Never in the cache key: a cached clip gets them too. Each step writes a new file and
        renames it over the MP4 (a cached MP4 may be a hard link into the cache).
        """
        from hotfolder import media
        from hotfolder.media import narration

        used: list[dict[str, Any]] = []
        seconds = spec.num_frames / spec.fps
        has_audio = outcome.has_audio
        if spec.audio_file:
            voice = attachments.resolve("audio.file", spec.audio_file, job.base, label=job.source)
            tmp = stage / f".{spec.name}.voice-over.mp4"
            fitted = media.replace_audio(mp4, voice, tmp, seconds=seconds)
            os.replace(tmp, mp4)
            has_audio = True
            used.append({"name": spec.audio_file, "kind": "voice-over", "sha256": spec.audio_sha256,
                         "fitted": fitted})
            self.log.info("voice-over", file=spec.audio_file, fitted=fitted)
        if spec.tts:
            speech = narration.synthesize(spec.tts, stage)
            tmp = stage / f".{spec.name}.narrated.mp4"
            mix = media.mix_audio if has_audio else media.replace_audio
            fitted = mix(mp4, speech, tmp, seconds=seconds)
            os.replace(tmp, mp4)
            speech.unlink(missing_ok=True)
            how = "over the soundtrack, which is ducked while it speaks" if has_audio else "alone"
            used.append({"name": "tts", "kind": "narration", "sha256": None, "text": spec.tts,
                         "fitted": f"{fitted}; {how}"})
            self.log.info("narration", words=len(spec.tts.split()), fitted=fitted, mixed=how)
        return used

    def _generate(self, slot: Slot, spec: JobSpec, model: ModelInfo, mp4: Path, timings: Timings,
                  image: Path | None, report: Report, wanted: list[_Preview]) -> Outcome:
        """Load (once), generate with per-step progress and stop checks, encode the clip to `mp4`, and make the
        previews from the frames in memory (no decode of the MP4): on the slot, wherever it runs."""
        if self.stop.is_set():
            raise Interrupted("stopping")
        made = slot.make(spec, model, mp4, image, wanted, report.stage, report.on_step, self.log)
        timings.load_s, timings.generate_s = made.load_s, made.generate_s
        timings.encode_s, timings.previews_s = made.encode_s, made.previews_s
        return made.outcome

    def _identity(self, model: ModelInfo, backend: str) -> str:
        """The model's weights identity for the cache key (memoised: it may read a folder)."""
        k = (model.name, backend)
        if k not in self._identities:
            self._identities[k] = model_identity(model, backend)
        return self._identities[k]


_Preview = Preview  # the daemon's previews are the executors' (one shape for both)


def _previews(spec: JobSpec, model: ModelInfo, stage: Path) -> list[_Preview]:
    """The previews `spec` asks for, each named in the cache by the settings that make it (the thumbnail's
    EXIF description, the prompt and seed, included: a cached thumbnail always describes its own request)."""
    wanted = []
    if spec.gif:
        wanted.append(_Preview("gif", stage / f"{spec.name}.gif", derived_name("gif", "gif", previews.gif_settings())))
    if spec.thumbnail:
        about = gallery.describe(spec, model)
        wanted.append(_Preview("thumbnail", stage / f"{spec.name}.jpg",
                               derived_name("thumbnail", "jpg", previews.thumbnail_settings(description=about)),
                               about))
    return wanted


def _remove(paths: Any) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)


def _conditioning(spec: JobSpec) -> dict[str, Any]:
    """The cache key's share of the attachments: the image's digest and strength (never audio or TTS)."""
    if not spec.image:
        return {}
    assert spec.image_sha256 is not None, "attachments.check_job fills image_sha256 at admission"
    return {"attachments": {"image": spec.image_sha256}, "extra": {"image_strength": float(spec.image_strength)}}


def _image_record(spec: JobSpec, image: Path) -> dict[str, Any]:
    """The metadata's entry for the conditioning image: how it covers the video's frame."""
    from PIL import Image

    with Image.open(image) as im:
        size = im.size
    return {"name": spec.image, "kind": "image", "sha256": spec.image_sha256, "strength": spec.image_strength,
            "size": list(size), "fitted": describe_image_fit(size, spec.width, spec.height)}


def _copy_attachments(job: Job, stage: Path) -> None:
    """A loose job's attachments go into the result beside its job file (hard links: same filesystem)."""
    for src in job.attachment_paths:
        target = stage / src.name
        if os.path.lexists(target) or not src.is_file():
            continue
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
