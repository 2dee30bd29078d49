"""GPU figures for the Diffusers models at their real size, with random weights: no download needed (issue 13).

    python bench/gpu.py                      # every benchmarked model on CUDA, bfloat16, 768x512, 121 frames
    python bench/gpu.py --models ltx-2 --steps 8 --no-daemon
    python bench/gpu.py --dry                # the same code on the tiny model on the CPU (what CI runs)

Each model is built from its committed published configuration (`hotfolder/backends/configs/<arch>/`) at
full size, initialised by its own classes (random weights: the video is noise, the cost is real), and
run twice:

1. the pipeline called directly (`LTX2Pipeline` / `LTXPipeline`), as the Diffusers docs do;
2. through the daemon: a real `hotfolder run` process on a temporary root, given a job file in its inbox;
   the only difference from a user's daemon is where the weights come from (`--serve` below builds them
   from the configurations instead of reading a Hugging Face snapshot).

Printed per model and path: seconds per denoising step (median; guidance off, so one transformer pass per
step: classifier-free guidance doubles it), the decode (the last step to the frames and sound), the peak
GPU memory (`torch.cuda.max_memory_allocated`; the RSS peak on the CPU), and the memory the daemon's own
estimate gives (`backends/memory.py`) beside it.

Not benchmarked: ltx-2.5 (its Gemma 4 text encoder's configuration is not committed: no offline source);
the distilled models have their base's architecture, so their cost per step is their base's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hotfolder.backends import configs, memory  # noqa: E402
from hotfolder.config import BUILTIN_MODELS, ModelInfo  # noqa: E402

BENCHMARKED = {"ltx-2": "ltx-2", "ltx-2.3": "ltx-2.3", "ltx-video": "ltx-video"}  # model -> architecture
PROMPT = "a lighthouse on a cliff at night, waves breaking below"
NO_GUIDANCE = {"guidance_scale": 1.0}


def bench_model(name: str) -> ModelInfo:
    """The table's model, with guidance off (one transformer pass per step, as a distilled schedule runs)."""
    import dataclasses

    return dataclasses.replace(BUILTIN_MODELS[name], guidance=1.0, stg_scale=0.0, modality_scale=1.0,
                               audio_guidance=None)


