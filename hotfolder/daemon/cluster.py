"""The Ray executor (`executor = "ray"`): one actor per worker, each keeping its own model loaded.

The daemon keeps claiming, journalling, caching and delivering; only "generate this spec into a
finished MP4 (and its GIF and thumbnail)" runs on a worker. A worker is an actor placed on one GPU
(`num_gpus=1`), one Apple GPU (the custom resource `mlx`, which a Mac's `ray start --resources
'{"mlx": 1}'` declares), or, on a cluster with neither, one CPU (one worker per node by default).
It loads the model once and keeps it, runs a job, encodes next to the GPU with the daemon's own
`encode_clip`, and sends back the encoded files' bytes and metadata, never raw frames; the image
a job names travels as bytes through Ray's object store.

Exactly-once delivery comes from the journal and the atomic renames, never from Ray: a task may
run twice (a retry, a restarted actor), and `RayActorError` can be raised although the task
finished. So: no task retries; a worker that goes away mid-job makes the job `WorkerLost` (back to
the queue, journalled as "lost", not counted as an attempt); the actor restarts (`max_restarts`)
and reloads its model; a result whose job the journal no longer holds is dropped. The actors are
owned by the daemon: when it dies they end with it, and at its next start every job on them is
requeued from the journal (`Spool.recover` marks their open attempts "lost").

This module imports ray; nothing else in the package does (`executor.create` imports it only
when the config says "ray").
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import ray
import ray.exceptions

from hotfolder import log
from hotfolder.config import Config, ModelInfo
from hotfolder.daemon.attempts import one_line
from hotfolder.daemon.executor import Made, Outcome, Preview, WorkerLost
from hotfolder.errors import BackendError, HotfolderError, Interrupted, UsageError

CONNECT_TIMEOUT_S = 30.0  # ray.init is bounded by this: an address that does not answer is an error, not a hang
POLL_S = 0.2  # how often the daemon asks a worker where its job is (and passes a cancel on)
MONITOR_S = 1.0  # how often each worker is pinged and the cluster's head is checked
UNANSWERED_S = 15.0  # a worker that answers nothing for this long while running a job is lost
HEAD_DOWN_AFTER = 3  # failed checks of the head in a row before claiming pauses
# Actor deaths Ray reports for a task; each means "the worker went away", not "the job failed".
_GONE = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
         ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError, ray.exceptions.LocalRayletDiedError,
         ray.exceptions.TaskCancelledError)
# Settings forwarded to the workers' processes (a worker sees the daemon's HOTFOLDER_ settings) except these.
_NOT_FORWARDED = ("HOTFOLDER_ROOT", "HOTFOLDER_CONFIG")


def placement(resources: dict[str, float], nodes: int) -> tuple[dict[str, Any], int, str]:
    """How each worker is placed, how many there are by default, and why: one per GPU, else one per `mlx`
    slot (Macs), else one CPU each, one per node (a CPU-only cluster: tests, or a try-out)."""
    gpus, mlx = int(resources.get("GPU", 0)), int(resources.get("mlx", 0))
    if gpus:
        return {"num_gpus": 1}, gpus, f"one per GPU ({gpus} in the cluster)"
    if mlx:
        return {"resources": {"mlx": 1}, "num_cpus": 0}, mlx, f"one per Apple GPU (mlx resource: {mlx})"
    return {"num_cpus": 1}, max(1, nodes), f"no GPU or mlx resource in the cluster: one per node with a CPU ({nodes})"


class RayExecutor:
    kind = "ray"

    def __init__(self, config: Config, stop: threading.Event):
        self.config = config
        self.address = config.ray_address
        self.stop = stop
        self.threads = config.workers or 1  # known once connected (start)
        self.log = log.get("hotfolder.daemon")
        self._workers: list[_Worker] = []
        self._cond = threading.Condition()
        self._head: tuple[str, int] | None = None
        self._head_fails = 0
        self._held: str | None = None
        self._epoch = 0  # bumped when the daemon leaves a cluster that went away: calls of before are lost
        self._why = ""
        self._monitor: threading.Thread | None = None

    # -- connecting --------------------------------------------------
    def start(self) -> None:
        """Join the cluster (bounded: CONNECT_TIMEOUT_S), start the workers and the monitor."""
        self._join(first=True)
        self._monitor = threading.Thread(target=self._watch, name="hotfolder-ray-monitor", daemon=True)
        self._monitor.start()

    def _join(self, *, first: bool) -> None:
        """Connect and start the workers (at start; again when the cluster comes back after it was gone)."""
        where = self.config.origins.get("ray_address", "the default")
        hint = (f"ray_address = {self.address!r} ({where}). Start the cluster (`ray start --head` on the GPU "
                "machine, `ray start --address HEAD:6379` on the others), or set ray_address to where it runs; "
                "`hotfolder doctor` checks it. executor = \"local\" runs jobs on this machine instead.")
        target = _host_port(self.address)
        if target is not None:
            try:
                socket.create_connection(target, timeout=5).close()
            except OSError as e:
                raise UsageError(f"cannot reach the Ray cluster at {self.address}: {e.strerror or e}. {hint}") \
                    from None
        error: list[BaseException] = []

        def connect() -> None:
            try:
                ray.init(address=self.address, namespace="hotfolder", runtime_env={"env_vars": _forwarded()},
                         log_to_driver=False, logging_level="WARNING", configure_logging=True)
            except BaseException as e:  # noqa: BLE001 - handed to the daemon's thread below
                error.append(e)

        joiner = threading.Thread(target=connect, name="hotfolder-ray-connect", daemon=True)
        joiner.start()
        joiner.join(CONNECT_TIMEOUT_S)
        if joiner.is_alive():
            raise UsageError(f"the Ray cluster at {self.address} did not answer within {CONNECT_TIMEOUT_S:g} s. {hint}")
        if error:
            text = str(error[0]).strip().splitlines()
            raise UsageError(f"cannot join the Ray cluster at {self.address}: {text[0] if text else error[0]}. "
                             f"{hint}") from None
        self._head = _host_port(ray.get_runtime_context().gcs_address) if not self.address.startswith("ray://") \
            else target
        options, count, self._why = placement(ray.cluster_resources(), _cpu_nodes(ray.nodes()))
        actor = ray.remote(concurrency_groups={"run": 1, "ctl": 2})(_Actor).options(
            max_restarts=-1, max_task_retries=0, scheduling_strategy="SPREAD", **options)
        registry = _registry()
        if first:
            self.threads = self.config.workers or count  # the daemon's workers: fixed for this process
            self._workers = [_Worker(f"w{n + 1}", None) for n in range(self.threads)]
        for w in self._workers:
            w.actor, w.ping, w.ready, w.info, w.trouble = actor.remote(self.config, registry, w.name), None, False, {}, ""
        self.log.info("joined the Ray cluster", address=self.address, workers=self.threads, placement=self._why,
                      resources={k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")})

    def _leave(self) -> None:
        """The cluster's head is gone: leave it before Ray ends this process for it (after 60 s without its GCS),
        so the daemon lives on, paused; jobs on its workers are lost (requeued), and `_watch` joins again later."""
        self._epoch += 1
        for w in self._workers:
            w.ready, w.ping, w.trouble = False, None, "the cluster is gone"
        closer = threading.Thread(target=_shutdown, name="hotfolder-ray-leave", daemon=True)
        closer.start()
        closer.join(10.0)

    # -- slots -------------------------------------------------------
    def acquire(self, stop: threading.Event) -> _Lease | None:
        """A free worker (a ready one first); never contacts the cluster, so a cache hit needs none of it."""
        with self._cond:
            while not stop.is_set():
                free = [w for w in self._workers if not w.busy]
                if free:
                    worker = next((w for w in free if w.ready), free[0])
                    worker.busy = True
                    return _Lease(self, worker)
                self._cond.wait(0.2)
        return None

    def _give_back(self, worker: _Worker) -> None:
        with self._cond:
            worker.busy = False
            self._cond.notify_all()

    def _swap(self, worker: _Worker) -> _Worker | None:
        """A free, ready worker to take over from `worker` (which is not ready); None if there is none."""
        with self._cond:
            other = next((w for w in self._workers if not w.busy and w.ready), None)
            if other is not None:
                other.busy, worker.busy = True, False
                self._cond.notify_all()
            return other

    # -- health ------------------------------------------------------
    def _watch(self) -> None:
        """Ping every worker (ready again after a restart?), and check that the cluster's head still answers."""
        while not self.stop.wait(MONITOR_S):
            if self._check_head():
                continue
            pending = {w.ping: w for w in self._workers if w.ping is not None}
            for w in self._workers:
                if w.ping is None:
                    w.ping, w.pinged = w.actor.ping.remote(), time.monotonic()
                    pending[w.ping] = w
            try:
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5)
            except Exception:  # noqa: BLE001 - the cluster is going; the head check says so
                continue
            for ref in done:
                w = pending[ref]
                w.ping = None
                try:
                    w.info = ray.get(ref, timeout=1)
                    w.ready = True
                except Exception as e:  # noqa: BLE001 - dead for now: Ray restarts it
                    w.ready, w.trouble = False, one_line(e)
            now = time.monotonic()
            for w in self._workers:
                if w.ping is not None and now - w.pinged > 5 * MONITOR_S:
                    w.ready = False  # restarting, or its node is gone and it waits for room elsewhere
                    w.trouble = "not answering (restarting, or waiting for a node with room for it)"

    def _check_head(self) -> bool:
        """Whether the cluster is gone (claiming held): its head not answering HEAD_DOWN_AFTER checks in a row.
        Once it answers again, the daemon joins it anew and claiming goes on."""
        target = self._head if self._held is None else (_host_port(self.address) or self._head)
        if target is None:
            return False
        try:
            socket.create_connection(target, timeout=1).close()
        except OSError:
            self._head_fails += 1
            if self._head_fails >= HEAD_DOWN_AFTER and self._held is None:
                self._held = (f"the Ray cluster at {self.address} cannot be reached since "
                              f"{time.strftime('%H:%M:%S')}: claiming waits, and goes on by itself once it is back")
                self.log.warning("the Ray cluster went away: leaving it until it is back", address=self.address)
                self._leave()
            return self._held is not None
        self._head_fails = 0
        if self._held is None:
            return False
        try:
            self._join(first=False)
        except Exception as e:  # noqa: BLE001 - not yet: tried again at the next check
            self.log.info("the Ray cluster answers but cannot be joined yet", address=self.address, error=one_line(e))
            _shutdown()
            return True
        self._held = None
        return False

    def held(self) -> str | None:
        return self._held

    # -- the rest of the contract -------------------------------------
    def idle(self) -> None:
        for w in self._workers:
            w.actor.unload.remote()
            w.info = {**w.info, "loaded": []}

    def loaded(self) -> list[str]:
        return next((list(w.info["loaded"]) for w in self._workers if w.info.get("loaded")), [])

    def describe(self) -> dict[str, Any]:
        return {"kind": "ray", "address": self.address, "placement": self._why,
                "workers": [{"name": w.name, "state": "ready" if w.ready else "starting" if not w.trouble
                             else "unavailable", "busy": w.running, "node": w.info.get("node"),
                             "host": w.info.get("host"), "pid": w.info.get("pid"),
                             "loaded": w.info.get("loaded") or [],
                             **({"trouble": w.trouble} if not w.ready and w.trouble else {})}
                            for w in self._workers]}

    def close(self) -> None:
        """Leave the cluster (its workers end with us); bounded: a cluster that is gone never holds a stop."""
        closer = threading.Thread(target=_shutdown, name="hotfolder-ray-shutdown", daemon=True)
        closer.start()
        closer.join(3.0)


