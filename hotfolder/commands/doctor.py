"""`hotfolder doctor`: one command that says what is wrong on this machine and how to fix it.

Each check gives ok, warn or fail, a line of detail and, unless ok, the fix.
Versions come from package metadata (nothing heavy is imported for them);
weights are read from the Hugging Face cache folder offline. Everything the
checks look at comes through `Probes`, so tests can show a missing ffmpeg,
missing weights or an unwritable root on any machine.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from hotfolder.config import Config, ModelInfo
from hotfolder.commands.models import GB, ModelState, backend_for, free_bytes, gb, model_state

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_PYTHON = (3, 11)
REQUIRED = ("numpy", "watchdog", "platformdirs", "structlog", "tomli-w", "imageio-ffmpeg", "pillow",
            "huggingface-hub")
BACKEND_PACKAGES = {
    "diffusers": ("torch", "diffusers", "transformers", "accelerate"),
    "mlx": ("mlx", "mlx-video-with-audio"),
}
ROOT_MIN_FREE = 5 * GB  # a few results and their staging
# The doctor answers within a few seconds: the slow probes (the device, which imports torch or mlx, and the
# service manager) run beside the other checks, and one that has not answered by its deadline is reported so.
DEVICE_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 2.0
CLUSTER_TIMEOUT_S = 20.0  # executor = "ray": importing ray and joining the cluster take seconds


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()  # RuntimeError when there is none


def _access(root: Path) -> None:
    """List the root and write then remove a file in it, as the daemon will (raises OSError)."""
    os.listdir(root)
    probe = root / f".doctor-{secrets.token_hex(4)}.tmp"  # hidden and *.tmp: the daemon ignores it
    probe.write_bytes(b"")
    probe.unlink()


def _device(backend: str) -> tuple[str, str, str]:
    """(status, device, why) for a backend, asked of a fresh interpreter (importing torch or mlx is what a
    device check costs: in a child it runs beside the other checks, and a slow one is abandoned)."""
    import json
    import subprocess

    probe = "import json, sys; from hotfolder.commands.doctor import device_here; " \
            "print(json.dumps(device_here(sys.argv[1])))"
    try:
        # -P: never import a `hotfolder` that happens to be in the current folder.
        p = subprocess.run([sys.executable, "-P", "-c", probe, backend], capture_output=True, text=True,
                           timeout=DEVICE_TIMEOUT_S + 1, stdin=subprocess.DEVNULL)
        status, device, why = json.loads(p.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return WARN, "?", f"the {backend} device check did not answer within {DEVICE_TIMEOUT_S:g} s"
    except (ValueError, IndexError, OSError):
        return FAIL, "none", f"the {backend} device check failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
    return status, device, why


def device_here(backend: str) -> tuple[str, str, str]:
    """(status, device, why) in this process: imports torch or mlx."""
    if backend == "mlx":
        try:
            from hotfolder.backends.mlx import backend as mlx_av
        except ImportError as e:
            return FAIL, "none", f"this hotfolder has no MLX backend ({e})"
        ok, why = mlx_av.available()
        return (OK if ok else FAIL), ("gpu" if "Metal" in why else "cpu" if ok else "none"), why
    if _version("torch") is None:
        return FAIL, "none", "torch is not installed"
    import torch

    if torch.cuda.is_available():
        return OK, "cuda", f"CUDA GPU {torch.cuda.get_device_name(0)}"
    if torch.backends.mps.is_available():
        return OK, "mps", "Apple GPU through PyTorch MPS"
    return WARN, "cpu", "no GPU: real models take a very long time per video on the CPU"


def _agent_status(config: Config):
    from functools import partial

    from hotfolder.commands import agent
    from hotfolder.service.host import run_command

    # launchctl/systemctl answer in milliseconds; one that hangs must not hold up the doctor.
    return agent.status(agent.Host.current(run=partial(run_command, timeout=PROBE_TIMEOUT_S)))


@dataclass
class Probes:
    """What the checks look at; tests replace any of these."""

    platform: str = sys.platform
    python: Path = field(default_factory=lambda: Path(os.path.abspath(sys.executable)))
    python_version: tuple[int, int, int] = tuple(sys.version_info[:3])  # type: ignore[assignment]
    version: Callable[[str], str | None] = _version
    ffmpeg: Callable[[], str] = _ffmpeg
    device: Callable[[str], tuple[str, str, str]] = _device
    model_state: Callable[[ModelInfo, str], ModelState] | None = None  # default: read hub_cache
    disk_free: Callable[[Path], int] = free_bytes
    hub_cache: Path | None = None
    access: Callable[[Path], None] = _access
    agent: Callable[[Config], object] | None = _agent_status
    home: Path = field(default_factory=Path.home)
    device_timeout: float = DEVICE_TIMEOUT_S
    probe_timeout: float = PROBE_TIMEOUT_S
    memory: Callable[[], object] | None = None  # this machine's memory (backends.memory.Machine); default: measured

    def __post_init__(self) -> None:
        if self.model_state is None:
            self.model_state = lambda model, backend: model_state(model, backend, self.hub_cache)


# -- the checks ----------------------------------------------------------------------
def check_python(p: Probes) -> Check:
    v = ".".join(map(str, p.python_version))
    if tuple(p.python_version[:2]) < MIN_PYTHON:
        return Check("python", FAIL, f"Python {v} at {p.python}", "hotfolder needs Python 3.11 or newer: "
                     "make PYTHON=python3.12 install")
    return Check("python", OK, f"Python {v} at {p.python}")


def check_packages(p: Probes) -> Check:
    found = {d: p.version(d) for d in ("hotfolder", *REQUIRED)}
    missing = [d for d, v in found.items() if v is None]
    optional = {d: p.version(d) for pkgs in BACKEND_PACKAGES.values() for d in pkgs}
    shown = ", ".join(f"{d} {v}" for d, v in {**found, **optional}.items() if v)
    if missing:
        return Check("packages", FAIL, f"missing: {', '.join(missing)}; installed: {shown}",
                     f"{p.python} -m pip install -e . (from the hotfolder checkout)")
    return Check("packages", OK, shown)


def check_backend(config: Config, p: Probes, device: Bounded | None = None) -> tuple[Check, str]:
    """The backend jobs that say `auto` get for the default model, why, and on which device."""
    from hotfolder.backends import choose

    model = config.model_info(config.model)
    name, why = choose.resolve("auto", model, config)
    missing = [d for d in BACKEND_PACKAGES.get(name, ()) if p.version(d) is None]
    if missing:
        extra = "pip install -e '.[diffusers]'" if name == "diffusers" else "pip install 'mlx-video-with-audio'"
        return Check("backend", FAIL, f"{name} ({why}), but {', '.join(missing)} not installed",
                     f"{p.python} -m {extra}"), name
    answered, result = device.get() if device is not None else (True, p.device(name))
    if not answered:
        return Check("backend", WARN, f"{name} ({why}); the device check did not answer within "
                     f"{p.device_timeout:g} s", "run `hotfolder doctor` again (the first import of torch or mlx "
                     "after an install is slow)"), name
    status, device_name, device_why = result  # type: ignore[misc]
    detail = f"{name} ({why}) on {device_name}: {device_why}"
    fix = ""
    if status == OK and name == "diffusers" and p.platform == "darwin" and _apple_silicon(p):
        status, fix = WARN, "on Apple Silicon the MLX backend is much faster: install mlx-video-with-audio"
    elif status == WARN:
        fix = "real videos need a GPU or an Apple Silicon Mac; the tiny model (hotfolder demo) runs anywhere"
    elif status != OK:
        fix = "set backend in config.toml or pass --backend; see `hotfolder models list`"
    return Check("backend", status, detail, fix), name


def _apple_silicon(p: Probes) -> bool:
    import platform

    return p.platform == "darwin" and platform.machine() == "arm64"


def check_weights(config: Config, p: Probes) -> list[Check]:
    checks = []
    for name, model in config.models.items():
        if model.tiny:
            continue
        default = name == config.model
        backend = backend_for(model, config)
        st = p.model_state(model, backend)
        label = f"weights {name}"
        if st.present:
            checks.append(Check(label, OK, f"present for {backend} ({gb(st.bytes)})"))
        elif not st.repos:
            level = FAIL if default else OK
            checks.append(Check(label, level, f"no weights for the {backend} backend",
                                "choose another default model in config.toml" if default else ""))
        elif st.status == "partial":
            checks.append(Check(label, FAIL if default else WARN, f"incomplete ({gb(st.bytes)}): {st.problem}",
                                f"hotfolder models pull {name}   (resumes)"))
        elif default:
            checks.append(Check(label, FAIL, f"the default model is not downloaded ({model.size_gb:.0f} GB)",
                                f"hotfolder models pull {name}"))
        else:
            checks.append(Check(label, OK, f"not downloaded (only jobs that name it need it: "
                                f"hotfolder models pull {name})"))
    default = config.model_info(config.model)
    if default is not None and default.local_path and not Path(default.local_path).expanduser().is_dir():
        checks.append(Check(f"weights {config.model}", FAIL, "the folder does not exist",
                            "fix `model` in config.toml"))
    return checks


def _memory_here() -> object:
    from hotfolder.backends import memory

    return memory.machine(memory.nvidia_smi_memory())  # nvidia-smi, not torch: the doctor's process stays light


def check_memory(config: Config, p: Probes, backend: str, device: Bounded | None = None) -> list[Check]:
    """Each model's resident memory on the backend and device this machine would use, against the machine's.

    The default model not fitting fails (the daemon would refuse every job); another model warns when its
    weights are here (someone means to use it), else it is said in passing.
    """
    from hotfolder.backends import memory

    here = (p.memory or _memory_here)()
    gpu = (here.gpu_total, here.gpu_free, here.gpu_name) if here.gpu_total else None
    probed = None
    if device is not None:
        answered, result = device.get()
        probed = result[1] if answered and result and result[1] not in ("?", "none") else None
    checks = [Check("memory", OK, f"this machine: {here.describe()}")]
    for name, model in config.models.items():
        if model.tiny or model.local_path:
            continue
        b = backend_for(model, config)
        if b not in ("diffusers", "mlx") or not p.model_state(model, b).repos:
            continue  # no weights for that backend: `weights NAME` says so
        dev = probed if (probed and b == backend) else memory.device_for(b, gpu)
        est = memory.estimate(model, b, dev)
        verdict = memory.fit(est, here)
        label, detail = f"memory {name}", f"{b} on {dev}: about {gb(est.total)} ({est.parts()}); {verdict.why}"
        if verdict.fits:
            checks.append(Check(label, OK, detail))
        elif name == config.model:
            checks.append(Check(label, FAIL, detail, "choose a model that fits this machine as `model` in "
                                "config.toml (`hotfolder models list` shows which fit), or run on a machine with more "
                                "memory; the daemon refuses this one before loading it"))
        elif p.model_state(model, b).present:
            checks.append(Check(label, WARN, detail, f"jobs naming {name} are refused here; delete its weights or "
                                "run them on a larger machine"))
        else:
            checks.append(Check(label, OK, f"{detail} (jobs naming it are refused here)"))
    return checks


def check_ffmpeg(p: Probes) -> Check:
    try:
        exe = p.ffmpeg()
    except (RuntimeError, OSError, ImportError) as e:
        return Check("ffmpeg", FAIL, f"not found ({e})",
                     f"{p.python} -m pip install --force-reinstall imageio-ffmpeg (it bundles ffmpeg), "
                     "or set IMAGEIO_FFMPEG_EXE to an ffmpeg binary")
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        return Check("ffmpeg", FAIL, f"{exe} is not an executable file",
                     "set IMAGEIO_FFMPEG_EXE to a working ffmpeg, or reinstall imageio-ffmpeg")
    return Check("ffmpeg", OK, exe)


def check_disk(config: Config, p: Probes, backend: str) -> list[Check]:
    from hotfolder import weights

    checks = []
    hub = p.hub_cache or weights.hub_cache()
    model = config.model_info(config.model)
    free = p.disk_free(hub)
    if model is not None and not model.tiny and not model.local_path and model.size_gb:
        st = p.model_state(model, backend)
        need = 0 if st.present else max(0, int(model.size_gb * GB) - st.bytes)
        if need > free:
            checks.append(Check("disk (weights)", FAIL,
                                f"{config.model} needs {gb(need)} more; {hub} has {gb(free)} free",
                                "free up space, or set HF_HOME to a larger disk and run `hotfolder agent install` "
                                "again"))
        else:
            checks.append(Check("disk (weights)", OK, f"{gb(free)} free at {hub}"
                                + (f"; {config.model} needs {gb(need)} more" if need else "")))
    cache_free = p.disk_free(config.cache_dir)
    if cache_free < config.cache_max_bytes:
        checks.append(Check("disk (cache)", WARN, f"the result cache may grow to {gb(config.cache_max_bytes)}, "
                            f"but {config.cache_dir} has {gb(cache_free)} free",
                            "lower cache_max_bytes in config.toml, or `hotfolder cache prune`"))
    root_free = p.disk_free(config.root)
    if root_free < ROOT_MIN_FREE:
        checks.append(Check("disk (root)", WARN, f"{config.root} has {gb(root_free)} free",
                            "move old results out of the outbox, or free up space"))
    else:
        checks.append(Check("disk (root)", OK, f"{gb(root_free)} free at {config.root}"))
    return checks


def check_root(config: Config, p: Probes) -> Check:
    from hotfolder.service.privacy import full_disk_access_hint, protected_location

    root = config.root
    where = protected_location(root, p.home) if p.platform == "darwin" else None
    if not root.exists():
        parent = next((q for q in root.parents if q.exists()), Path("/"))
        if os.access(parent, os.W_OK):
            return Check("root", OK, f"{root} does not exist yet; the daemon creates it at its first start")
        return Check("root", FAIL, f"{root} does not exist and {parent} is not writable",
                     "choose another root: --root DIR, or `root` in config.toml")
    try:
        p.access(root)
    except OSError as e:
        fix = f"make it readable and writable for you (ls -ld {root})"
        if where is not None or p.platform == "darwin":
            fix = (f"macOS privacy blocks it{' (it is in ' + where + ')' if where else ''}: "
                   f"{full_disk_access_hint(p.python)} Or use a root outside Desktop/Documents/Downloads/iCloud, "
                   "e.g. ~/Movies/Hotfolder.")
        return Check("root", FAIL, f"{root} is not readable and writable: {e.strerror or e}", fix)
    if where is not None:
        return Check("root", WARN, f"{root} is in {where}: this terminal can use it, but the agent's Python "
                     "needs Full Disk Access to see new files there", full_disk_access_hint(p.python))
    return Check("root", OK, f"{root} is readable and writable")


def check_agent(config: Config, p: Probes, probe: Bounded | None = None) -> Check:
    from hotfolder.folders import status as status_file

    if p.agent is None:
        return Check("agent", OK, "not checked")
    answered, st = probe.get() if probe is not None else (True, p.agent(config))
    if not answered:
        return Check("agent", WARN, f"the service manager did not answer within {p.probe_timeout:g} s",
                     "hotfolder agent status (it waits for the answer)")
    if getattr(st, "unreachable", None):
        return Check("agent", WARN, st.describe(), "")
    seen = status_file.read(config.root)
    daemon, alive, age = seen.daemon, seen.alive, seen.age_s or 0.0
    beat = f"; daemon heartbeat {age:.0f} s ago (pid {daemon.get('pid')})" if alive else ""
    manager = getattr(st, "manager", "none")
    if manager == "none":
        return Check("agent", OK if alive else WARN, f"{st.describe()}{beat}",
                     "" if alive else "start the daemon: hotfolder run")
    if getattr(st, "running", False):
        if alive or daemon.get("pid") == getattr(st, "pid", None):
            return Check("agent", OK, f"{st.describe()}{beat}")
        return Check("agent", FAIL, f"{st.describe()}, but it writes no heartbeat to {config.status_file}",
                     "it cannot use the root: look at its log (~/Library/Logs/hotfolder/daemon.err.log on macOS, "
                     "journalctl --user -u hotfolder on Linux); on macOS this is usually privacy (Full Disk Access)")
    if getattr(st, "installed", False) or getattr(st, "loaded", False):
        return Check("agent", FAIL, st.describe(), "hotfolder agent install (then hotfolder agent status)")
    return Check("agent", WARN, f"{st.describe()}{beat}", "" if alive else "hotfolder agent install")


def _survey(config: Config) -> object:
    from hotfolder.daemon import cluster

    return cluster.survey(config)


def check_cluster(config: Config, p: Probes, probe: Bounded | None) -> list[Check]:
    """executor = "ray": the ray package, the cluster at ray_address (reachable?), its nodes with their GPUs and
    mlx slots, and how many workers the daemon would start there."""
    if config.executor != "ray":
        return []
    address = config.ray_address
    if p.version("ray") is None:
        return [Check("cluster", FAIL, "executor = \"ray\" but the ray package is not installed",
                      "pip install 'hotfolder[ray]' (or set executor = \"local\")")]
    fix = (f"start the cluster (`ray start --head` on the GPU machine, `ray start --address HEAD:6379` on the "
           f"others) or set ray_address (now {address!r}) to where it runs")
    try:
        answered, found = probe.get() if probe is not None else (True, None)
    except Exception as e:  # noqa: BLE001 - the probe's error, in words
        return [Check("cluster", FAIL, str(e), fix)]
    if not answered:
        return [Check("cluster", FAIL, f"the Ray cluster at {address} did not answer within {CLUSTER_TIMEOUT_S:g} s",
                      fix)]
    if not isinstance(found, dict):
        return []
    nodes = found["nodes"]
    checks = [Check("cluster", OK, f"{address}: ray {found['ray']}, {len(nodes)} node(s), {found['workers']} "
                                   f"worker(s) ({found['placement']})")]
    for n in nodes:
        role = "head" if n["head"] else "node"
        has = ", ".join(f"{n[k]:g} {k}" for k in ("GPU", "mlx", "CPU") if n.get(k))
        checks.append(Check(f"cluster {role}", OK, f"{n['host']} ({n['ip']}): {has or 'no CPU, GPU or mlx'}"))
    gpus = sum(n.get("GPU", 0) + n.get("mlx", 0) for n in nodes)
    if not gpus:
        checks.append(Check("cluster gpus", WARN, "no GPU (and no mlx resource) in the cluster: workers run on CPU",
                            "on each GPU machine `ray start --address HEAD:6379` (Ray finds NVIDIA GPUs); on a Mac "
                            "add --resources '{\"mlx\": 1}'"))
    return checks


class Bounded:
    """A slow probe started on its own thread now, its answer collected later by a deadline."""

    def __init__(self, fn: Callable[[], object], timeout: float):
        import threading

        self.timeout = timeout
        self.started = time.monotonic()
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), name="hotfolder-doctor-probe", daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            self.result = fn()
        except Exception as e:  # reported as the check's answer, never a traceback
            self.error = e

    def get(self) -> tuple[bool, object]:
        """(answered, result): waits at most until `timeout` after the start."""
        self.thread.join(max(0.0, self.started + self.timeout - time.monotonic()))
        if self.thread.is_alive():
            return False, None
        if self.error is not None:
            raise self.error
        return True, self.result


def run_checks(config: Config, probes: Probes | None = None) -> list[Check]:
    from hotfolder.backends import choose

    p = probes or Probes()
    model = config.model_info(config.model)
    backend_name, _ = choose.resolve("auto", model, config)
    needs_device = not [d for d in BACKEND_PACKAGES.get(backend_name, ()) if p.version(d) is None]
    device = Bounded(lambda: p.device(backend_name), p.device_timeout) if needs_device else None
    agent = Bounded(lambda: p.agent(config), p.probe_timeout) if p.agent is not None else None
    cluster = Bounded(lambda: _survey(config), CLUSTER_TIMEOUT_S) \
        if config.executor == "ray" and p.version("ray") is not None else None
    checks = [check_python(p), check_packages(p)]
    backend_check, backend = check_backend(config, p, device)
    checks += [backend_check, *check_weights(config, p), *check_memory(config, p, backend, device), check_ffmpeg(p),
               *check_disk(config, p, backend),
               check_root(config, p), check_agent(config, p, agent)]
    checks += check_cluster(config, p, cluster)
    return checks


def report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    return "\n".join(lines)


def run_doctor(config: Config, probes: Probes | None = None) -> int:
    """Print every check; exit 1 when any failed."""
    checks = run_checks(config, probes)
    print(report(checks))
    failed = [c for c in checks if c.status == FAIL]
    warned = [c for c in checks if c.status == WARN]
    print(f"\n{len(failed)} failed, {len(warned)} warnings, {len(checks) - len(failed) - len(warned)} ok")
    return 1 if failed else 0
