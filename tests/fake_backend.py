"""A fake backend for daemon tests: real Clip objects, no model, controllable speed and failures.

Registered under the name "fake" by `register()`; the daemon then treats it like
any other backend. Behaviour is steered by environment variables so that tests can
drive a real daemon process:
  HOTFOLDER_FAKE_STEP_S   seconds per denoising step (default 0)
  HOTFOLDER_FAKE_LOAD_S   seconds load() takes (default 0)
  HOTFOLDER_FAKE_DECODE_S seconds of "decoding" after the last step: one long call that calls no
                          on_step, like a real VAE decode (default 0)
  HOTFOLDER_FAKE_TEARDOWN_S  seconds the interpreter's exit takes once a model was loaded, as torch's and
                          CUDA's teardown do (an atexit handler; default 0)
  HOTFOLDER_FAKE_FAIL     fail the first N generate calls of this process with a BackendError
  HOTFOLDER_FAKE_FAIL_PROMPT  fail every job whose prompt contains this text
  HOTFOLDER_FAKE_SEGFAULT_PROMPT  a job whose prompt contains this text kills the whole process with
                          SIGSEGV after its first step, as a crash in native code would
  HOTFOLDER_FAKE_HOG_PROMPT   a job whose prompt contains this text allocates memory (touching every
                          page) until the kernel kills the process, or HOTFOLDER_FAKE_HOG_MB (4096) is
                          reached; only for tests that run the daemon under a memory limit
  HOTFOLDER_FAKE_NOISE    "1": random frames (incompressible: a large MP4) instead of one colour
  HOTFOLDER_FAKE_LOADS    a file to which each load() appends a line
  HOTFOLDER_FAKE_IMAGES   a file to which each generate() appends the spec's image path (or "-")
  HOTFOLDER_FAKE_SLOW_PROBE  a folder: probing an attachment whose name starts with "slow" (the
                          daemon's attachment check) first creates probe-started there, then waits
                          until probe-release appears in it (at most 120 s)
Like a real image-to-video backend, it reads the image it is given: its mean colour tints the frames.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from hotfolder import backends
from hotfolder.backends import Clip
from hotfolder.errors import BackendError

_failures_left = int(os.environ.get("HOTFOLDER_FAKE_FAIL", "0"))


def _in_prompt(variable: str, prompt: str) -> bool:
    text = os.environ.get(variable)
    return bool(text) and text in prompt


class FakeBackend:
    name = "fake"
    device = "cpu"

    def __init__(self, model):
        self.model = model
        self.loaded = False

    def load(self) -> None:
        load_s = float(os.environ.get("HOTFOLDER_FAKE_LOAD_S", "0"))
        if load_s:
            time.sleep(load_s)
        self.loaded = True
        teardown_s = float(os.environ.get("HOTFOLDER_FAKE_TEARDOWN_S", "0"))
        if teardown_s:
            atexit.register(time.sleep, teardown_s)
        marker = os.environ.get("HOTFOLDER_FAKE_LOADS")
        if marker:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()} {self.model.name}\n")

    def generate(self, spec, on_step) -> Clip:
        global _failures_left
        images = os.environ.get("HOTFOLDER_FAKE_IMAGES")
        if images:
            with open(images, "a") as f:
                f.write(f"{spec.image or '-'}\n")
        step_s = float(os.environ.get("HOTFOLDER_FAKE_STEP_S", "0"))
        for i in range(spec.steps):
            if step_s:
                time.sleep(step_s)
            on_step("denoise", i + 1, spec.steps)
            if i == 0 and _in_prompt("HOTFOLDER_FAKE_SEGFAULT_PROMPT", spec.prompt):
                signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)  # in this thread, as a real fault is
                time.sleep(60)  # never reached: the process is gone
            if i == 0 and _in_prompt("HOTFOLDER_FAKE_HOG_PROMPT", spec.prompt):
                _hog(int(os.environ.get("HOTFOLDER_FAKE_HOG_MB", "4096")))
        decode_s = float(os.environ.get("HOTFOLDER_FAKE_DECODE_S", "0"))
        if decode_s:
            time.sleep(decode_s)  # no on_step: a stop or cancel cannot reach in here
        if _in_prompt("HOTFOLDER_FAKE_FAIL_PROMPT", spec.prompt):
            raise BackendError("fake failure for this prompt", hint="none")
        if _failures_left > 0:
            _failures_left -= 1
            raise BackendError("fake failure for the test", hint="none")
        rng = np.random.default_rng(spec.seed)
        colour = rng.integers(0, 255, size=3, dtype=np.uint8)
        if spec.image:
            from PIL import Image

            with Image.open(spec.image) as im:  # an absolute path: the daemon resolved it in the job's folder
                colour = np.asarray(im.convert("RGB")).reshape(-1, 3).mean(axis=0).astype(np.uint8)
        if os.environ.get("HOTFOLDER_FAKE_NOISE") == "1":
            frames = rng.integers(0, 255, size=(spec.num_frames, spec.height, spec.width, 3), dtype=np.uint8)
        else:
            frames = np.broadcast_to(colour, (spec.num_frames, spec.height, spec.width, 3)).copy()
        sr = 16000
        samples = int(round(spec.num_frames / spec.fps * sr))
        t = np.arange(samples) / sr
        audio = np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32) * 0.3
        return Clip(frames=frames, fps=spec.fps, audio=audio if spec.generate_audio else None, sample_rate=sr,
                    info={"fake": True})

    def close(self) -> None:
        self.loaded = False


def _hog(limit_mb: int) -> None:
    """Allocate and touch memory 16 MB at a time: under a memory limit the kernel's OOM killer ends us."""
    kept = []
    for _ in range(limit_mb // 16):
        kept.append(np.ones(16 * 1024 * 1024, dtype=np.uint8))
    raise BackendError(f"fake memory hog reached {limit_mb} MB without being killed", hint="none")


def create(model, config) -> FakeBackend:
    return FakeBackend(model)


def _slow_probe(folder: Path, probe):
    """`media.probe` that blocks on files named slow* until the test releases it."""

    def slow(path, *args, **kwargs):
        if Path(path).name.startswith("slow"):
            (folder / "probe-started").touch()
            deadline = time.monotonic() + 120
            while not (folder / "probe-release").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return probe(path, *args, **kwargs)

    return slow


def register() -> None:
    backends.BACKEND_MODULES["fake"] = "fake_backend"
    backends.SIZE_MULTIPLE["fake"] = 32
    slow_probe = os.environ.get("HOTFOLDER_FAKE_SLOW_PROBE")
    if slow_probe:
        from hotfolder import media

        media.probe = _slow_probe(Path(slow_probe), media.probe)