class _Worker:
    """The daemon's view of one actor."""

    def __init__(self, name: str, actor: Any):
        self.name = name
        self.actor = actor
        self.busy = False  # lent to a daemon thread (which may still be waiting for a job)
        self.running = False  # running a job now
        self.ready = False  # answered its last ping (constructed: its model loaded)
        self.trouble = ""
        self.info: dict[str, Any] = {}
        self.ping: Any = None
        self.pinged = 0.0


class _Lease:
    """A worker lent to one daemon thread for one queue item (the executor's slot)."""

    def __init__(self, executor: RayExecutor, worker: _Worker):
        self._executor = executor
        self.worker = worker
        self._held = True

    @property
    def name(self) -> str:
        return self.worker.name

    def release(self) -> None:
        if self._held:
            self._held = False
            self._executor._give_back(self.worker)

    def make(self, spec: Any, model: ModelInfo, mp4: Path, image: Path | None, wanted: list[Preview],
             stage: Callable[[str], None], on_step: Callable[[str, int, int], None], log_: Any) -> Made:
        stop = self._executor.stop
        self._wait_ready(stage, stop)
        worker = self.worker
        epoch = self._executor._epoch
        loaded = tuple(worker.info.get("loaded") or ()) == (spec.backend, model.name)
        stage("generating" if loaded else "loading")  # journals the attempt, with this worker, before it runs
        token = uuid.uuid4().hex
        image_bytes = image.read_bytes() if image is not None else None
        ref = worker.actor.run.remote(token, spec, model, image_bytes, image.name if image else None,
                                      [(p.role, p.path.name, p.description) for p in wanted])
        heard = time.monotonic()
        seen: tuple[Any, ...] = ()
        worker.running = True
        try:
            while True:
                done, _ = ray.wait([ref], timeout=POLL_S)
                if done:
                    break
                if stop.is_set():
                    raise Interrupted("stopping")
                try:
                    progress = ray.get(worker.actor.poll.remote(token), timeout=2.0)
                    heard = time.monotonic()
                except ray.exceptions.GetTimeoutError:
                    progress = None
                if time.monotonic() - heard > UNANSWERED_S:
                    raise WorkerLost(f"worker {worker.name} has not answered for {UNANSWERED_S:g} s")
                if not progress:
                    continue
                now = (progress.get("stage"), progress.get("step"))
                if progress.get("step"):
                    on_step(progress.get("phase") or "denoise", int(progress["step"]), int(progress["total"]))
                elif progress.get("stage") == "encoding" and now != seen:
                    stage("encoding")
                seen = now
            answer = ray.get(ref)
        except Interrupted:
            _cancel(worker, token, ref)
            raise
        except _GONE as e:
            worker.ready, worker.trouble = False, one_line(e)
            raise WorkerLost(f"worker {worker.name} ({worker.info.get('host') or 'its node'}) went away: "
                             f"{one_line(e)}") from None
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, HotfolderError):
                raise cause from None
            raise BackendError(f"worker {worker.name}: {one_line(cause or e)}") from None
        except WorkerLost:
            worker.ready, worker.trouble = False, "stopped answering"
            _cancel(worker, token, ref)
            raise
        except Exception:
            if self._executor._epoch != epoch:  # the daemon left the cluster (gone) while this job ran there
                raise WorkerLost(f"the Ray cluster went away while worker {worker.name} ran this job") from None
            raise
        finally:
            worker.running = False
        if not mp4.parent.is_dir():  # the journal no longer holds this job (its folder was removed): dropped
            raise Interrupted(f"the job's folder was removed from processing/: the result from {worker.name} is "
                              "dropped")
        worker.info = {**worker.info, "loaded": list(answer["loaded"])}
        if answer.get("stage") == "encoding" and seen[:1] != ("encoding",):
            stage("encoding")
        mp4.write_bytes(answer["files"]["video"])
        for p in wanted:
            p.path.write_bytes(answer["files"][p.role])
        info = {**answer["info"], "worker": worker.name, "worker_host": answer["host"], "worker_node": answer["node"]}
        return Made(Outcome(backend=answer["backend"], device=answer["device"], model=model,
                            has_audio=answer["has_audio"], info=info),
                    load_s=answer["load_s"], generate_s=answer["generate_s"], encode_s=answer["encode_s"],
                    previews_s=answer["previews_s"])

    def _wait_ready(self, stage: Callable[[str], None], stop: threading.Event) -> None:
        """Until this worker answers; meanwhile a ready, free worker takes over from it. The "waiting" stage is
        said again each turn: the daemon checks the job's cancel there."""
        while not self.worker.ready:
            if stop.is_set():
                raise Interrupted("stopping")
            other = self._executor._swap(self.worker)
            if other is not None:
                self.worker = other
                return
            stage("waiting")
            time.sleep(0.2)


