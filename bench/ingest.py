"""The daemon's own costs, on the fake backend (issues 3 and 16): drop to claim, claim to delivery, a burst, idle.

Every figure is timed from outside, by watching the folders as a user would (never from
the daemon's own `timings`, which end before the metadata, the log and the delivery
rename), and set against a baseline measured in the same run, since machines are noisy:
- drop -> claim: from the rename into the inbox until the file leaves it (the claim is
  one rename), minus the settle window the daemon must wait by design.
- claim -> delivery: from the claim until the result folder is in the outbox, minus the
  unavoidable work done directly (the clip the fake backend makes for the job, encoded with
  the daemon's own ffmpeg call): the daemon's overhead per job.
- burst: N job files dropped at once until the last result is in the outbox, versus N
  times that direct work.
- idle: CPU seconds the daemon uses over --idle-seconds with nothing to do (it must not
  busy-poll), versus the wall time.

Usage: python bench/ingest.py [--jobs 1000] [--single 20] [--idle-seconds 60] [--settle 0.2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(TESTS))

JOB = ('prompt = "job {n}"\nwidth = 64\nheight = 64\nduration = 0.05\nfps = 8\nsteps = 1\ncache = false\n'
       "[output]\ngif = false\nthumbnail = false\n")
POLL_S = 0.0005  # how often the folders are looked at while a single job runs


def _results(outbox: Path) -> list[Path]:
    """The result folders (the outbox also holds the gallery's index.html and its status script)."""
    return [p for p in outbox.iterdir() if p.is_dir()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process: /proc on Linux, `ps` elsewhere (macOS)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except FileNotFoundError:
        out = subprocess.run(["ps", "-o", "time=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
        seconds = 0.0
        days, _, clock = out.rpartition("-")
        for part in clock.split(":"):
            seconds = seconds * 60 + float(part)
        return seconds + (int(days) * 86400 if days else 0)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.01) -> float:
    """Poll until `predicate()`; returns the perf_counter time it first held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)
    return time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--single", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=0.2)
    args = ap.parse_args()

    from hotfolder import media

    tmp = Path(tempfile.mkdtemp(prefix="hotfolder-ingest-"))
    root = tmp / "root"
    cfg = tmp / "config.toml"
    settle = args.settle
    cfg.write_text(f'settle_seconds = {settle}\nrescan_seconds = 5.0\ncache_dir = "{tmp}/cache"\n'
                   f'log_dir = "{tmp}/logs"\nnotifications = false\n')
    # The daemon runs this tree's hotfolder (not whichever one is installed), with the tests' fake backend.
    env = {**os.environ, "HOME": str(tmp), "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    try:
        # Baseline: the work the fake job needs, done directly: the clip the fake backend makes for this job
        # file (9 frames of one colour, a 440 Hz tone), encoded with the daemon's own call (tags, 48 kHz sound).
        import fake_backend

        spec = SimpleNamespace(prompt="job 0", seed=42, steps=1, image=None, num_frames=9, width=64, height=64,
                               fps=8.0, generate_audio=True)
        direct = []
        for _ in range(args.single):
            t0 = time.perf_counter()
            clip = fake_backend.FakeBackend(None).generate(spec, lambda *a: None)
            media.encode_mp4(clip, tmp / "direct.mp4", audio_rate=media.MIX_RATE,
                             tags={"title": "job 0", "comment": "job 0\n\nseed 42", "description": "job 0\n\nseed 42",
                                   "encoder": "hotfolder"})
            direct.append(time.perf_counter() - t0)
            (tmp / "direct.mp4").unlink()

        daemon = subprocess.Popen(
            [sys.executable, str(TESTS / "run_daemon.py"), "run", "--root", str(root), "--config", str(cfg),
             "--backend", "fake"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            wait_for(lambda: (root / "status.json").exists(), 60, "the daemon to start")
            inbox, outbox = root / "inbox", root / "outbox"
            time.sleep(1.0)  # the start's own work (gallery, status) is over

            # 1. One job at a time, each written beside its name and renamed into place (as editors and sync
            #    clients do): drop -> claim (the file leaves the inbox) -> delivery (its folder is in the outbox).
            to_claim, to_outbox = [], []
            for n in range(args.single):
                path = inbox / f"s{n}.toml"
                (inbox / f".s{n}.tmp").write_text(JOB.format(n=n))
                t0 = time.perf_counter()
                os.rename(inbox / f".s{n}.tmp", path)
                t1 = wait_for(lambda: not os.path.exists(path), 60, "a claim", POLL_S)
                t2 = wait_for(lambda: len(_results(outbox)) == n + 1, 60, "a single job", POLL_S)
                to_claim.append(t1 - t0)
                to_outbox.append(t2 - t1)
                time.sleep(0.3)  # let the status and gallery writes that follow a delivery pass

            # 2. A burst dropped at once (moved in from outside the inbox).
            shutil.rmtree(outbox)
            outbox.mkdir()
            staging = tmp / "staging"
            staging.mkdir()
            for n in range(args.jobs):
                (staging / f"b{n:05d}.toml").write_text(JOB.format(n=n))
            t0 = time.perf_counter()
            for p in sorted(staging.iterdir()):
                os.rename(p, inbox / p.name)
            drain = wait_for(lambda: len(_results(outbox)) == args.jobs, 3600, "the burst to drain", 0.05) - t0

            # 3. Idle: nothing to do for idle-seconds.
            idle_cpu = idle_wall = 0.0
            if args.idle_seconds > 0:
                time.sleep(2)
                c0, t0 = cpu_seconds(daemon.pid), time.perf_counter()
                time.sleep(args.idle_seconds)
                idle_cpu, idle_wall = cpu_seconds(daemon.pid) - c0, time.perf_counter() - t0
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)

        med = statistics.median
        enc = med(direct)
        claim, deliver = med(to_claim), med(to_outbox)
        print(f"fake backend, 64x64 9-frame clips with audio; settle_seconds = {settle}; medians of {args.single}; "
              f"timed from outside (the folders)")
        print(f"  direct generate + encode (baseline):    {enc * 1000:8.1f} ms/job")
        print(f"  drop -> claim:                          {claim * 1000:8.1f} ms "
              f"(settle window + {1000 * (claim - settle):.1f} ms)")
        print(f"  claim -> delivery:                      {deliver * 1000:8.1f} ms/job "
              f"({deliver / enc:.2f}x the encode; overhead {1000 * (deliver - enc):.1f} ms)")
        print(f"  drop -> outbox:                         {(claim + deliver) * 1000:8.1f} ms/job "
              f"(includes the {settle} s settle window)")
        print(f"  {args.jobs} jobs dropped at once: drained in {drain:.1f} s = {drain / args.jobs * 1000:.1f} ms/job "
              f"({drain / (args.jobs * enc):.2f}x the encodes alone)")
        if idle_wall:
            print(f"  idle: {idle_cpu:.3f} CPU s over {idle_wall:.0f} s = {100 * idle_cpu / idle_wall:.3f}% of one core")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
