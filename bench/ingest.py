"""The daemon's own costs, on the fake backend (issue 3): per-job overhead, draining a burst, idle CPU.

Baselines are measured in the same run, since the machines are noisy:
- per job: the daemon's claim-to-delivery time versus the unavoidable work done
  directly (encoding the same clip with the same ffmpeg call).
- burst: N job files dropped at once until the last result is in the outbox, versus
  N direct encodes.
- idle: CPU seconds the daemon uses over --idle-seconds with nothing to do (it must
  not busy-poll), versus the wall time.

Usage: python bench/ingest.py [--jobs 1000] [--single 20] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(TESTS))

JOB = ('prompt = "job {n}"\nwidth = 64\nheight = 64\nduration = 0.05\nfps = 8\nsteps = 1\ncache = false\n'
       "[output]\ngif = false\nthumbnail = false\n")



def _results(outbox: Path) -> list[Path]:
    """The result folders (the outbox also holds the gallery's index.html and its status script)."""
    return [p for p in outbox.iterdir() if p.is_dir()]

def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--single", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    args = ap.parse_args()

    import numpy as np

    from hotfolder import media
    from hotfolder.backends import Clip

    tmp = Path(tempfile.mkdtemp(prefix="hotfolder-ingest-"))
    root = tmp / "root"
    cfg = tmp / "config.toml"
    settle = 0.2
    cfg.write_text(f'settle_seconds = {settle}\nrescan_seconds = 5.0\ncache_dir = "{tmp}/cache"\n'
                   f'log_dir = "{tmp}/logs"\nnotifications = false\n')
    env = {**os.environ, "HOME": str(tmp), "PYTHONPATH": str(TESTS)}
    try:
        # Baseline: the encode the fake job needs (same frames, audio and ffmpeg call as the fake backend's).
        frames = np.zeros((9, 64, 64, 3), np.uint8)
        audio = np.zeros((2, 18000), np.float32)
        direct = []
        for _ in range(args.single):
            t0 = time.perf_counter()
            media.encode_mp4(Clip(frames, 8.0, audio, 16000), tmp / "direct.mp4")
            direct.append(time.perf_counter() - t0)

        daemon = subprocess.Popen(
            [sys.executable, str(TESTS / "run_daemon.py"), "run", "--root", str(root), "--config", str(cfg),
             "--backend", "fake"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            wait_for(lambda: (root / "status.json").exists(), 60, "the daemon to start")
            inbox, outbox = root / "inbox", root / "outbox"

            # 1. One job at a time: claim -> delivery, from the result's own timings.
            per_job, drop_to_outbox = [], []
            for n in range(args.single):
                t0 = time.perf_counter()
                (inbox / f".s{n}.tmp").write_text(JOB.format(n=n))
                os.rename(inbox / f".s{n}.tmp", inbox / f"s{n}.toml")
                wait_for(lambda: len(_results(outbox)) == n + 1, 60, "a single job")
                drop_to_outbox.append(time.perf_counter() - t0)
            for result in _results(outbox):
                meta = json.loads(next(result.glob("*.json")).read_text())
                per_job.append(meta["timings"]["total_s"] + meta["timings"]["wait_s"])

            # 2. A burst dropped at once.
            shutil.rmtree(outbox)
            outbox.mkdir()
            staging = tmp / "staging"
            staging.mkdir()
            for n in range(args.jobs):
                (staging / f"b{n:05d}.toml").write_text(JOB.format(n=n))
            t0 = time.perf_counter()
            for p in staging.iterdir():
                os.rename(p, inbox / p.name)
            wait_for(lambda: len(_results(outbox)) == args.jobs, 3600, "the burst to drain")
            drain = time.perf_counter() - t0

            # 3. Idle: nothing to do for idle-seconds.
            time.sleep(2)
            c0, t0 = cpu_seconds(daemon.pid), time.perf_counter()
            time.sleep(args.idle_seconds)
            idle_cpu, idle_wall = cpu_seconds(daemon.pid) - c0, time.perf_counter() - t0
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)

        med = statistics.median
        print(f"fake backend, 64x64 9-frame clips with audio; settle_seconds = {settle}")
        print(f"  direct encode (baseline):               {med(direct) * 1000:8.1f} ms/job")
        print(f"  daemon claim -> delivery:               {med(per_job) * 1000:8.1f} ms/job "
              f"({med(per_job) / med(direct):.2f}x the encode; overhead {1000 * (med(per_job) - med(direct)):.1f} ms)")
        print(f"  drop -> outbox, one at a time:          {med(drop_to_outbox) * 1000:8.1f} ms/job "
              f"(includes the {settle} s settle wait)")
        print(f"  {args.jobs} jobs dropped at once: drained in {drain:.1f} s = {drain / args.jobs * 1000:.1f} ms/job "
              f"({drain / (args.jobs * med(direct)):.2f}x the encodes alone)")
        print(f"  idle: {idle_cpu:.3f} CPU s over {idle_wall:.0f} s = {100 * idle_cpu / idle_wall:.3f}% of one core")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