def _cancel(worker: _Worker, token: str, ref: Any) -> None:
    """Tell the worker to stop this job at its next step (the call itself is never waited for)."""
    try:
        worker.actor.poll.remote(token, True)
    except Exception:  # noqa: BLE001 - a worker that is gone has nothing to stop
        pass


class _Actor:
    """A worker: one resident model (a `Provider`), the job it runs, and the cancels asked for.

    Two concurrency groups: "run" (one job at a time) and "ctl" (ping, poll, cancel), so a poll or a
    cancel is answered while a job runs, and a cancel reaches it at its next denoising step.
    """

    def __init__(self, config: Config, registry: dict[str, Any], name: str):
        for path in registry["paths"]:
            if path not in sys.path:
                sys.path.insert(0, path)
        from hotfolder.config import BACKEND_MODULES, SIZE_MULTIPLE

        BACKEND_MODULES.update(registry["modules"])
        SIZE_MULTIPLE.update(registry["sizes"])
        from hotfolder import backends
        from hotfolder.daemon.provider import Provider

        self.config = config
        self.name = name
        self.provider = Provider(config, backends.create)
        self.progress: dict[str, dict[str, Any]] = {}
        self.cancelled: set[str] = set()
        self.host = socket.gethostname()
        self._preload()

    def _preload(self) -> None:
        """The default model, loaded at once (after a restart too); a job for another model loads that one."""
        import types

        from hotfolder.backends import choose

        model = self.config.model_info(self.config.model)
        if model is None:
            return
        try:
            backend, _ = choose.resolve(self.config.backend, model, self.config)
            self.provider.get(types.SimpleNamespace(backend=backend), model)
        except Exception:  # noqa: BLE001 - weights missing, say: the job that needs it says so
            pass

    @ray.method(concurrency_group="ctl")
    def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": self.host, "node": ray.get_runtime_context().get_node_id()[:12],
                "loaded": list(self.provider.key or [])}

    @ray.method(concurrency_group="ctl")
    def poll(self, token: str, cancel: bool = False) -> dict[str, Any] | None:
        if cancel:
            self.cancelled.add(token)
        return self.progress.get(token)

    @ray.method(concurrency_group="run")
    def unload(self) -> None:
        self.provider.close()

    @ray.method(concurrency_group="run")
    def run(self, token: str, spec: Any, model: ModelInfo, image: bytes | None, image_name: str | None,
            wanted: list[tuple[str, str, str | None]]) -> dict[str, Any]:
        import dataclasses
        import tempfile

        from hotfolder.daemon.executor import encode_clip

        if token in self.cancelled:
            raise Interrupted("cancelled before it started")
        progress = self.progress[token] = {"stage": "loading"}

        def on_step(phase: str, step: int, total: int) -> None:
            if token in self.cancelled:
                raise Interrupted("cancelled by hotfolder cancel")
            self.progress[token] = {"stage": "generating", "phase": phase, "step": step, "total": total}

        try:
            with tempfile.TemporaryDirectory(prefix="hotfolder-worker-") as tmp:
                folder = Path(tmp)
                if image is not None:
                    path = folder / (image_name or "image")
                    path.write_bytes(image)
                    spec = dataclasses.replace(spec, image=str(path))
                backend, load_s = self.provider.get(spec, model)
                progress["stage"] = "generating"
                t0 = time.perf_counter()
                clip = backend.generate(spec, on_step)
                generate_s = time.perf_counter() - t0
                self.progress[token] = {"stage": "encoding"}
                mp4 = folder / "clip.mp4"
                previews = [Preview(role, folder / name, "", about) for role, name, about in wanted]
                encode_s, previews_s = encode_clip(clip, spec, model, mp4, previews)
                files = {"video": mp4.read_bytes(), **{p.role: p.path.read_bytes() for p in previews}}
            return {"files": files, "backend": backend.name, "device": backend.device,
                    "has_audio": clip.audio is not None, "info": clip.info, "load_s": load_s,
                    "generate_s": generate_s, "encode_s": encode_s, "previews_s": previews_s, "host": self.host,
                    "node": ray.get_runtime_context().get_node_id(),
                    "loaded": list(self.provider.key or []), "stage": "encoding"}
        finally:
            self.progress.pop(token, None)
            self.cancelled.discard(token)


