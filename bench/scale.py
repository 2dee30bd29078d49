"""How throughput scales with workers (issue 14), each ratio against a baseline measured in the same run.

1. ray: a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`, CPU only: a head that places
   nothing and two worker nodes), the real daemon (`hotfolder run`, executor = "ray") with 1, 2, 4 and 8
   workers, and the fake backend taking a fixed time per job (HOTFOLDER_FAKE_STEP_S x steps: a stand-in for a
   GPU that is busy, which is why 8 workers scale on a 2-core machine). Per worker count: the daemon starts,
   a warm-up job per worker loads each actor's model, then a burst of jobs is dropped at once; the burst's
   time is its first claim to its last result (from the results' metadata). Shown: jobs/s and the ratio to
   1 worker (the ideal is the worker count; what is missing is the dispatch overhead: a claim, a cache
   lookup, the call to the actor, the poll for progress, the files sent back, the delivery).
2. local: the tiny Diffusers model on this machine (executor = "local"), the same burst made with the
   overlapped encode (two daemon workers: one generates while the other encodes; the default) and without
   it (one worker: the model waits while ffmpeg encodes). Shown: jobs/s and the ratio.

    python bench/scale.py [--sections ray,local] [--jobs 16] [--job-s 1.0] [--workers 1,2,4,8] [--local-jobs 6]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
STEPS = 4


def _wall(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def _config(base: Path, **extra: object) -> Path:
    import tomli_w

    data = {"settle_seconds": 0.1, "rescan_seconds": 0.5, "notifications": False,
            "cache_dir": str(base / "cache"), "log_dir": str(base / "logs"), "state_dir": str(base / "state"),
            **extra}
    path = base / "config.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _drop(inbox: Path, name: str, text: str) -> None:
    tmp = inbox / f".{name}.tmp"
    tmp.write_text(text)
    os.rename(tmp, inbox / name)


def _results(root: Path) -> list[dict]:
    metas = []
    for folder in (root / "outbox").iterdir():
        if folder.is_dir():
            found = [p for p in folder.glob("*.json")]
            if found:
                metas.append(json.loads(found[0].read_text()))
    return metas


def _wait(root: Path, n: int, timeout: float, daemon: subprocess.Popen) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon ended early: {daemon.stdout.read() if daemon.stdout else ''}")
        metas = _results(root)
        if len(metas) >= n:
            return metas
        failed = list((root / "failed").glob("*/error.txt"))
        if failed:
            raise SystemExit(failed[0].read_text())
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {n} results in {root}")


def _burst_rate(metas: list[dict], prefix: str) -> tuple[int, float]:
    burst = [m for m in metas if Path(m["source"]).name.startswith(prefix)]
    first = min(_wall(m["timings"]["queued"]) for m in burst)
    last = max(_wall(m["timings"]["finished"]) for m in burst)
    return len(burst), last - first


def ray_section(jobs: int, job_s: float, counts: list[int]) -> list[tuple[int, float, float]]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    rows = []
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=max(counts) // 2 + 1)
        cluster.wait_for_nodes()
        for workers in counts:
            base = Path(tempfile.mkdtemp(prefix=f"hotfolder-scale-{workers}-"))
            try:
                root = base / "root"
                for sub in ("inbox", "outbox", "failed", "processing"):
                    (root / sub).mkdir(parents=True)
                config = _config(base, executor="ray", ray_address=cluster.address, workers=workers)
                env = {**os.environ, "HOTFOLDER_FAKE_STEP_S": str(job_s / STEPS), "PYTHONUNBUFFERED": "1"}
                daemon = subprocess.Popen([sys.executable, str(TESTS / "run_daemon.py"), "run", "--root", str(root),
                                           "--config", str(config), "--backend", "fake"], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                try:
                    job = f"width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = {STEPS}\ncache = false\n"
                    for i in range(workers):
                        _drop(root / "inbox", f"warm-{i}.toml", f'prompt = "warm {i}"\n{job}')
                    _wait(root, workers, 180, daemon)
                    for i in range(jobs):
                        _drop(root / "inbox", f"burst-{i:03d}.toml", f'prompt = "burst {i}"\n{job}')
                    metas = _wait(root, workers + jobs, 600, daemon)
                finally:
                    daemon.terminate()
                    daemon.wait(timeout=30)
                n, seconds = _burst_rate(metas, "burst-")
                rows.append((workers, n / seconds, seconds))
                print(f"  ray, {workers} worker(s): {n} jobs in {seconds:.2f} s", file=sys.stderr)
            finally:
                shutil.rmtree(base, ignore_errors=True)
    finally:
        cluster.shutdown()
    return rows


_ONE_WORKER = (
    "import sys; sys.path.insert(0, {tests!r}); "
    "from hotfolder.daemon import executor; executor.LocalExecutor.threads = 1; "
    "from hotfolder.cli import main; sys.exit(main(sys.argv[1:]))"
)


def local_section(jobs: int) -> list[tuple[str, float, float]]:
    rows = []
    for label, overlap in (("overlapped encode (2 workers)", True), ("no overlap (1 worker)", False)):
        base = Path(tempfile.mkdtemp(prefix="hotfolder-scale-local-"))
        try:
            root = base / "root"
            for sub in ("inbox", "outbox", "failed", "processing"):
                (root / sub).mkdir(parents=True)
            config = _config(base, model="tiny")
            job = ("width = 384\nheight = 256\nduration = 4.0\nfps = 24\nsteps = 2\ncache = false\n"
                   "[output]\ngif = true\nthumbnail = true\n")
            _drop(root / "inbox", "a-warm.toml", f'prompt = "warm up"\npriority = 9\n{job}')
            for i in range(jobs):
                _drop(root / "inbox", f"burst-{i:03d}.toml", f'prompt = "tiny burst {i}"\n{job}')
            time.sleep(0.3)  # settled before the daemon starts: the whole burst is in the inbox at once
            cmd = [sys.executable, "-m", "hotfolder"] if overlap else [sys.executable, "-c",
                                                                      _ONE_WORKER.format(tests=str(TESTS))]
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            run = subprocess.run([*cmd, "run", "--once", "--root", str(root), "--config", str(config)], env=env,
                                 capture_output=True, text=True, timeout=1800)
            if run.returncode != 0:
                raise SystemExit(run.stdout[-2000:] + run.stderr[-2000:])
            metas = _results(root)
            burst = [m for m in metas if Path(m["source"]).name.startswith("burst-")]
            first = min(_wall(m["timings"]["started"]) for m in burst)
            last = max(_wall(m["timings"]["finished"]) for m in burst)
            enc = sum(m["timings"]["encode_s"] for m in burst) / len(burst)
            gen = sum(m["timings"]["generate_s"] for m in burst) / len(burst)
            rows.append((label, len(burst) / (last - first), last - first))
            print(f"  local, {label}: {len(burst)} jobs in {last - first:.2f} s (generate {gen:.2f} s, "
                  f"encode {enc:.2f} s per job)", file=sys.stderr)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="ray,local")
    parser.add_argument("--jobs", type=int, default=16, help="jobs in each Ray burst")
    parser.add_argument("--job-s", type=float, default=1.0, help="seconds the fake backend takes per job")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--local-jobs", type=int, default=6)
    args = parser.parse_args()
    sections = args.sections.split(",")
    if "ray" in sections:
        rows = ray_section(args.jobs, args.job_s, [int(w) for w in args.workers.split(",")])
        base = rows[0][1]
        print(f"\nRay executor, fake backend ({args.job_s:g} s per job), {args.jobs} jobs per burst")
        print("| workers | burst s | jobs/s | vs 1 worker | ideal |")
        print("|---:|---:|---:|---:|---:|")
        for workers, rate, seconds in rows:
            print(f"| {workers} | {seconds:.2f} | {rate:.2f} | {rate / base:.2f}x | {workers}x |")
    if "local" in sections:
        rows = local_section(args.local_jobs)
        base = rows[1][1]
        print(f"\nLocal executor, tiny Diffusers model, {args.local_jobs} jobs (384x256, 4 s, GIF and thumbnail)")
        print("| local executor | burst s | jobs/s | vs no overlap |")
        print("|---|---:|---:|---:|")
        for label, rate, seconds in rows:
            print(f"| {label} | {seconds:.2f} | {rate:.2f} | {rate / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
