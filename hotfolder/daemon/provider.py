"""The resident model: one backend kept loaded between jobs, reloaded only when what it serves changes."""

from __future__ import annotations

import time
from typing import Callable

from hotfolder import backends
from hotfolder.config import Config, ModelInfo
from hotfolder.job.spec import JobSpec


class Provider:
    """Keeps one backend loaded, keyed by (backend, model); reloads only when the key changes."""

    def __init__(self, config: Config, factory: Callable[[str, ModelInfo, Config], backends.Backend]):
        self.config = config
        self.factory = factory
        self.key: tuple[str, str] | None = None
        self.backend: backends.Backend | None = None
        self.loads = 0

    def serves(self, spec: JobSpec, model: ModelInfo) -> bool:
        """Whether the loaded backend is the one this spec needs (then `get` loads nothing)."""
        return self.backend is not None and self.key == (spec.backend, model.name)

    def get(self, spec: JobSpec, model: ModelInfo) -> tuple[backends.Backend, float]:
        """The loaded backend for this spec, and the seconds spent loading it now (0 when resident)."""
        key = (spec.backend, model.name)
        if self.serves(spec, model):
            return self.backend, 0.0
        self.close()
        t0 = time.perf_counter()
        backend = self.factory(spec.backend, model, self.config)
        backend.load()
        self.backend, self.key = backend, key
        self.loads += 1
        return backend, time.perf_counter() - t0

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.backend, self.key = None, None
