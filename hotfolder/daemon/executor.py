"""Where "generate this spec into a finished MP4" runs: the seam, the one encode path, and the local executor.

The daemon claims, journals, caches and delivers; an executor only turns a spec into a clip and
its files (the MP4, and the GIF and thumbnail made from the frames in memory). Two executors:

- `LocalExecutor` (`executor = "local"`): this process, one resident model (`Provider`). It lends
  one *generation slot* (the model) to two daemon worker threads: a job gives the slot back as
  soon as its frames are made, so encoding job N (ffmpeg) overlaps generating job N+1 and the GPU
  never waits for the encoder.
- `RayExecutor` (`executor = "ray"`, `daemon/cluster.py`): one slot per Ray actor, each actor
  keeping its own model loaded on its own GPU and encoding next to it.

A daemon worker thread takes a slot (`Executor.acquire`) *before* it takes the next queue item,
so jobs start in priority-then-arrival order whatever the number of slots. Taking a slot never
contacts a cluster: a cache hit is served by the daemon alone, and a slot's `make` is called only
on a miss. Both executors encode with `encode_clip`: there is one encode path.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from hotfolder import gallery
from hotfolder.config import ModelInfo
from hotfolder.errors import HotfolderError
from hotfolder.folders.spool import crash_point
from hotfolder.media import ffmpeg as previews

if TYPE_CHECKING:
    from hotfolder.backends import Backend, OnStep
    from hotfolder.daemon.provider import Provider
    from hotfolder.job.spec import JobSpec
    from hotfolder.media.clip import Clip

LOCAL_THREADS = 2  # the local executor's daemon workers: one generating while the other encodes


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


@dataclass(frozen=True)
class Preview:
    """A preview the result holds: its role in `outputs`, its path in the stage, its name in a cache entry."""

    role: str  # "gif" or "thumbnail"
    path: Path
    cached: str
    description: str | None = None


@dataclass
class Made:
    """A slot's answer: the outcome and how long each part took (the files are in the stage)."""

    outcome: Outcome
    load_s: float = 0.0
    generate_s: float = 0.0
    encode_s: float = 0.0
    previews_s: float = 0.0


class WorkerLost(HotfolderError):
    """The worker running a job went away (its process was killed, its machine left the cluster).

    Not the job's fault: it goes back to the queue at once, and the attempt is journalled as
    "lost", which does not count towards max_attempts (a separate bound catches a job that
    takes down every worker it meets).
    """

    retryable = True


def encode_clip(clip: Clip, spec: JobSpec, model: ModelInfo, mp4: Path, wanted: list[Preview]) -> tuple[float, float]:
    """The one encode path: the MP4 (the prompt in its tags), then the GIF and thumbnail from the frames in
    memory (no decode of the MP4). Returns (encode_s, previews_s); encode_s includes the previews. Its crash
    points kill the process that runs it: the daemon (local), or a cluster worker (a lost worker)."""
    from hotfolder import media

    t0 = time.perf_counter()
    if spec.duration_auto:  # the model chose the length: the tags say the frames it made
        spec = dataclasses.replace(spec, num_frames=len(clip.frames), duration=len(clip.frames) / clip.fps)
    media.encode_mp4(clip, mp4, tags=gallery.mp4_tags(spec, model), audio_rate=media.MIX_RATE)
    crash_point("encoded")
    t1 = time.perf_counter()
    for preview in wanted:
        if preview.role == "gif":
            previews.make_gif_from_frames(clip.frames, clip.fps, preview.path)
            crash_point("mid_encode")
        else:
            previews.thumbnail_from_frame(clip.frames[0], preview.path, description=preview.description)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


class Slot(Protocol):
    """One generation slot, lent to one daemon worker thread for one queue item."""

    name: str  # the worker, as the journal and status.json name it ("local", "w1", ...)

    def make(self, spec: JobSpec, model: ModelInfo, mp4: Path, image: Path | None, wanted: list[Preview],
             stage: Callable[[str], None], on_step: OnStep, log: Any) -> Made:
        """Generate `spec`, and encode the MP4 and `wanted` previews into their paths."""

    def release(self) -> None:
        """Give the slot back (idempotent: a local job gives it back early, before encoding)."""


class Executor(Protocol):
    kind: str  # "local" | "ray"
    threads: int  # daemon worker threads (jobs in flight)

    def start(self) -> None: ...
    def acquire(self, stop: threading.Event) -> Slot | None: ...  # None once stopping
    def idle(self) -> None: ...  # nothing came for idle_unload_minutes: free the model(s)
    def loaded(self) -> list[str]: ...  # what is loaded, for status.json
    def held(self) -> str | None: ...  # why claiming waits (a cluster that went away), else None
    def describe(self) -> dict[str, Any] | None: ...  # status.json's "executor" block
    def close(self) -> None: ...


class LocalExecutor:
    """This process: one model (the provider's), one slot; two workers, so encoding overlaps generating."""

    kind = "local"
    threads = LOCAL_THREADS

    def __init__(self, provider: Provider):
        self.provider = provider
        self._free = threading.Semaphore(1)

    def start(self) -> None:
        pass

    def acquire(self, stop: threading.Event) -> _LocalSlot | None:
        while not stop.is_set():
            if self._free.acquire(timeout=0.1):
                return _LocalSlot(self)
        return None

    def idle(self) -> None:
        self.provider.close()

    def loaded(self) -> list[str]:
        return list(self.provider.key or [])

    def held(self) -> str | None:
        return None

    def describe(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        self.provider.close()


class _LocalSlot:
    name = "local"

    def __init__(self, executor: LocalExecutor):
        self._executor = executor
        self._held = True
        self._lock = threading.Lock()

    def make(self, spec: JobSpec, model: ModelInfo, mp4: Path, image: Path | None, wanted: list[Preview],
             stage: Callable[[str], None], on_step: OnStep, log: Any) -> Made:
        provider = self._executor.provider
        loaded = provider.serves(spec, model)
        if not loaded:
            stage("loading")
        backend, load_s = provider.get(spec, model)
        if not loaded:
            log.info("model loaded", model=model.label, backend=backend.name, device=backend.device,
                     **({"load_s": round(load_s, 2)} if load_s >= 0.01 else {}))
        clip, generate_s = generate(backend, spec, image, stage, on_step, log)
        self.release()  # the model is free: the next job generates while this one encodes
        stage("encoding")
        encode_s, previews_s = encode_clip(clip, spec, model, mp4, wanted)
        return Made(Outcome(backend=backend.name, device=backend.device, model=model,
                            has_audio=clip.audio is not None, info=clip.info),
                    load_s=load_s, generate_s=generate_s, encode_s=encode_s, previews_s=previews_s)

    def release(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                self._executor._free.release()


def generate(backend: Backend, spec: JobSpec, image: Path | None, stage: Callable[[str], None], on_step: OnStep,
             log: Any) -> tuple[Clip, float]:
    """Run the backend (the image given as an absolute path; the spec keeps it relative to the job)."""
    stage("generating")
    t0 = time.perf_counter()
    run_spec = dataclasses.replace(spec, image=str(image)) if image is not None else spec
    clip = backend.generate(run_spec, on_step)
    generate_s = time.perf_counter() - t0
    stages = [f"{st.get('name')} {st.get('width')}x{st.get('height')} {st.get('steps')} steps"
              for st in clip.info.get("stages", [])]
    log.info("generated", generate_s=round(generate_s, 2), frames=len(clip.frames),
             **({"stages": "; ".join(stages)} if stages else {}))
    return clip, generate_s
