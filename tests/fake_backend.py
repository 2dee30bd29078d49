"""A fake backend for daemon tests: real Clip objects, no model, controllable speed and failures.

Registered under the name "fake" by `register()`; the daemon then treats it like
any other backend. Behaviour is steered by environment variables so that tests can
drive a real daemon process:
  HOTFOLDER_FAKE_STEP_S   seconds per denoising step (default 0)
  HOTFOLDER_FAKE_FAIL     fail the first N generate calls of this process with a BackendError
  HOTFOLDER_FAKE_FAIL_PROMPT  fail every job whose prompt contains this text
  HOTFOLDER_FAKE_LOADS    a file to which each load() appends a line
  HOTFOLDER_FAKE_IMAGES   a file to which each generate() appends the spec's image path (or "-")
Like a real image-to-video backend, it reads the image it is given: its mean colour tints the frames.
"""

from __future__ import annotations

import os
import time

import numpy as np

from hotfolder import backends
from hotfolder.backends import Clip
from hotfolder.errors import BackendError

_failures_left = int(os.environ.get("HOTFOLDER_FAKE_FAIL", "0"))


class FakeBackend:
    name = "fake"
    device = "cpu"

    def __init__(self, model):
        self.model = model
        self.loaded = False

    def load(self) -> None:
        self.loaded = True
        marker = os.environ.get("HOTFOLDER_FAKE_LOADS")
        if marker:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()} {self.model.name}\n")

    def generate(self, spec, on_step) -> Clip:
        global _failures_left
        step_s = float(os.environ.get("HOTFOLDER_FAKE_STEP_S", "0"))
        for i in range(spec.steps):
            if step_s:
                time.sleep(step_s)
            on_step("denoise", i + 1, spec.steps)
        if os.environ.get("HOTFOLDER_FAKE_FAIL_PROMPT", "\0") in spec.prompt:
            raise BackendError("fake failure for this prompt", hint="none")
        if _failures_left > 0:
            _failures_left -= 1
            raise BackendError("fake failure for the test", hint="none")
        rng = np.random.default_rng(spec.seed)
        colour = rng.integers(0, 255, size=3, dtype=np.uint8)
        images = os.environ.get("HOTFOLDER_FAKE_IMAGES")
        if images:
            with open(images, "a") as f:
                f.write(f"{spec.image or '-'}\n")
        if spec.image:
            from PIL import Image

            with Image.open(spec.image) as im:  # an absolute path: the daemon resolved it in the job's folder
                colour = np.asarray(im.convert("RGB")).reshape(-1, 3).mean(axis=0).astype(np.uint8)
        frames = np.broadcast_to(colour, (spec.num_frames, spec.height, spec.width, 3)).copy()
        sr = 16000
        samples = int(round(spec.num_frames / spec.fps * sr))
        t = np.arange(samples) / sr
        audio = np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32) * 0.3
        return Clip(frames=frames, fps=spec.fps, audio=audio if spec.generate_audio else None, sample_rate=sr,
                    info={"fake": True})

    def close(self) -> None:
        self.loaded = False


def create(model, config) -> FakeBackend:
    return FakeBackend(model)


def register() -> None:
    backends.BACKEND_MODULES["fake"] = "fake_backend"
    backends.SIZE_MULTIPLE["fake"] = 32