# -- the real-size pipeline with random weights ------------------------------------------------------------
def real_pipeline(arch: str, device: str, dtype: Any) -> Any:
    """`arch`'s pipeline at full size from the committed configurations, built on `device` in `dtype`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline, LTXPipeline

    from hotfolder.backends.diffusers import tiny

    parts = {c: configs.build(arch, c, device=device, dtype=dtype)
             for c in configs.components(arch) if c != "latent_upsampler"}
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                base_image_seq_len=1024, max_image_seq_len=4096,
                                                shift_terminal=0.1, time_shift_type="exponential")
    if arch == "ltx-video":
        pipe = LTXPipeline(scheduler=scheduler, tokenizer=tiny._t5_tokenizer(128), **parts)
    else:
        tokenizer, _ = tiny._gemma_tokenizer(max_length=1024)
        pipe = LTX2Pipeline(scheduler=scheduler, tokenizer=tokenizer, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline() -> Any:
    from hotfolder.backends.diffusers import tiny

    pipe = tiny.build(BUILTIN_MODELS["tiny"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- 1. the pipeline called directly ------------------------------------------------------------------------
def run_direct(pipe: Any, *, width: int, height: int, frames: int, steps: int, device: str) -> dict[str, float]:
    import torch

    from hotfolder.backends.diffusers.backend import NO_GUIDANCE_LTX2

    is_ltx2 = type(pipe).__name__.startswith("LTX2")
    stamps: list[float] = []

    def on_step(_pipe: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return tensors

    kwargs: dict[str, Any] = dict(prompt=PROMPT, width=width, height=height, num_frames=frames,
                                  num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0),
                                  output_type="np", callback_on_step_end=on_step)
    kwargs.update(NO_GUIDANCE_LTX2 if is_ltx2 else NO_GUIDANCE)
    if is_ltx2:
        kwargs["frame_rate"] = 24.0
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.inference_mode():
        pipe(**kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()
    return _figures(t0, stamps, end, _peak(device))


def _figures(t0: float, stamps: list[float], end: float, peak: int) -> dict[str, float]:
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        "first_step_s": round(stamps[0] - t0, 3) if stamps else 0.0,  # the prompt's encoding and the first step
        "step_s": round(statistics.median(steps), 3) if steps else round(stamps[0] - t0, 3),
        "decode_s": round(end - stamps[-1], 3) if stamps else 0.0,
        "peak_gb": round(peak / memory.GB, 2),
    }


def _peak(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


# -- 2. through the daemon ----------------------------------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    """Inside the daemon's process: the Diffusers backend builds the real-size random pipeline instead of reading
    a snapshot (the weights' source is all that changes), and records each step's time; then `hotfolder run`."""
    from hotfolder.backends.diffusers import backend as diffusers_backend
    from hotfolder.cli import main

    stamps_file = Path(args.stamps)
    real = diffusers_backend.DiffusersBackend

    def find_weights(self: Any) -> str:
        return f"random weights from hotfolder/backends/configs/{memory.architecture(self.model)}"

    def from_pretrained(self: Any, source: str, dtype: Any) -> Any:
        return real_pipeline(memory.architecture(self.model), diffusers_backend.pick_device(), dtype)

    generate = real.generate

    def timed_generate(self: Any, spec: Any, on_step: Any) -> Any:
        import torch

        stamps: list[float] = []
        cuda = self.device == "cuda"

        def step(*a: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            on_step(*a)

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        clip = generate(self, spec, step)
        if cuda:
            torch.cuda.synchronize()
        stamps_file.write_text(json.dumps(_figures(t0, stamps, time.perf_counter(), _peak(self.device))))
        return clip

    real._find_weights = find_weights
    real._from_pretrained = from_pretrained
    real.generate = timed_generate
    return main(["run", "--root", args.serve, "--config", args.config, "--backend", "diffusers"])


def run_daemon(name: str, *, width: int, height: int, frames: int, steps: int, tmp: Path,
               timeout: float) -> dict[str, Any]:
    """A real daemon process on a temporary root; one job dropped into its inbox; its result's figures."""
    root, config, stamps = tmp / f"root-{name}", tmp / f"config-{name}.toml", tmp / f"steps-{name}.json"
    model = BUILTIN_MODELS[name]
    table = "" if model.tiny else (
        f'[models.bench-{name}]\nfamily = "{model.family}"\nversion = "{getattr(model, "version", "2")}"\n'
        f'diffusers_repo = "{model.diffusers_repo}"\nhas_audio = {str(model.has_audio).lower()}\nguidance = 1.0\n')
    config.write_text(f'settle_seconds = 0.2\nrescan_seconds = 0.5\ncache_dir = "{tmp}/cache"\nlog_dir = "{tmp}/logs"\n'
                      f'state_dir = "{tmp}/state-{name}"\nnotifications = false\nmax_attempts = 1\n{table}')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp / "home"), "PYTHONUNBUFFERED": "1"}
    log = open(tmp / f"daemon-{name}.log", "w")
    daemon = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(root), "--config",
                               str(config), "--stamps", str(stamps)], stdout=log, stderr=subprocess.STDOUT, env=env,
                              cwd=ROOT)
    try:
        (root / "inbox").mkdir(parents=True, exist_ok=True)
        job = root / "inbox" / ".bench.toml.tmp"
        job.write_text(f'prompt = "{PROMPT}"\nmodel = "{name if model.tiny else "bench-" + name}"\nwidth = {width}\n'
                       f'height = {height}\nfps = 24\nduration = {frames / 24}\nsteps = {steps}\ncache = false\n'
                       "[output]\ngif = false\nthumbnail = false\n")
        t0 = time.perf_counter()
        job.rename(root / "inbox" / "bench.toml")
        deadline = time.monotonic() + timeout
        while True:
            done = [p for p in (root / "outbox").glob("*") if p.is_dir()] if (root / "outbox").is_dir() else []
            failed = [p for p in (root / "failed").glob("*") if p.is_dir()] if (root / "failed").is_dir() else []
            if done or failed:
                break
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon for {name} stopped or timed out; see {tmp}/daemon-{name}.log")
            time.sleep(0.05)
        if failed:
            raise SystemExit(f"the daemon failed the {name} job: {(failed[0] / 'error.txt').read_text()}")
        meta = json.loads(next(done[0].glob("*.json")).read_text())
        figures = json.loads(stamps.read_text())
        figures.update(drop_to_result_s=round(time.perf_counter() - t0, 2), load_s=meta["timings"]["load_s"],
                       frames=meta.get("num_frames") or meta.get("frames"), size=f"{meta.get('width')}x"
                       f"{meta.get('height')}")
        return figures
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()


