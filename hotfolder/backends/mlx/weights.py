"""The MLX backend's weights: found on disk without network, loaded, and audited.

- `_resolve`: a model's folders (a local folder, or snapshots in the Hugging Face
  cache through `hotfolder.weights`, never a download) and what layout they hold;
  WeightsMissing at once, naming the repository and `hotfolder models pull NAME`.
- the loaders for the parts the backend builds itself (text encoder, transformer,
  video VAE encoder), and `_WeightAudit`, which finds parameters the package's
  loaders (strict=False) would leave random.
- `weights_present` and `is_model_folder`, for `auto`, `doctor` and `models`.
mlx and mlx_video are imported inside the functions.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotfolder import weights as hub
from hotfolder.backends.choose import MLX_PACKAGE, MLX_PINNED_VERSION
from hotfolder.backends.mlx import tiny as tiny_mlx
from hotfolder.backends.mlx.pipeline import _eval_in_chunks
from hotfolder.errors import BackendError, WeightsMissing

if TYPE_CHECKING:
    from hotfolder.config import Config, ModelInfo

DEFAULT_TEXT_ENCODER = "mlx-community/gemma-3-12b-it-bf16"  # the package's default for MLX-format models
# Upsampler weights the package downloads when a model folder lacks them (LTX-2.3 split repos).
UPSAMPLER_FALLBACK = {
    False: ("Lightricks/LTX-2", "ltx-2-spatial-upscaler-x2-1.0.safetensors"),
    True: ("Lightricks/LTX-2.3", "ltx-2.3-spatial-upscaler-x2-1.1.safetensors"),
}
SPLIT_FILES = ("transformer", "connector", "vae_decoder", "audio_vae", "vocoder")


def weights_present(model: ModelInfo, config: Config | None = None) -> bool:
    """Whether everything `model` needs is on this machine (never downloads, never slow)."""
    if model.tiny:
        return True  # built locally on first use
    try:
        _resolve(model)
    except (WeightsMissing, BackendError):
        return False
    return True


def is_model_folder(path: Path | str) -> bool:
    """Whether a local folder holds an MLX LTX-2 model (unified or split), not a Diffusers one."""
    return _model_dir_problem(Path(path).expanduser()) is None


# --- where the parts are ----------------------------------------------------------


@dataclass(frozen=True)
class _Paths:
    """Where a model's parts are on disk, resolved without network."""

    model_dir: Path
    text_encoder_dir: Path
    upsampler: Path | None  # a separate upsampler file when the model folder lacks one
    split: bool
    quantized: bool
    tiny: bool


@dataclass
class _Parts:
    """The resident components."""

    paths: _Paths
    text_encoder: Any  # None when it is loaded per job
    transformer: Any
    upsampler: Any
    vae_decoder: Any
    audio_decoder: Any
    vocoder: Any
    draws_between_stages: int | None  # random draws the package makes while loading upsampler+VAE
    resident_bytes: int
    vae_encoder: Any = None  # image-to-video only: loaded on the first image job, then resident


def _resolve(model: ModelInfo, *, tiny_dir: Path | None = None) -> _Paths:
    """Find the model's folders without network; WeightsMissing (fast) when absent."""
    hint = hub.pull_hint(model.name)
    if model.tiny:
        assert tiny_dir is not None, "the backend builds the tiny model before resolving it"
        model_dir, repo = tiny_dir, str(tiny_dir)
    elif model.local_path:
        model_dir = Path(model.local_path).expanduser()
        repo = str(model_dir)
        if not model_dir.is_dir():
            raise WeightsMissing(f"model folder {model_dir} does not exist.", hint="check the path given as model")
    else:
        repo = model.mlx_repo or ""
        model_dir = hub.snapshot(repo, model.revision, model_name=model.name)

    problem = _model_dir_problem(model_dir)
    if problem:
        raise WeightsMissing(f"model {model.name}: {problem}", hint=hint)
    split = not (model_dir / "model.safetensors").is_file()
    manifest = _read_json(model_dir / "split_model.json")
    quantized = bool(manifest.get("quantized", False))

    if (model_dir / "text_encoder").is_dir():
        text_encoder_dir = model_dir / "text_encoder"
    else:
        te_repo = model.mlx_text_encoder_repo or DEFAULT_TEXT_ENCODER
        text_encoder_dir = hub.snapshot(te_repo, None, model_name=model.name)
    te_problem = _text_encoder_problem(text_encoder_dir, model_dir)
    if te_problem:
        raise WeightsMissing(f"model {model.name}: text encoder {text_encoder_dir}: {te_problem}", hint=hint)

    upsampler = None
    if not _has_upsampler(model_dir):
        from mlx_video.generate_av import _is_ltx_23_model

        fallback_repo, filename = UPSAMPLER_FALLBACK[_is_ltx_23_model(repo, model_dir)]
        upsampler = hub.file(fallback_repo, filename, model_name=model.name, what="spatial upsampler")
    return _Paths(
        model_dir=model_dir,
        text_encoder_dir=text_encoder_dir,
        upsampler=upsampler,
        split=split,
        quantized=quantized,
        tiny=bool(_read_json(model_dir / tiny_mlx.ARCH_FILE).get("tiny")),
    )


