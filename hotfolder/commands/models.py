"""The model table on this machine: what each name needs, what is on disk, and `pull` to fetch it.

The daemon never downloads; this is the one place that does. Presence is read
from the Hugging Face cache folder that huggingface_hub names (`weights.py`: no
network), so `models list` and `doctor` are instant and work offline. `pull`
checks free disk before it starts and then lets `snapshot_download` do the rest:
its progress bars, and resuming what an earlier, interrupted pull left.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from hotfolder import weights
from hotfolder.weights import GB, gb
from hotfolder.backends import choose, memory
from hotfolder.backends.choose import ModelState, model_state, repos_for
from hotfolder.config import Config, ModelInfo
from hotfolder.errors import HotfolderError, UsageError

DISK_MARGIN_BYTES = 2 * GB  # room left over after a pull: the cache, the results and the OS need some
# Weights in other formats than safetensors: never what the backends load.
IGNORE_PATTERNS = ["*.bin", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.ckpt", "*.pt", "*.pth", "*.gguf"]

Downloader = Callable[..., str]  # huggingface_hub.snapshot_download's signature


def backend_for(model: ModelInfo, config: Config, requested: str = "auto") -> str:
    """The backend whose weights this machine wants for `model` (`backends.choose.wanted`)."""
    return choose.wanted(model, config, requested)[0]


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds `path` (or would: its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _fits(f: memory.Fit) -> str:
    if not f.fits:
        return "no"
    return "offload" if f.offload else "yes"


def table(config: Config, *, cache: Path | None = None, backend: str = "auto",
          machine: memory.Machine | None = None) -> list[dict[str, str]]:
    here = machine or memory.machine(memory.nvidia_smi_memory())
    gpu = (here.gpu_total, here.gpu_free, here.gpu_name) if here.gpu_total else None
    rows = []
    for name, model in config.models.items():
        b = backend_for(model, config, backend)
        st = model_state(model, b, cache)
        repos = " + ".join(r for r, _ in repos_for(model, b)) or ("built in code" if model.tiny else "-")
        device = memory.device_for(b, gpu)
        has_weights = bool(repos_for(model, b)) or bool(model.local_path)
        est = memory.estimate(model, b, device) if b in ("diffusers", "mlx") and has_weights else None
        status = st.status + ("" if model.has_audio else " (video only)")
        missing = [e.what for e in choose.production_extras(model, b, cache) if not e.present]
        if st.present and missing:
            status += f"; production needs the {' and '.join(missing)}"
        rows.append({
            "name": name,
            "backend": b,
            "device": device if est is not None else "-",
            "repos": repos,
            "size": "-" if model.tiny or not model.size_gb else f"{model.size_gb:.1f} GB",
            "on disk": gb(st.bytes) if st.bytes else "-",
            "weights": f"{'' if est.proven else '~'}{gb(est.weights)} {est.dtype}" if est else "-",
            "text enc": f"{'' if est.proven else '~'}{gb(est.text_encoder)}" if est else "-",
            "decoding": gb(est.decoding) if est else "-",
            "fits": _fits(memory.fit(est, here)) if est else ("yes" if model.tiny else "-"),
            "status": status,
        })
    return rows


def list_models(config: Config, *, cache: Path | None = None, backend: str = "auto",
                machine: memory.Machine | None = None) -> int:
    here = machine or memory.machine(memory.nvidia_smi_memory())
    rows = table(config, cache=cache, backend=backend, machine=here)
    cols = ["name", "backend", "repos", "size", "on disk", "device", "weights", "text enc", "decoding", "fits",
            "status"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols).rstrip())
    w, h, f = memory.REFERENCE_JOB
    print(f"\nMemory, resident while a job runs here ({here.describe()}): the weights (bfloat16 on CUDA and MLX, "
          f"float32 on MPS and the CPU), the text encoder, and what decoding a {w}x{h}, {f}-frame job adds. "
          "fits: yes, offload (model CPU offload on a GPU too small for the whole pipeline), or no (the daemon "
          "refuses it). ~: part of the count is assumed (no published configuration yet).")
    print(f"Hugging Face cache: {cache or weights.hub_cache()}. Download: hotfolder models pull NAME "
          "(the model, its latent upsampler and, for non-distilled LTX-2 weights, the stage-2 LoRA)")
    return 0


# -- pull ----------------------------------------------------------------------------
def _snapshot_download(**kwargs: Any) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(**kwargs)


def find_model(config: Config, name: str) -> ModelInfo:
    model = config.model_info(name)
    if model is None:
        close = difflib.get_close_matches(name, list(config.models), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"model {name!r} is not in the model table ({', '.join(config.models)}).{hint}")
    return model


def check_disk(model: ModelInfo, state: ModelState, free: int, where: Path) -> None:
    """Refuse, before any download starts, when the disk cannot hold what is still missing."""
    if not model.size_gb:
        return
    need = max(0, int(model.size_gb * GB) - state.bytes)
    if free < need + DISK_MARGIN_BYTES:
        have = f" ({gb(state.bytes)} already downloaded)" if state.bytes else ""
        raise UsageError(
            f"not enough disk space for model {model.name}: it needs about {model.size_gb:.1f} GB{have}, "
            f"so {gb(need)} more plus {gb(DISK_MARGIN_BYTES)} to spare, but {where} has {gb(free)} free. "
            "Free up space, or put the Hugging Face cache on a larger disk (set HF_HOME, then run "
            "`hotfolder agent install` again so the daemon looks there too), and run this again."
        )


def pull(config: Config, name: str, *, backend: str = "auto", cache: Path | None = None,
         downloader: Downloader | None = None, disk_free: Callable[[Path], int] | None = None,
         env: dict[str, str] | None = None, say: Callable[[str], None] = print,
         machine: memory.Machine | None = None) -> int:
    """Download a model's weights into the Hugging Face cache, resuming what is there.

    With the pipeline come what production loads besides it: the latent upsampler (the repository's
    `latent_upsampler/` folder) and, for non-distilled LTX-2 weights, the distilled LoRA of stage 2.
    A model too big for this machine's memory is still pulled (the cache may serve a bigger machine),
    but it is said first.
    """
    downloader = downloader or _snapshot_download
    disk_free = disk_free or free_bytes
    model = find_model(config, name)
    if model.tiny:
        say(f"{model.label}: built in code, nothing to download.")
        return 0
    if model.local_path:
        say(f"{model.name} is a local folder of weights: nothing to download.")
        return 0
    b = backend_for(model, config, backend)
    repos = repos_for(model, b)
    if not repos:
        raise UsageError(f"model {model.name} has no weights for the {b} backend. "
                         f"Pick another backend with --backend, or another model (hotfolder models list).")
    cache = cache or weights.hub_cache()
    env = dict(os.environ) if env is None else env
    if env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UsageError("HF_HUB_OFFLINE is set in this shell, so nothing can be downloaded. "
                         "Unset it for this command: HF_HUB_OFFLINE= hotfolder models pull " + name)
    state = model_state(model, b, cache)
    check_disk(model, state, disk_free(cache), cache)
    say(f"pulling {model.name} for the {b} backend into {cache}"
        + (f" (resuming: {gb(state.bytes)} already here)" if state.bytes else ""))
    if b in ("diffusers", "mlx"):
        here = machine or memory.machine(memory.nvidia_smi_memory())
        gpu = (here.gpu_total, here.gpu_free, here.gpu_name) if here.gpu_total else None
        est = memory.estimate(model, b, memory.device_for(b, gpu))
        verdict = memory.fit(est, here)
        if est is not None and not verdict.fits:
            say(f"note: {model.name} needs {est.describe()} with the {b} backend, but {verdict.why}: the daemon "
                "on this machine will refuse it (pulling anyway: this cache may serve a bigger machine).")
    for repo, revision in repos:
        say(f"- {repo}" + (f" @ {revision}" if revision else ""))
        _pull_repo(repo, revision, cache, downloader)
    lora = choose.stage2_lora(model) if b == "diffusers" else None
    if lora is not None:
        say(f"- {lora[0]}/{lora[1]} (the distilled LoRA production's stage 2 loads on these weights)")
        _pull_file(lora[0], lora[1], cache, downloader)
    after = model_state(model, b, cache)
    if not after.present:
        raise HotfolderError(f"model {model.name} is still incomplete after the download: {after.problem}. "
                             f"Run `hotfolder models pull {name}` again to resume.")
    extras = choose.production_extras(model, b, cache)
    lost = [e for e in extras if not e.present and e.what == "stage-2 LoRA"]
    if lost:
        raise HotfolderError(f"the {lost[0].what} {lost[0].where} is still missing after the download. "
                             f"Run `hotfolder models pull {name}` again to resume.")
    say(f"{model.name} is ready ({gb(after.bytes)} on disk)."
        + "".join(f" {e.what[0].upper() + e.what[1:]}: {'present' if e.present else 'not in ' + e.repo}."
                  for e in extras))
    if any(not e.present for e in extras):
        say(f'  (without it, mode = "production" cannot run with {model.name}; "preview" can)')
    return 0


def _pull_file(repo: str, filename: str, cache: Path, downloader: Downloader) -> None:
    """One file of `repo` (latest revision) into the cache, resumable like the rest."""
    try:
        downloader(repo_id=repo, revision=None, cache_dir=str(cache), allow_patterns=[filename])
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise HotfolderError(_download_error(repo, e)) from e


def _pull_repo(repo: str, revision: str | None, cache: Path, downloader: Downloader) -> None:
    common = {"repo_id": repo, "revision": revision, "cache_dir": str(cache)}
    try:
        first = Path(downloader(**common, allow_patterns=["model_index.json", "*.json", "*.md"]))
        allow: Sequence[str] | None = None
        if (first / "model_index.json").is_file():
            # A Diffusers pipeline repo also holds other checkpoints: take only what the pipeline loads.
            index = json.loads((first / "model_index.json").read_text(encoding="utf-8"))
            allow = ["model_index.json", *(f"{c}/*" for c in weights.components(index))]
            if str(index.get("_class_name", "")).startswith("LTX2"):
                # Production mode's x2 latent upsampler is not a pipeline component, but the backend loads it.
                allow.append(f"{choose.UPSAMPLER_SUBFOLDER}/*")
        downloader(**common, allow_patterns=allow, ignore_patterns=IGNORE_PATTERNS)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise HotfolderError(_download_error(repo, e)) from e


def _download_error(repo: str, e: Exception) -> str:
    kind = type(e).__name__
    text = str(e).strip().splitlines()[0] if str(e).strip() else kind
    if kind in ("GatedRepoError",) or " 401 " in f" {text} " or " 403 " in f" {text} ":
        return (f"{repo} needs you to accept its license: open https://huggingface.co/{repo}, accept it, "
                f"then log in here with `hf auth login` (or set HF_TOKEN) and run this again. ({kind}: {text})")
    if kind == "RepositoryNotFoundError":
        return f"{repo} does not exist on the Hugging Face Hub (or is private): check the model table. ({text})"
    return (f"downloading {repo} stopped: {kind}: {text}. What was downloaded is kept: run the same command "
            "again to resume.")


def command(config: Config, action: str, name: str | None, *, backend: str = "auto") -> int:
    """`hotfolder models list|pull NAME`."""
    if action == "list":
        return list_models(config, backend=backend)
    if not name:
        raise UsageError("models pull needs a model name, e.g. `hotfolder models pull ltx-2` "
                         "(see `hotfolder models list`).")
    return pull(config, name, backend=backend)
