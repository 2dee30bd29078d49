"""The resident model: one backend kept loaded between jobs, reloaded only when what it serves changes.

Before a real model whose weights are here is loaded, its resident memory (`backends/memory.py`: weights,
text encoder, the decode of a default job, for this backend, device and dtype) is set against this
machine's: a model that cannot fit is refused with the numbers (`MemoryTooSmall`, permanent), so the job
fails with a message instead of the daemon being killed by the system for memory in the middle of
loading. Weights that are missing fail first, in milliseconds, with the pull command (`models pull` and
`doctor` already say when a model will not fit).
"""

from __future__ import annotations

import time
from typing import Callable

from hotfolder import backends
from hotfolder.backends import choose, memory
from hotfolder.config import Config, ModelInfo
from hotfolder.job.spec import JobSpec

# The backends whose models the memory table knows (a plugin backend keeps its own counts).
CHECKED_BACKENDS = ("diffusers", "mlx")


def this_machine(backend: str) -> memory.Machine:
    """RAM, and for the Diffusers backend a CUDA GPU's total and free memory as torch sees them (the load
    imports torch anyway; nvidia-smi may be missing where CUDA is not, as in a container)."""
    gpu = None
    if backend == "diffusers":
        try:
            gpu = memory.cuda_memory()
        except Exception:  # torch missing or broken: the load says so with its own message
            gpu = None
    return memory.machine(gpu)


class Provider:
    """Keeps one backend loaded, keyed by (backend, model); reloads only when the key changes."""

    def __init__(self, config: Config, factory: Callable[[str, ModelInfo, Config], backends.Backend],
                 machine: Callable[[str], memory.Machine] = this_machine):
        self.config = config
        self.factory = factory
        self.machine = machine
        self.key: tuple[str, str] | None = None
        self.backend: backends.Backend | None = None
        self.loads = 0

    def serves(self, spec: JobSpec, model: ModelInfo) -> bool:
        """Whether the loaded backend is the one this spec needs (then `get` loads nothing)."""
        return self.backend is not None and self.key == (spec.backend, model.name)

    def get(self, spec: JobSpec, model: ModelInfo) -> tuple[backends.Backend, float]:
        """The loaded backend for this spec, and the seconds spent loading it now (0 when resident).

        Raises `memory.MemoryTooSmall` (permanent) before loading a model this machine cannot hold.
        """
        key = (spec.backend, model.name)
        if self.serves(spec, model):
            return self.backend, 0.0
        self.close()  # first: the memory the previous model held is free for the check and the load
        self.check_memory(spec.backend, model)
        t0 = time.perf_counter()
        backend = self.factory(spec.backend, model, self.config)
        backend.load()
        self.backend, self.key = backend, key
        self.loads += 1
        return backend, time.perf_counter() - t0

    def check_memory(self, backend: str, model: ModelInfo) -> memory.Estimate | None:
        """The model's estimate on this machine; raises MemoryTooSmall when it cannot fit. Tiny models always fit;
        with `memory_check = false` nothing is checked (the person chose to try)."""
        if backend not in CHECKED_BACKENDS or model.tiny or not self.config.memory_check:
            return None
        if choose.weights_problem(model, self.config, backend=backend) is not None:
            return None  # the load fails at once with the pull command (`doctor` and `models` say it won't fit)
        here = self.machine(backend)
        gpu = (here.gpu_total, here.gpu_free, here.gpu_name) if here.gpu_total else None
        est = memory.estimate(model, backend, memory.device_for(backend, gpu))
        verdict = memory.fit(est, here)
        if verdict.fits or est is None:
            return est
        others = memory.alternatives(
            model, self.config, here,
            backend_of=lambda m: choose.wanted(m, self.config)[0],
            device_of=lambda b: memory.device_for(b, gpu),
        )
        raise memory.refusal(model, est, verdict, here, others)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.backend, self.key = None, None