def _cpu_nodes(nodes: list[dict[str, Any]]) -> int:
    """Alive nodes that can hold a CPU worker (a head started with --num-cpus=0 places none)."""
    return sum(1 for n in nodes if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1)


def _registry() -> dict[str, Any]:
    """The backends this process knows (a test's fake one too) and the folders their modules live in."""
    from hotfolder.config import BACKEND_MODULES, SIZE_MULTIPLE

    paths = []
    for module in BACKEND_MODULES.values():
        loaded = sys.modules.get(module)
        if not module.startswith("hotfolder.") and loaded is not None and getattr(loaded, "__file__", None):
            paths.append(str(Path(loaded.__file__).resolve().parent))
    return {"modules": dict(BACKEND_MODULES), "sizes": dict(SIZE_MULTIPLE), "paths": paths}


def _forwarded() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("HOTFOLDER_") and k not in _NOT_FORWARDED}


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of "HOST:PORT" or "ray://HOST:PORT"; None for "auto" (ray finds the local cluster)."""
    if not address or address == "auto":
        return None
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


def _shutdown() -> None:
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - leaving a cluster that is gone
        pass


def survey(config: Config) -> dict[str, Any]:
    """What `hotfolder doctor` says about the cluster: reachable?, its nodes and their GPUs / mlx slots, and the
    workers a daemon would start there. Joins the cluster for a moment as a driver of its own, then leaves."""
    address = config.ray_address
    target = _host_port(address)
    if target is not None:
        try:
            socket.create_connection(target, timeout=5).close()
        except OSError as e:
            raise UsageError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None
    try:
        ray.init(address=address, namespace="hotfolder-doctor", log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # noqa: BLE001 - said in words
        text = str(e).strip().splitlines()
        raise UsageError(f"cannot join the Ray cluster at {address}: {text[0] if text else e}") from None
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        _, count, why = placement(ray.cluster_resources(), _cpu_nodes(nodes))
        return {"address": address, "workers": config.workers or count, "placement": why,
                "ray": ray.__version__,
                "nodes": [{"host": n.get("NodeManagerHostname") or n.get("NodeManagerAddress"),
                           "ip": n.get("NodeManagerAddress"), "head": "node:__internal_head__" in n["Resources"],
                           **{k: n["Resources"].get(k, 0) for k in ("CPU", "GPU", "mlx")}} for n in nodes]}
    finally:
        ray.shutdown()