def _model_dir_problem(model_dir: Path) -> str | None:
    if not (model_dir / "config.json").is_file():
        return f"{model_dir} has no config.json: not an MLX LTX-2 model folder (or an incomplete download)."
    if (model_dir / "model.safetensors").is_file():
        return None
    missing = [f"{part}.safetensors" for part in SPLIT_FILES if not (model_dir / f"{part}.safetensors").is_file()]
    if missing:
        return f"{model_dir} has neither model.safetensors nor {', '.join(missing)}."
    return None


def _text_encoder_problem(text_encoder_dir: Path, model_dir: Path) -> str | None:
    if not (text_encoder_dir / "config.json").is_file():
        return "no config.json"
    if not any(text_encoder_dir.glob("*.safetensors")):
        return "no *.safetensors weights"
    tokenizer_dirs = (model_dir / "tokenizer", text_encoder_dir)
    if not any((d / f).is_file() for d in tokenizer_dirs for f in ("tokenizer.json", "tokenizer.model")):
        return "no tokenizer (tokenizer.json or tokenizer.model)"
    return None


def _has_upsampler(model_dir: Path) -> bool:
    if (model_dir / "upsampler.safetensors").is_file():
        return True
    single = model_dir / "model.safetensors"
    return single.is_file() and any(k.startswith("upsampler.") for k in _safetensors_keys(single))


def _safetensors_keys(path: Path) -> list[str]:
    """Tensor names from the header only (cheap even for a 42 GB file)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return [k for k in header if k != "__metadata__"]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- loading and auditing -----------------------------------------------------------


def _load_text_encoder(paths: _Paths, name: str):
    import mlx.core as mx
    from mlx_video.models.ltx.text_encoder import LTX2TextEncoder

    with _WeightAudit() as audit:
        encoder = LTX2TextEncoder()
        encoder.load(model_path=paths.model_dir, text_encoder_path=str(paths.text_encoder_dir), use_unified=True)
    audit.check(name, "text encoder", encoder)
    mx.eval(encoder.parameters())
    return encoder


def transformer_config(model_dir: Path) -> dict[str, Any]:
    """The package's transformer config for an MLX-format model (generate_av.py:1493-1553).

    Sizes the package hard-codes (48 layers, 32 x 128 heads) can be overridden by
    `hotfolder_arch.json` in the model folder, which only the tiny model has.
    """
    from mlx_video.generate_av import AUDIO_LATENT_CHANNELS, AUDIO_MEL_BINS
    from mlx_video.models.ltx.config import LTXModelType, LTXRopeType

    t_cfg = _read_json(model_dir / "embedded_config.json").get("transformer", {})
    first = t_cfg.get("caption_projection_first_linear", True)
    second = t_cfg.get("caption_projection_second_linear", True)
    gated = bool(t_cfg.get("apply_gated_attention", False))
    if not first and not second:
        caption = t_cfg.get("connector_num_attention_heads", 32) * t_cfg.get("connector_attention_head_dim", 128)
        audio_caption = t_cfg.get("audio_connector_num_attention_heads", 32) * t_cfg.get(
            "audio_connector_attention_head_dim", 64
        )
    else:
        caption = t_cfg.get("caption_channels", 3840)
        audio_caption = t_cfg.get("audio_caption_channels", 3840)
    cfg: dict[str, Any] = dict(
        model_type=LTXModelType.AudioVideo,
        num_attention_heads=32,
        attention_head_dim=128,
        in_channels=128,
        out_channels=128,
        num_layers=48,
        cross_attention_dim=4096,
        caption_channels=caption,
        caption_projection_first_linear=first,
        caption_projection_second_linear=second,
        adaln_embedding_coefficient=9 if gated else 6,
        apply_gated_attention=gated,
        audio_num_attention_heads=32,
        audio_attention_head_dim=64,
        audio_in_channels=AUDIO_LATENT_CHANNELS * AUDIO_MEL_BINS,
        audio_out_channels=AUDIO_LATENT_CHANNELS * AUDIO_MEL_BINS,
        audio_cross_attention_dim=2048,
        audio_caption_channels=audio_caption,
        rope_type=LTXRopeType.SPLIT,
        double_precision_rope=True,
        positional_embedding_theta=10000.0,
        positional_embedding_max_pos=[20, 2048, 2048],
        audio_positional_embedding_max_pos=[20],
        use_middle_indices_grid=True,
        timestep_scale_multiplier=1000,
    )
    cfg.update(_read_json(model_dir / tiny_mlx.ARCH_FILE).get("transformer", {}))
    return cfg


def _load_transformer(paths: _Paths, name: str):
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_video.generate_av import load_unified_weights
    from mlx_video.models.ltx.config import LTXModelConfig
    from mlx_video.models.ltx.ltx import LTXModel

    weights = load_unified_weights(paths.model_dir, "transformer.")
    model = LTXModel(LTXModelConfig(**transformer_config(paths.model_dir)))
    if paths.quantized:  # as the package: quantize the Linear layers that have scales
        manifest = _read_json(paths.model_dir / "split_model.json")
        quantized = {k.rsplit(".", 1)[0] for k in weights if k.endswith(".scales")}
        nn.quantize(
            model,
            group_size=manifest.get("quantization_group_size", 64),
            bits=manifest.get("quantization_bits", 4),
            class_predicate=lambda path, module: isinstance(module, nn.Linear) and path in quantized,
        )
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(expected.keys() - weights.keys())
    wrong = sorted(k for k in expected.keys() & weights.keys() if tuple(weights[k].shape) != tuple(expected[k].shape))
    if missing or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} of {len(expected)} parameters missing (e.g. {', '.join(missing[:3])})")
        if wrong:
            k = wrong[0]
            got, want = tuple(weights[k].shape), tuple(expected[k].shape)
            detail.append(f"{len(wrong)} with another shape (e.g. {k}: {got} instead of {want})")
        raise _mismatch(name, "transformer", "; ".join(detail))
    model.load_weights(list(weights.items()), strict=False)
    return model


def _load_vae_encoder(paths: _Paths, name: str):
    """The package's video VAE encoder for image-to-video; WeightsMissing when the model lacks it."""
    from mlx_video.models.ltx.video_vae.encoder import load_vae_encoder

    model_dir = paths.model_dir
    single = model_dir / "model.safetensors"
    if single.is_file():
        present = any(k.startswith("vae_encoder.") for k in _safetensors_keys(single))
    else:
        present = (model_dir / "vae_encoder.safetensors").is_file()
    if not present:
        where = "vae_encoder.* tensors in model.safetensors" if single.is_file() else "vae_encoder.safetensors"
        raise WeightsMissing(
            f"model {name}: image-to-video needs the video VAE encoder, and {model_dir} has no {where}.",
            hint=f"The download may be incomplete. Run: hotfolder models pull {name}",
        )
    with _WeightAudit() as audit:
        encoder = load_vae_encoder(str(model_dir), use_unified=True)  # as the package's entry point
    audit.check(name, "video VAE encoder", encoder)
    _eval_in_chunks([encoder.parameters()])
    return encoder


