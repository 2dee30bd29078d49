"""Cache-hit delivery versus a plain copy of the same bytes.

For each size: store a random-bytes "video" in a fresh ResultCache, then time
  - hit:   get(key) + deliver(entry, dest) into another folder of the same filesystem
           (what the daemon does once it has a key), warm: the entry was verified before;
  - first: the first get after put (full SHA-256) + deliver;
  - copy:  shutil.copyfile of the same bytes to the same kind of destination;
and print medians and the ratio copy / hit measured in this run.

    python bench/cache.py [--sizes 1,200] [--runs 7] [--dir DIR]

Sizes are in MB (10**6 bytes). Temp files are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hotfolder.cache import ResultCache  # noqa: E402


def write_random(path: Path, size: int) -> None:
    chunk = 8 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,200", help="comma-separated sizes in MB (default 1,200)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per size; the median is shown")
    parser.add_argument("--dir", type=Path, default=None, help="where to put temp files (default: system temp)")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]

    base = Path(tempfile.mkdtemp(prefix="hotfolder-bench-cache-", dir=args.dir))
    try:
        print(f"cache bench in {base} ({sys.platform}), median of {args.runs} runs")
        print(f"{'size':>8} {'method':>9} {'put':>9} {'1st hit':>9} {'hit':>9} {'copy':>9} {'copy/hit':>9}")
        for mb in sizes:
            r = bench_size(base, mb, args.runs)
            ratio = r["copy_s"] / r["hit_s"] if r["hit_s"] else float("inf")
            print(
                f"{r['mb']:>6g}MB {r['method']:>9} {r['put_s'] * 1e3:>7.2f}ms {r['first_s'] * 1e3:>7.2f}ms "
                f"{r['hit_s'] * 1e3:>7.3f}ms {r['copy_s'] * 1e3:>7.2f}ms {ratio:>8.1f}x"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
