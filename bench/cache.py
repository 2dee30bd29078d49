"""What the cache and the previews cost (issue 16), each against a baseline measured in the same run.

1. store: a random-bytes "video" in a fresh ResultCache, then
     - hit:   get(key) + deliver(entry, dest) into another folder of the same filesystem, warm;
     - first: the first get after put + deliver;
     - copy:  shutil.copyfile of the same bytes to the same kind of destination (the baseline).
2. daemon: cache hits through the real daemon (fake backend, GIF and thumbnail on), timed from outside:
   a job is made once (a miss), its cache entry is replaced by a real MP4 of about 1 MB and 200 MB
   (same key, same metadata), then the same request is dropped again and again. Shown: drop -> outbox
   minus the settle window (what a hit costs past what the daemon must wait), drop -> claim and
   claim -> outbox, the first hit after the replacement apart (it may make the previews), and a plain
   copy of the same MP4 (the baseline).
3. gif: the preview GIF of a 2 s 256x256 clip and a 5 s 640x352 clip, each a moving test pattern and
   noise: the GIF as hotfolder made it before issue 16 (its ffmpeg filter graph, run here as the
   baseline), made from the frames in memory (`make_gif_from_frames`, where this version has it) and
   from the MP4 (`make_gif`), with each GIF's PSNR against the clip's own frames (the look), and the
   MP4 encode of the same clip for scale.

    python bench/cache.py [--sections store,daemon,gif] [--sizes 1,200] [--runs 7] [--dir DIR]

Sizes are in MB (10**6 bytes). Temp files are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(ROOT))

from hotfolder.cache import ResultCache  # noqa: E402

SETTLE = 0.2
POLL_S = 0.0005


def write_random(path: Path, size: int) -> None:
    chunk = 8 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


# ----------------------------------------------------------------------------------------- 1. store


def bench_size(base: Path, mb: float, runs: int) -> dict:
    size = int(mb * 1_000_000)
    work = base / f"{mb:g}MB"
    stage, outbox, copies = work / "stage", work / "outbox", work / "copies"
    for d in (stage, outbox, copies):
        d.mkdir(parents=True)
    cache = ResultCache(work / "cache", 1 << 40)
    src = stage / "clip.mp4"
    write_random(src, size)
    key = f"{size:064x}"

    t = time.perf_counter()
    cache.put(key, src, {"size": size})
    put_s = time.perf_counter() - t

    t = time.perf_counter()
    entry = cache.get(key)
    method = cache.deliver(entry, outbox / "first.mp4")
    first_s = time.perf_counter() - t

    hits, plain, methods = [], [], set()
    for i in range(runs):
        # Delivered files stay in place until the end, as results do in the outbox.
        t = time.perf_counter()
        entry = cache.get(key)
        methods.add(cache.deliver(entry, outbox / f"hit{i}.mp4"))
        hits.append(time.perf_counter() - t)

        t = time.perf_counter()
        shutil.copyfile(src, copies / f"copy{i}.mp4")
        plain.append(time.perf_counter() - t)

    assert (outbox / f"hit{runs - 1}.mp4").stat().st_size == size
    return {
        "mb": mb,
        "put_s": put_s,
        "first_s": first_s,
        "hit_s": statistics.median(hits),
        "copy_s": statistics.median(plain),
        "method": "/".join(sorted(methods | {method})),
    }


def store_section(base: Path, sizes: list[float], runs: int) -> None:
    print(f"1. store: get + deliver versus a plain copy ({sys.platform}), median of {runs} runs")
    print(f"{'size':>8} {'method':>9} {'put':>9} {'1st hit':>9} {'hit':>9} {'copy':>9} {'copy/hit':>9}")
    for mb in sizes:
        r = bench_size(base, mb, runs)
        ratio = r["copy_s"] / r["hit_s"] if r["hit_s"] else float("inf")
        print(
            f"{r['mb']:>6g}MB {r['method']:>9} {r['put_s'] * 1e3:>7.2f}ms {r['first_s'] * 1e3:>7.2f}ms "
            f"{r['hit_s'] * 1e3:>7.3f}ms {r['copy_s'] * 1e3:>7.2f}ms {ratio:>8.1f}x"
        )


# ---------------------------------------------------------------------------------------- 2. daemon


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# (size, seconds, encoder settings) giving about the size asked for: a moving test pattern under strong noise
BIG_MP4 = {1: ("256x256", 2.0, ["-crf", "33"]), 200: ("1920x1080", 2.0, ["-qp", "0"])}


def real_mp4(path: Path, mb: float) -> None:
    """A real H.264 MP4 with AAC sound of about `mb` MB, made with the bundled ffmpeg."""
    size, seconds, quality = BIG_MP4.get(int(mb), ("1280x720", 3.0, ["-qp", "0"]))
    subprocess.run([
        ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=24:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
        "-vf", "noise=alls=80:allf=t", "-c:v", "libx264", "-preset", "ultrafast", *quality, "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-movflags", "+faststart", str(path),
    ], check=True)  # fmt: skip


def _results(outbox: Path) -> list[Path]:
    return [p for p in outbox.iterdir() if p.is_dir()]


def _wait(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(POLL_S)
    return time.perf_counter()


def _entries(cache_dir: Path) -> set[Path]:
    return {p.parent for p in cache_dir.glob("*/*/manifest.json")}


def daemon_section(base: Path, sizes: list[float], runs: int) -> None:
    tmp = base / "daemon"
    root, cache_dir = tmp / "root", tmp / "cache"
    tmp.mkdir()
    cfg = tmp / "config.toml"
    cfg.write_text(f'settle_seconds = {SETTLE}\nrescan_seconds = 5.0\ncache_dir = "{cache_dir}"\n'
                   f'log_dir = "{tmp}/logs"\nnotifications = false\n')
    # The daemon runs this tree's hotfolder (not whichever one is installed), with the tests' fake backend.
    env = {**os.environ, "HOME": str(tmp), "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    staging = tmp / "staging"
    staging.mkdir()
    daemon = subprocess.Popen(
        [sys.executable, str(TESTS / "run_daemon.py"), "run", "--root", str(root), "--config", str(cfg),
         "--backend", "fake"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    rows = []
    try:
        _wait(lambda: (root / "status.json").exists(), 60, "the daemon to start")
        inbox, outbox = root / "inbox", root / "outbox"
        time.sleep(1.0)

        def drop(name: str, text: str) -> tuple[float, float]:
            """Move a job file in from outside the inbox; (drop -> claim, claim -> outbox) in seconds."""
            count = len(_results(outbox))
            (staging / name).write_text(text)
            path = inbox / name
            t0 = time.perf_counter()
            os.rename(staging / name, path)
            t1 = _wait(lambda: not os.path.exists(path), 120, f"the claim of {name}")
            t2 = _wait(lambda: len(_results(outbox)) > count, 600, f"the result of {name}")
            time.sleep(0.3)  # the status and gallery writes after a delivery
            return t1 - t0, t2 - t1

        for mb in sizes:
            job = (f'prompt = "cache bench {mb:g} MB"\nwidth = 64\nheight = 64\nduration = 0.5\nfps = 16\n'
                   "steps = 1\nseed = 3\n")
            before = _entries(cache_dir)
            drop(f"miss-{mb:g}.toml", job)  # made once: the daemon stores the entry
            [entry] = _entries(cache_dir) - before
            manifest = json.loads((entry / "manifest.json").read_text())
            mp4 = tmp / f"clip-{mb:g}.mp4"
            real_mp4(mp4, mb)
            ResultCache(cache_dir, 1 << 40).put(entry.name, mp4, manifest["meta"])  # same key, the big clip
            size_mb = mp4.stat().st_size / 1e6
            first = drop(f"hit-{mb:g}-first.toml", job)
            hits = [drop(f"hit-{mb:g}-{i}.toml", job) for i in range(runs)]
            copies = []
            for i in range(3):
                t = time.perf_counter()
                shutil.copyfile(mp4, tmp / f"copy-{i}.mp4")
                copies.append(time.perf_counter() - t)
                (tmp / f"copy-{i}.mp4").unlink()
            newest = max(_results(outbox), key=lambda p: p.stat().st_mtime_ns)
            meta = json.loads(next(p for p in newest.glob("*.json")).read_text())
            rows.append((size_mb, first, hits, statistics.median(copies), meta))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)

    med = statistics.median
    print(f"2. daemon: cache hits through the real daemon (fake backend, GIF and thumbnail on), settle_seconds = "
          f"{SETTLE}; median of {runs} hits; timed from outside")
    print(f"{'clip':>9} {'drop->out-settle':>17} {'drop->claim':>12} {'claim->out':>11} {'1st hit':>9} "
          f"{'copy':>9} {'copy/hit':>9}  delivered by, cache_hit")
    for size_mb, first, hits, copy_s, meta in rows:
        total = med([a + b for a, b in hits]) - SETTLE
        claim, out = med([a for a, _ in hits]), med([b for _, b in hits])
        ratio = copy_s / out if out else float("inf")
        how = (meta.get("backend_info") or {}).get("cache_delivery", "?")
        print(f"{size_mb:>7.1f}MB {total * 1e3:>15.1f}ms {claim * 1e3:>10.1f}ms {out * 1e3:>9.1f}ms "
              f"{(sum(first) - SETTLE) * 1e3:>7.0f}ms {copy_s * 1e3:>7.1f}ms {ratio:>8.1f}x  {how}, "
              f"{meta.get('cache_hit')}")


# ------------------------------------------------------------------------------------------- 3. gif


def _old_gif(video: Path, gif: Path, width: int = 480, seconds: float = 3.0) -> None:
    """The GIF as hotfolder made it before issue 16 (the filter graph of `media.make_gif` then), for the baseline."""
    graph = (
        f"[0:v:0]scale={width}:-2:flags=lanczos,split[a][b];"
        f"[a]select='not(mod(n\\,4))',scale={max(2, width // 2)}:-2:flags=area,palettegen=stats_mode=full[p];"
        "[b][p]paletteuse=dither=sierra2_4a:diff_mode=rectangle[g]"
    )
    subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-t", f"{seconds:g}",
                    "-i", str(video), "-filter_complex", graph, "-map", "[g]", "-loop", "0", "-f", "gif", str(gif)],
                   check=True)


def _pattern(n: int, w: int, h: int, fps: float) -> "np.ndarray":
    """A moving test pattern (ffmpeg's testsrc2: colour bars, gradients, moving shapes and a counter)."""
    import numpy as np

    out = subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi",
                          "-i", f"testsrc2=size={w}x{h}:rate={fps:g}", "-frames:v", str(n),
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(n, h, w, 3)


def _psnr(gif: Path, frames: "np.ndarray", fps: float) -> float:
    """PSNR (dB) of the GIF's frames, at the times they show, against the clip's frames scaled like the GIF."""
    import numpy as np
    from PIL import Image

    errors = []
    with Image.open(gif) as im:
        size, t = im.size, 0.0
        for i in range(im.n_frames):
            im.seek(i)
            got = np.asarray(im.convert("RGB"), dtype=np.float64)
            k = min(len(frames) - 1, int(round(t * fps)))
            want = np.asarray(Image.fromarray(frames[k]).resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
            errors.append(((got - want) ** 2).mean())
            t += im.info.get("duration", 0) / 1000
    mse = sum(errors) / len(errors)
    return 10 * math.log10(255**2 / mse) if mse else float("inf")


def gif_section(base: Path, runs: int) -> None:
    import numpy as np

    from hotfolder import media
    from hotfolder.backends import Clip
    from hotfolder.media import ffmpeg as mf

    from_frames = getattr(mf, "make_gif_from_frames", None)
    work = base / "gif"
    work.mkdir()
    fps = 24.0
    print(f"3. gif: the preview GIF (480 px, first 3 s), median of {runs}; PSNR against the clip's frames")
    print(f"{'clip':>22} {'encode':>8} {'before':>9} {'frames':>9} {'from mp4':>9} {'before/frames':>13}  "
          f"PSNR before / frames / from mp4")
    rng = np.random.default_rng(0)
    for (w, h, n) in ((256, 256, 49), (640, 352, 121)):
        for kind in ("test pattern", "noise"):
            frames = _pattern(n, w, h, fps) if kind == "test pattern" else \
                rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            mp4 = work / f"{w}x{h}-{kind.replace(' ', '-')}.mp4"
            t = time.perf_counter()
            media.encode_mp4(Clip(frames, fps), mp4)
            encode = time.perf_counter() - t

            def timed(make, out: Path) -> float:
                times = []
                for _ in range(runs):
                    out.unlink(missing_ok=True)
                    t = time.perf_counter()
                    make(out)
                    times.append(time.perf_counter() - t)
                return statistics.median(times)

            old = timed(lambda out: _old_gif(mp4, out), work / "old.gif")
            new = timed(lambda out: from_frames(frames, fps, out), work / "new.gif") if from_frames else None
            via = timed(lambda out: media.make_gif(mp4, out), work / "via.gif")
            psnr = [_psnr(work / "old.gif", frames, fps), _psnr(work / "new.gif", frames, fps) if new else None,
                    _psnr(work / "via.gif", frames, fps)]
            label = f"{w}x{h}x{n} {kind}"
            print(f"{label:>22} {encode:>7.2f}s {old:>8.2f}s "
                  f"{(f'{new:.2f}s' if new else 'n/a'):>9} {via:>8.2f}s "
                  f"{(f'{old / new:.1f}x' if new else 'n/a'):>13}  "
                  + " / ".join("n/a" if p is None else f"{p:.1f}" for p in psnr) + " dB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="store,daemon,gif", help="which parts to run (default: all)")
    parser.add_argument("--sizes", default="1,200", help="comma-separated sizes in MB (default 1,200)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per size; the median is shown")
    parser.add_argument("--dir", type=Path, default=None, help="where to put temp files (default: system temp)")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    sections = {s.strip() for s in args.sections.split(",")}

    base = Path(tempfile.mkdtemp(prefix="hotfolder-bench-cache-", dir=args.dir))
    try:
        print(f"cache bench in {base} ({sys.platform})")
        if "store" in sections:
            store_section(base, sizes, args.runs)
        if "daemon" in sections:
            daemon_section(base, sizes, args.runs)
        if "gif" in sections:
            gif_section(base, max(1, min(args.runs, 3)))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