# -- the run --------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(BENCHMARKED), help="comma-separated: " + ", ".join(BENCHMARKED))
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps per run (the median step is reported)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="the tiny model (random, tiny sizes) instead of the real ones")
    ap.add_argument("--dry", action="store_true", help="= --device cpu --tiny at 64x64, 9 frames, 2 steps")
    ap.add_argument("--no-daemon", action="store_true", help="the direct pipeline call only")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a daemon run may take")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--stamps", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args)
    if args.dry:
        args.device, args.tiny, args.width, args.height, args.frames, args.steps = "cpu", True, 64, 64, 9, 2

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench/gpu.py needs an NVIDIA GPU with CUDA, and this machine has none (torch {torch.__version__}: "
              "torch.cuda.is_available() is False). Nothing was run.\n"
              "To check the script itself, run it on the tiny model on the CPU: python bench/gpu.py --dry",
              file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    names = ["tiny"] if args.tiny else [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKED and n != "tiny"]
    if unknown:
        print(f"not benchmarked: {', '.join(unknown)} (choose from {', '.join(BENCHMARKED)})", file=sys.stderr)
        return 2
    where = f"{torch.cuda.get_device_name(0)}, " if args.device == "cuda" else "CPU, "
    print(f"{where}{str(dtype).removeprefix('torch.')}, {args.width}x{args.height}, {args.frames} frames, "
          f"{args.steps} steps, guidance off; torch {torch.__version__}")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hotfolder-gpu-bench-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            if name == "tiny":
                pipe, est = tiny_pipeline(), None
            else:
                pipe = real_pipeline(BENCHMARKED[name], args.device, dtype)
                est = memory.estimate(bench_model(name), "diffusers", args.device,
                                      job=(args.width, args.height, args.frames))
            build_s = time.perf_counter() - t0
            pipe.to(args.device)
            row = {"model": name, "path": "direct", "build_s": round(build_s, 1),
                   **run_direct(pipe, width=args.width, height=args.height, frames=args.frames, steps=args.steps,
                                device=args.device)}
            if est is not None:
                row["estimate_gb"] = round(est.total / memory.GB, 1)
            results.append(row)
            _print(row)
            del pipe
            if args.device == "cuda":
                torch.cuda.empty_cache()
            if not args.no_daemon:
                row = {"model": name, "path": "daemon", **run_daemon(
                    name, width=args.width, height=args.height, frames=args.frames, steps=args.steps,
                    tmp=Path(tmp), timeout=args.timeout)}
                if est is not None:
                    row["estimate_gb"] = round(est.total / memory.GB, 1)
                results.append(row)
                _print(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _print(row: dict[str, Any]) -> None:
    extra = f"  (estimate {row['estimate_gb']} GB)" if "estimate_gb" in row else ""
    load = f", load {row['load_s']} s" if "load_s" in row else f", build {row.get('build_s')} s"
    print(f"{row['model']:<10} {row['path']:<6}  {row['step_s']:8.3f} s/step  decode {row['decode_s']:7.3f} s  "
          f"first step {row['first_step_s']:7.3f} s  peak {row['peak_gb']:6.2f} GB{load}{extra}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
