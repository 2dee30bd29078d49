"""Resident MLX backend vs the package's one-shot call, on the same tiny weights.

    python bench/resident.py [-n 3] [--width 192] [--height 128] [--frames 17]

N jobs through one `MlxBackend` (load once) against N calls of
mlx-video-with-audio's own `generate_video_with_audio` (which loads every
component inside each call), on tiny random weights saved to a temporary folder
in the layout the package loads. Offline. Prints load and generate time for
each side, their ratio measured in this run, and whether both sides produced
the same clips bit for bit.

Load time inside the one-shot call is measured by timing the package's loader
functions while it runs (outermost call only, each forced to materialise its
weights, as MLX reads lazily). How the one-shot call is made to run on tiny
weights: see `tiny_mlx.package_entry_point`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from hotfolder.backends.choose import MLX_PACKAGE, MLX_PINNED_VERSION  # noqa: E402
from hotfolder.backends.mlx import backend as mlx_av  # noqa: E402
from hotfolder.backends.mlx import tiny as tiny_mlx  # noqa: E402
from hotfolder.backends.mlx.pipeline import normalise_and_fit_audio  # noqa: E402
from hotfolder.config import ModelInfo  # noqa: E402
from hotfolder.job.spec import JobSpec  # noqa: E402

PROMPT = "a lighthouse on a cliff at night, waves breaking below"


def spec(width: int, height: int, frames: int, seed: int) -> JobSpec:
    return JobSpec(
        source="bench.toml", index=0, name="bench", prompt=PROMPT, negative_prompt="", format="custom",
        mode="preview", duration=frames / 24, fps=24.0, seed=seed, seed_random=False, steps=10, width=width,
        height=height, num_frames=frames, priority=0, cache="use", backend="mlx", model="tiny",
        generate_audio=True, gif=False, thumbnail=False, preset=None,
    )  # fmt: skip


class LoadTimer:
    """Times the package's loaders while its one-shot call runs (outermost call only)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def wrap(self, fn, materialise: bool = False):
        import mlx.core as mx

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
                if materialise and hasattr(result, "parameters"):
                    mx.eval(result.parameters())
                return result
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start

        return timed

    @contextlib.contextmanager
    def installed(self):
        import mlx.nn as nn
        import mlx_video.generate_av as gav
        from mlx_video.models.ltx.text_encoder import LTX2TextEncoder

        targets = [(gav, name, name.startswith("load_") and name != "load_unified_weights") for name in (
            "get_model_path", "validate_text_encoder_config", "load_unified_weights", "_eval_tree_in_chunks",
            "load_upsampler", "load_vae_decoder", "load_audio_decoder", "load_vocoder",
        )] + [(LTX2TextEncoder, "load", False), (nn.Module, "load_weights", False)]  # fmt: skip
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
        for owner, name, materialise in targets:
            setattr(owner, name, self.wrap(getattr(owner, name), materialise))
        try:
            yield self
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)


@contextlib.contextmanager
def native_stderr_silenced():
    """OpenCV reports its failing 'avc1' writer on file descriptor 2, below Python."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--jobs", type=int, default=3)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    args = parser.parse_args()
    n, w, h, f = args.jobs, args.width, args.height, args.frames

    with tempfile.TemporaryDirectory(prefix="hotfolder-bench-") as tmp:
        folder = tiny_mlx.build(Path(tmp) / "tiny-ltx2-mlx")
        size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
        model = ModelInfo(name="tiny (bench)", family="ltx2", local_path=str(folder))

        quiet = io.StringIO()
        with tiny_mlx.package_entry_point(folder) as run:
            # Untimed warm-up: imports and MLX's first-call compilation are paid once per process.
            with contextlib.redirect_stdout(quiet), native_stderr_silenced():
                run(PROMPT, h, w, f, 0, 24)

            backend = mlx_av.create(model, SimpleNamespace())
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                start = time.perf_counter()
                backend.load()
                resident_load = time.perf_counter() - start

            # Interleaved so that both sides see the same machine (a shared CPU is noisy).
            resident_gen, oneshot_total, oneshot_load, same = [], [], [], 0
            for i in range(n):
                with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                    start = time.perf_counter()
                    clip = backend.generate(spec(w, h, f, seed=i + 1), lambda *a: None)
                    resident_gen.append(time.perf_counter() - start)
                timer = LoadTimer()
                with timer.installed(), contextlib.redirect_stdout(quiet), native_stderr_silenced():
                    start = time.perf_counter()
                    frames, audio = run(PROMPT, h, w, f, i + 1, 24)
                    oneshot_total.append(time.perf_counter() - start)
                oneshot_load.append(timer.seconds)
                fitted, _ = normalise_and_fit_audio(audio, f / 24, clip.sample_rate)
                same += int(np.array_equal(frames, clip.frames) and np.array_equal(fitted, clip.audio))
            backend.close()

    r_total = resident_load + sum(resident_gen)
    o_load, o_total = sum(oneshot_load), sum(oneshot_total)
    o_gen = o_total - o_load
    print(f"hotfolder bench: {n} jobs, {w}x{h}, {f} frames with audio, tiny random weights (noise)")
    print(f"mlx {metadata.version('mlx')} on {backend.device}, {MLX_PACKAGE} {MLX_PINNED_VERSION}")
    print(f"{'':34}{'load s':>9}{'generate s':>12}{'total s':>9}")
    print(f"{'resident backend (load once)':34}{resident_load:9.2f}{sum(resident_gen):12.2f}{r_total:9.2f}")
    print(f"{'package one-shot (load per call)':34}{o_load:9.2f}{o_gen:12.2f}{o_total:9.2f}")
    print(f"per job: resident {sum(resident_gen) / n:.2f} s, one-shot {o_total / n:.2f} s "
          f"(of which loading {o_load / n:.2f} s)")  # fmt: skip
    print(f"ratio one-shot / resident: {o_total / r_total:.2f}x in total, "
          f"{o_total / sum(resident_gen):.2f}x once loaded")  # fmt: skip
    print(f"the one-shot call spent {100 * o_load / o_total:.0f}% of its time loading {size_mb:.0f} MB of tiny "
          "weights per call; the real ltx-2 is ~42 GB")  # fmt: skip
    print(f"same clips bit for bit: {same}/{n}")
    return 0 if same == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
