"""What the daemon costs, and what keeping the model resident saves (issue 2).

Measured in one run, on the tiny LTX-2 model, so the ratios compare like with like:

1. direct:  the same job called on the loaded pipeline in this process (backend.generate + encode).
2. daemon:  drop a job file into the inbox of a running daemon -> its result folder in the outbox.
3. one-shot: a fresh Python process per job that imports torch/diffusers, builds the model and
   generates (what a one-shot CLI pays per clip), versus the daemon's per-job time.

Usage: python bench/overhead.py [--jobs N] [--size WxH] [--frames F] [--steps S]
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
sys.path.insert(0, str(ROOT))

from hotfolder.backends import create  # noqa: E402
from hotfolder.config import Config  # noqa: E402
from hotfolder.job.spec import parse  # noqa: E402

ONE_SHOT = r"""
import sys, time, tempfile
from pathlib import Path
t0 = time.perf_counter()
from hotfolder.config import Config
from hotfolder.job.spec import parse
from hotfolder.backends import create
from hotfolder import media
config = Config(root=Path(tempfile.mkdtemp()), model="tiny", backend="diffusers")
spec = parse(Path(sys.argv[1]), config)[0]
backend = create("diffusers", config.model_info("tiny"), config)
backend.load()
t1 = time.perf_counter()
clip = backend.generate(spec, lambda *a: None)
media.encode_mp4(clip, Path(tempfile.mkdtemp()) / "out.mp4")
t2 = time.perf_counter()
print(f"{t1 - t0} {t2 - t1}")
"""


def job_text(w: int, h: int, frames: int, steps: int, n: int) -> str:
    fps = 24
    return (f'prompt = "benchmark job {n}"\nwidth = {w}\nheight = {h}\nfps = {fps}\n'
            f"duration = {frames / fps}\nsteps = {steps}\nseed = {n}\ncache = false\n"
            "[output]\ngif = false\nthumbnail = false\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="hotfolder-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp / "home")}
    try:
        jobs = []
        for n in range(args.jobs):
            p = tmp / f"job{n}.toml"
            p.write_text(job_text(w, h, args.frames, args.steps, n))
            jobs.append(p)

        # 1. Direct calls on a loaded backend.
        from hotfolder import media

        config = Config(root=tmp / "direct", model="tiny", backend="diffusers")
        t0 = time.perf_counter()
        backend = create("diffusers", config.model_info("tiny"), config)
        backend.load()
        load_in_process = time.perf_counter() - t0
        direct = []
        for p in jobs:
            spec = parse(p, config)[0]
            t0 = time.perf_counter()
            clip = backend.generate(spec, lambda *a: None)
            media.encode_mp4(clip, tmp / "direct.mp4")
            direct.append(time.perf_counter() - t0)
        backend.close()

        # 2. Through the daemon: drop -> result folder in the outbox. The first job also pays the load.
        root = tmp / "root"
        cfg = tmp / "config.toml"
        cfg.write_text(f'settle_seconds = 0.2\nrescan_seconds = 0.5\ncache_dir = "{tmp}/cache"\n'
                       f'log_dir = "{tmp}/logs"\nnotifications = false\n')
        daemon = subprocess.Popen(
            [sys.executable, "-m", "hotfolder", "run", "--root", str(root), "--config", str(cfg),
             "--backend", "diffusers", "--model", "tiny"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        through: list[float] = []
        inside: list[dict] = []
        load_in_daemon = 0.0
        try:
            deadline = time.monotonic() + 120
            while not (root / "status.json").exists():
                if time.monotonic() > deadline:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.05)
            for n, p in enumerate(jobs):
                before = {p for p in (root / "outbox").iterdir() if p.is_dir()}
                tmpname = root / "inbox" / f".{p.name}.tmp"
                shutil.copy(p, tmpname)
                t0 = time.perf_counter()
                os.rename(tmpname, root / "inbox" / p.name)
                while True:
                    new = {p for p in (root / "outbox").iterdir() if p.is_dir()} - before
                    if new:
                        break
                    if time.perf_counter() - t0 > 600:
                        raise SystemExit("a job did not arrive in the outbox")
                    time.sleep(0.01)
                elapsed = time.perf_counter() - t0
                meta = json.loads(next(next(iter(new)).glob("*.json")).read_text())
                inside.append(meta["timings"])
                if n == 0:
                    load_in_daemon = meta["timings"]["load_s"]
                    elapsed -= load_in_daemon
                through.append(elapsed)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)

        # 3. A fresh process per job (the one-shot CLI pattern).
        one_shot_start, one_shot_gen, one_shot_wall = [], [], []
        for p in jobs[:3]:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", ONE_SHOT, str(p)], capture_output=True, text=True,
                                 env=env, cwd=ROOT, check=True)
            one_shot_wall.append(time.perf_counter() - t0)
            start, gen = (float(v) for v in out.stdout.split())
            one_shot_start.append(start)
            one_shot_gen.append(gen)

        med = statistics.median
        settle = 0.2
        print(f"tiny LTX-2 with audio, {w}x{h}, {args.frames} frames, {args.steps} steps, {args.jobs} jobs "
              f"(medians; daemon settle_seconds = {settle})")
        print(f"  direct (generate + encode, model loaded):     {med(direct):7.3f} s/job")
        print(f"  daemon (drop -> outbox, model resident):       {med(through):7.3f} s/job")
        print(f"  daemon / direct:                               {med(through) / med(direct):7.2f}x  "
              f"(overhead {med(through) - med(direct):.3f} s/job, of which settle {settle} s)")
        gen = med([t["generate_s"] for t in inside[1:]] or [0])
        enc = med([t["encode_s"] for t in inside[1:]] or [0])
        job_total = med([t["total_s"] for t in inside[1:]] or [0])
        print(f"  inside the daemon (jobs 2..N): generate {gen:.3f} s + encode {enc:.3f} s; claim-to-delivery "
              f"{job_total:.3f} s; drop-to-claim and the rest {med(through[1:] or [0]) - job_total:.3f} s")
        print(f"  model load: in process {load_in_process:.2f} s, in the daemon (first job only) "
              f"{load_in_daemon:.2f} s")
        print(f"  one-shot process per job (wall):               {med(one_shot_wall):7.3f} s/job "
              f"(start-up + imports + build {med(one_shot_start):.2f} s, generate + encode "
              f"{med(one_shot_gen):.2f} s)")
        print(f"  one-shot / daemon:                             {med(one_shot_wall) / med(through):7.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