def _mismatch(name: str, component: str, detail: str) -> WeightsMissing:
    return WeightsMissing(
        f"model {name}: the {component} weights do not match what {MLX_PACKAGE} {MLX_PINNED_VERSION} builds: {detail}.",
        hint=f"The download may be incomplete or of another version. Run: hotfolder models pull {name}",
    )


class _WeightAudit:
    """Records what the package's loaders read from disk, to find parameters left random.

    The loaders call `load_weights(strict=False)` and set a few arrays by hand
    (latent statistics, registers). While active, this notes the keys given to
    `load_weights` and the arrays `mx.load` returned; a parameter that is neither
    was never loaded. Used only on the MLX thread, only while loading.
    """

    def __enter__(self) -> _WeightAudit:
        import mlx.core as mx
        import mlx.nn as nn

        self._calls: list[tuple[Any, set[str]]] = []
        self._from_disk: list[Any] = []  # kept alive so that ids stay unique
        self._mx, self._nn = mx, nn
        self._load, self._load_weights = mx.load, nn.Module.load_weights
        audit = self

        def load(*args, **kwargs):
            result = audit._load(*args, **kwargs)
            if isinstance(result, dict):
                audit._from_disk.extend(result.values())
            return result

        def load_weights(module, file_or_weights, strict=True):
            weights = file_or_weights
            if isinstance(weights, str):
                weights = list(load(weights).items())
            weights = list(weights)
            audit._calls.append((module, {k for k, _ in weights}))
            return audit._load_weights(module, weights, strict=strict)

        mx.load = load
        nn.Module.load_weights = load_weights
        return self

    def __exit__(self, *exc) -> None:
        self._mx.load = self._load
        self._nn.Module.load_weights = self._load_weights

    def check(self, name: str, component: str, module) -> None:
        from mlx.utils import tree_flatten

        paths = {id(m): path for path, m in module.named_modules()}
        covered: set[str] = set()
        for loaded_module, keys in self._calls:
            if id(loaded_module) in paths:
                prefix = paths[id(loaded_module)]
                covered |= {f"{prefix}.{k}" if prefix else k for k in keys}
        from_disk = {id(a) for a in self._from_disk}
        params = dict(tree_flatten(module.parameters()))
        missing = sorted(
            k for k, v in params.items() if k not in covered and id(v) not in from_disk and not _optional(module, k)
        )
        if missing:
            raise _mismatch(
                name, component, f"{len(missing)} of {len(params)} parameters missing (e.g. {', '.join(missing[:3])})"
            )


def _optional(module, key: str) -> bool:
    """Checkpoint-only buffers a vocoder may lack: unused unless they feed bandwidth extension."""
    if ".mel_stft." in f".{key}":
        return not (type(module).__name__ == "VocoderWithBWE" and key.startswith("mel_stft."))
    return False
