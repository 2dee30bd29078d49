"""A tiny random-weight MLX LTX-2 model, built locally: its output is NOISE.

For tests, the demo and benchmarks only; it is never presented as a real model.
It runs the real mlx-video-with-audio pipeline code (Gemma text encoder,
connectors, audio-video transformer, latent upsampler, video VAE decoder and
encoder, audio VAE decoder, vocoder) with random weights, deterministic and without downloads,
shrunk so that a 2-core CPU runs a job in seconds. It keeps what fixes the
shapes of a job: 128 latent channels, the real 32x spatial / 8x temporal video
compression (three 2x2x2 depth-to-space stages plus a 4x4 patch), the 8x16
audio latents at 25 per second, 64 mel bins and the 24 kHz stereo vocoder.

Speed on a 2-core x86 CPU (mlx[cpu] 0.32.4): about 1 s for a 192x128, 9-frame
job; about 45-55 s at a preview preset size (640x384, 121 frames), of which
two thirds is the tiled video decode: MLX's CPU conv3d runs at ~1.5 GFLOP/s
and the decoder's last convolution must output 48 channels at a quarter of the
full resolution whatever the width. Apple GPUs should be far faster (not
measured).

How far the package lets it shrink (mlx-video-with-audio 0.1.37):
- Gemma, connectors, VAE decoder block layout and vocoder: through the files the
  package reads (`text_encoder/config.json`, `embedded_config.json`).
- Upsampler: the package reads its width from the weights.
- Video VAE encoder: its block layout through `embedded_config.json`
  (`vae.encoder_blocks`); the loader builds it 128 channels wide, but plain
  convolution blocks follow the weights' shapes, so it runs 16 wide.
- Video VAE decoder and audio VAE decoder: the package hard-codes their widths
  (1024/512/256/128 and ch=128) but their forward passes follow the weights'
  shapes, so narrower weights run through the package's own modules.
- Transformer: the package hard-codes 48 layers of 32x128 heads and uses those
  numbers at run time (RoPE), so nothing but a smaller `LTXModelConfig` can
  shrink it. `hotfolder_arch.json` holds the sizes; the resident backend reads
  it, and `bench/resident.py` applies it to the package's one-shot call.

Layouts: "unified" (one `model.safetensors` with component prefixes, like
`notapalindrome/ltx2-mlx-av`) or "split" (one file per component plus
`split_model.json`, optionally 4-bit quantized, like
`dgrauet/ltx-2.3-mlx-distilled-q4`).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from hotfolder.backends.mlx.patches import apply_rms_norm_fix

TINY_VERSION = 1
LABEL = "tiny random weights: the output is noise, for tests and the demo"
ARCH_FILE = "hotfolder_arch.json"  # sizes the package hard-codes; read by weights.py

# Gemma 3 text model: 2 layers of width 32 (the real one: 48 layers of 3840).
GEMMA: dict[str, Any] = {
    "model_type": "gemma3_text",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "vocab_size": 260,  # 4 special tokens + 256 byte symbols
    "sliding_window": 1024,
    "sliding_window_pattern": 2,
    "rms_norm_eps": 1e-6,
}
CONNECTOR_HEADS, CONNECTOR_HEAD_DIM, CONNECTOR_LAYERS = 2, 16, 1
CONNECTOR_DIM = CONNECTOR_HEADS * CONNECTOR_HEAD_DIM

# The audio-video transformer (the real one: 48 layers, video 32x128, audio 32x64).
TRANSFORMER: dict[str, Any] = {
    "num_layers": 1,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "cross_attention_dim": 32,
    "audio_num_attention_heads": 2,
    "audio_attention_head_dim": 8,
    "audio_cross_attention_dim": 16,
}

UPSAMPLER_MID = 32  # GroupNorm(32) sets the floor; real: 1024
VAE_WIDTH = 32  # channels after conv_in; halved by each of the 3 upsamples (real: 1024)
VAE_DECODER_BLOCKS = [  # encoder order, as in embedded_config.json (real: res_x 5 layers)
    ["res_x", {"num_layers": 1}],
    ["compress_all", {"residual": True, "multiplier": 2}],
    ["res_x", {"num_layers": 1}],
    ["compress_all", {"residual": True, "multiplier": 2}],
    ["res_x", {"num_layers": 1}],
    ["compress_all", {"residual": True, "multiplier": 2}],
    ["res_x", {"num_layers": 1}],
]
# The video VAE encoder (image-to-video): the real compression (4x4 patch, then 8x in space
# and time) at 16 channels (real: 128 after conv_in, doubling at each compression). Plain
# strided convolutions: the package's space-to-depth blocks hard-code their width at build.
VAE_ENCODER_WIDTH = 16
VAE_ENCODER_BLOCKS = [  # as in embedded_config.json (real: res_x 4/6/6/2/2 layers, *_res compressions)
    ["res_x", {"num_layers": 1}],
    ["compress_space", {}],
    ["res_x", {"num_layers": 1}],
    ["compress_time", {}],
    ["compress_all", {}],
    ["compress_all", {}],
    ["res_x", {"num_layers": 1}],
]
AUDIO_DECODER_CH = 8  # real: 128
VOCODER: dict[str, Any] = {  # real: 1024 channels, resblocks [3, 7, 11]
    "upsample_initial_channel": 64,
    "upsample_rates": [6, 5, 2, 2, 2],
    "upsample_kernel_sizes": [16, 15, 8, 4, 4],
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]],
    "resblock": "1",
    "activation": "leaky_relu",
}
QUANT_BITS, QUANT_GROUP = 4, 32


# The same transformer with its audio stream as wide as its video stream (2 heads of 16): the package's
# compiled rms_norm then only ever sees one width, so its bug does not bite and the package runs unpatched
# (tests compare the resident pipeline with the package's own, untouched code on it).
ONE_WIDTH: dict[str, Any] = {"audio_attention_head_dim": 16, "audio_cross_attention_dim": 32}


def build(dest: Path, *, layout: str = "unified", quantized: bool = False,
          transformer: dict[str, Any] | None = None) -> Path:
    """Write the tiny model into `dest` in the layout the package loads (`transformer`: sizes that replace
    TRANSFORMER's, e.g. ONE_WIDTH; recorded in hotfolder_arch.json, which both pipelines read)."""
    arch = {**TRANSFORMER, **(transformer or {})}
    if layout not in ("unified", "split"):
        raise ValueError(f"layout must be 'unified' or 'split', not {layout!r}")
    if quantized and layout != "split":
        raise ValueError("only the split layout is quantized (as dgrauet/ltx-2.3-mlx-distilled-q4)")
    import mlx.core as mx

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    components = {
        "transformer": _transformer(quantized, arch),
        "connector": _connector(),
        "vae_decoder": _vae_decoder(),
        "vae_encoder": _vae_encoder(),
        "audio_vae": _audio_decoder(),
        "vocoder": _vocoder(),
        "upsampler": _upsampler(),
    }
    meta = {"format": "mlx", "hotfolder_tiny": LABEL}
    if layout == "unified":
        merged = {f"{prefix}.{k}": v for prefix, weights in components.items() for k, v in weights.items()}
        mx.save_safetensors(str(dest / "model.safetensors"), merged, metadata=meta)
    else:
        for prefix, weights in components.items():
            mx.save_safetensors(str(dest / f"{prefix}.safetensors"), weights, metadata=meta)
        manifest: dict[str, Any] = {"format": "split", "quantized": quantized}
        if quantized:
            manifest.update(quantization_bits=QUANT_BITS, quantization_group_size=QUANT_GROUP)
        _write_json(dest / "split_model.json", manifest)

    _write_json(dest / "config.json", {"model_type": "AudioVideo", "hotfolder_tiny": LABEL})
    _write_json(
        dest / "embedded_config.json",
        {
            "transformer": {
                "connector_num_layers": CONNECTOR_LAYERS,
                "connector_num_attention_heads": CONNECTOR_HEADS,
                "connector_attention_head_dim": CONNECTOR_HEAD_DIM,
                "connector_num_learnable_registers": 128,
                "caption_channels": CONNECTOR_DIM,
                "audio_caption_channels": CONNECTOR_DIM,
            },
            "vae": {
                "decoder_blocks": VAE_DECODER_BLOCKS,
                "encoder_blocks": VAE_ENCODER_BLOCKS,
                "timestep_conditioning": False,
            },
            "vocoder": {"vocoder": VOCODER},
        },
    )
    _write_json(dest / ARCH_FILE, {"tiny": True, "label": LABEL, "version": TINY_VERSION, "transformer": arch})
    _text_encoder(dest / "text_encoder")
    return dest


@contextlib.contextmanager
def package_entry_point(model_dir: Path, *, rms_norm_fix: bool = True) -> Iterator[Callable[..., tuple[Any, Any]]]:
    """The package's own one-shot `generate_video_with_audio`, runnable on a tiny folder.

    For `bench/resident.py` and the parity tests only. Patches, undone on exit:
    - the entry point's hard-coded 48-layer transformer config gets the sizes in
      `hotfolder_arch.json` (nothing else in the package shrinks the transformer);
    - its file output is stubbed: the OpenCV 'avc1' writer fails silently on Linux
      and the ffmpeg mux needs ffmpeg on PATH. Everything before the writing
      (loading, both stages, both decoders) runs unchanged.
    The package's rms_norm: with `rms_norm_fix` (the default), the project's fix
    (`patches.apply_rms_norm_fix`, which the resident backend applies too, and which
    stays: it is correct everywhere); the package cannot run the tiny model (nor LTX-2:
    its audio stream is narrower than its video stream) without it. With
    `rms_norm_fix=False`, the package's own compiled `mlx_video.utils.rms_norm`, exactly
    as shipped, for the duration (whatever was there before is put back): only a model
    whose streams have one width runs so (`build(..., transformer=ONE_WIDTH)`).
    Yields `run(prompt, height, width, num_frames, seed, fps, image=None, image_strength=1.0)
    -> (frames, audio)`; with an image, the package's image-to-video at frame 0.
    """
    import mlx_video.generate_av as gav
    import mlx_video.utils as package_utils
    from mlx_video.models.ltx import text_encoder, transformer

    arch = json.loads((Path(model_dir) / ARCH_FILE).read_text(encoding="utf-8"))["transformer"]
    original_config, original_mux = gav.LTXModelConfig, gav.mux_video_audio
    norms = (text_encoder.rms_norm, transformer.rms_norm)

    def tiny_config(**kwargs: Any):
        return original_config(**{**kwargs, **arch})

    def no_mux(video_path: Path, audio_path: Path, output_path: Path) -> bool:
        Path(video_path).touch()  # the package deletes its temp video after a mux
        return True

    def run(prompt: str, height: int, width: int, num_frames: int, seed: int, fps: int = 24,
            image: str | None = None, image_strength: float = 1.0):  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="hotfolder-oneshot-") as out:
            return gav.generate_video_with_audio(
                str(model_dir),
                str(Path(model_dir) / "text_encoder"),
                prompt,
                height=height,
                width=width,
                num_frames=num_frames,
                seed=seed,
                fps=fps,
                output_path=str(Path(out) / "out.mp4"),
                verbose=False,
                image=image,
                image_strength=image_strength,
                image_frame_idx=0,
            )

    if rms_norm_fix:
        apply_rms_norm_fix()
    else:
        text_encoder.rms_norm = transformer.rms_norm = package_utils.rms_norm
    gav.LTXModelConfig, gav.mux_video_audio = tiny_config, no_mux
    try:
        yield run
    finally:
        gav.LTXModelConfig, gav.mux_video_audio = original_config, original_mux
        if not rms_norm_fix:
            text_encoder.rms_norm, transformer.rms_norm = norms


# --- components -------------------------------------------------------------


def _transformer(quantized: bool, arch: dict[str, Any]) -> dict:
    import mlx.nn as nn
    from mlx_video.models.ltx.config import LTXModelConfig, LTXModelType, LTXRopeType
    from mlx_video.models.ltx.ltx import LTXModel

    cfg = LTXModelConfig(
        model_type=LTXModelType.AudioVideo,
        in_channels=128,
        out_channels=128,
        caption_channels=CONNECTOR_DIM,
        audio_in_channels=128,
        audio_out_channels=128,
        audio_caption_channels=CONNECTOR_DIM,
        rope_type=LTXRopeType.SPLIT,
        double_precision_rope=True,
        positional_embedding_max_pos=[20, 2048, 2048],
        audio_positional_embedding_max_pos=[20],
        **arch,
    )
    model = LTXModel(cfg)
    _randomize(model, "transformer", dtype="bfloat16")
    if quantized:
        nn.quantize(
            model,
            group_size=QUANT_GROUP,
            bits=QUANT_BITS,
            class_predicate=lambda _, m: isinstance(m, nn.Linear) and m.weight.shape[1] % QUANT_GROUP == 0,
        )
    return _flat(model)


def _connector() -> dict:
    from mlx_video.models.ltx.text_encoder import Embeddings1DConnector, GemmaFeaturesExtractor

    weights: dict = {}
    n_states = GEMMA["num_hidden_layers"] + 1  # embeddings + every layer
    extractor = GemmaFeaturesExtractor(input_dim=GEMMA["hidden_size"] * n_states, output_dim=CONNECTOR_DIM)
    _randomize(extractor, "connector.extractor", dtype="bfloat16")
    weights["text_embedding_projection.aggregate_embed.weight"] = extractor.aggregate_embed.weight
    for name in ("video_embeddings_connector", "audio_embeddings_connector"):
        conn = Embeddings1DConnector(
            dim=CONNECTOR_DIM,
            num_heads=CONNECTOR_HEADS,
            head_dim=CONNECTOR_HEAD_DIM,
            num_layers=CONNECTOR_LAYERS,
            num_learnable_registers=128,
        )
        _randomize(conn, f"connector.{name}", dtype="bfloat16")
        weights.update({f"{name}.{k}": v for k, v in _flat(conn).items()})
    return weights


def _vae_decoder() -> dict:
    """The package's LTX2VideoDecoder with its hard-coded 1024-wide parts narrowed."""
    import mlx.core as mx
    from mlx_video.models.ltx.video_vae.convolution import CausalConv3d, PaddingModeType
    from mlx_video.models.ltx.video_vae.decoder import LTX2VideoDecoder, ResBlockGroup
    from mlx_video.models.ltx.video_vae.sampling import DepthToSpaceUpsample

    pad = PaddingModeType.REFLECT
    dec = LTX2VideoDecoder(decoder_blocks=VAE_DECODER_BLOCKS, timestep_conditioning=False, spatial_padding_mode=pad)
    width = VAE_WIDTH
    dec.conv_in.conv = CausalConv3d(128, width, kernel_size=3, stride=1, padding=1, spatial_padding_mode=pad)
    for i, block in list(dec.up_blocks.items()):
        if isinstance(block, ResBlockGroup):
            dec.up_blocks[i] = ResBlockGroup(width, len(block.res_blocks), pad, False)
        else:
            dec.up_blocks[i] = DepthToSpaceUpsample(
                dims=3,
                in_channels=width,
                stride=block.stride,
                residual=block.residual,
                out_channels_reduction_factor=block.out_channels_reduction_factor,
                spatial_padding_mode=pad,
            )
            width //= block.out_channels_reduction_factor
    dec.conv_out.conv = CausalConv3d(width, 3 * 4 * 4, kernel_size=3, stride=1, padding=1, spatial_padding_mode=pad)
    _randomize(dec, "vae_decoder", dtype="float32")
    weights = {k: v for k, v in _flat(dec).items() if k not in ("latents_mean", "latents_std")}
    weights["per_channel_statistics.mean"] = mx.zeros((128,))
    weights["per_channel_statistics.std"] = mx.ones((128,))
    return weights


def _vae_encoder() -> dict:
    """The package's VideoEncoder (image-to-video) with its 128-wide layers narrowed to 16.

    The package's loader builds the encoder from `encoder_blocks` at 128 channels;
    the forward passes of these blocks follow the weights' shapes, so narrower
    weights run through the package's own modules, as for the decoder.
    """
    import mlx.core as mx
    from mlx_video.models.ltx.video_vae.convolution import CausalConv3d, PaddingModeType
    from mlx_video.models.ltx.video_vae.video_vae import (
        LogVarianceType,
        NormLayerType,
        VideoEncoder,
        _make_encoder_block,
    )

    pad = PaddingModeType.ZEROS  # the loader's default
    blocks = [(name, params) for name, params in VAE_ENCODER_BLOCKS]
    enc = VideoEncoder(
        encoder_blocks=blocks,
        patch_size=4,
        norm_layer=NormLayerType.PIXEL_NORM,
        latent_log_var=LogVarianceType.UNIFORM,
        encoder_spatial_padding_mode=pad,
    )
    width = VAE_ENCODER_WIDTH
    enc.conv_in = CausalConv3d(3 * 4 * 4, width, kernel_size=3, stride=1, padding=1, causal=True,
                               spatial_padding_mode=pad)  # fmt: skip
    for i, (name, params) in enumerate(blocks):
        enc.down_blocks[i], width = _make_encoder_block(
            block_name=name,
            block_config=params,
            in_channels=width,
            convolution_dimensions=3,
            norm_layer=NormLayerType.PIXEL_NORM,
            norm_num_groups=32,
            spatial_padding_mode=pad,
        )
    enc.conv_out = CausalConv3d(width, 128 + 1, kernel_size=3, stride=1, padding=1, causal=True,
                                spatial_padding_mode=pad)  # fmt: skip
    _randomize(enc, "vae_encoder", dtype="float32")
    weights = {k: v for k, v in _flat(enc).items() if not k.startswith("per_channel_statistics.")}
    # Set by hand by the package's loader (the names of the split LTX-2.3 shards).
    weights["per_channel_statistics._mean_of_means"] = mx.zeros((128,))
    weights["per_channel_statistics._std_of_means"] = mx.ones((128,))
    return weights


def _audio_decoder() -> dict:
    """The package's AudioDecoder at ch=16 instead of its hard-coded 128."""
    import mlx.core as mx
    from mlx_video.models.ltx.audio_vae import AudioDecoder, CausalityAxis, NormType

    dec = AudioDecoder(
        ch=AUDIO_DECODER_CH,
        out_ch=2,
        ch_mult=(1, 2, 4),
        num_res_blocks=2,
        attn_resolutions={8, 16, 32},
        resolution=256,
        z_channels=8,
        norm_type=NormType.PIXEL,
        causality_axis=CausalityAxis.HEIGHT,
        mel_bins=64,
    )
    _randomize(dec, "audio_vae", dtype="float32")
    weights = _flat(dec)
    # Loaded by hand by the package; they normalise the 8x16 = 128 latent features.
    weights["per_channel_statistics._mean_of_means"] = mx.zeros((128,))
    weights["per_channel_statistics._std_of_means"] = mx.ones((128,))
    return weights


def _vocoder() -> dict:
    from mlx_video.models.ltx.audio_vae import Vocoder

    voc = Vocoder(
        resblock_kernel_sizes=VOCODER["resblock_kernel_sizes"],
        upsample_rates=VOCODER["upsample_rates"],
        upsample_kernel_sizes=VOCODER["upsample_kernel_sizes"],
        resblock_dilation_sizes=VOCODER["resblock_dilation_sizes"],
        upsample_initial_channel=VOCODER["upsample_initial_channel"],
        stereo=True,
        output_sample_rate=24000,
    )
    _randomize(voc, "vocoder", dtype="float32")
    return _flat(voc)


def _upsampler() -> dict:
    """Stored as the package expects it: PyTorch conv layouts, transposed on load."""
    import mlx.core as mx
    from mlx_video.models.ltx.upsampler import LatentUpsampler

    up = LatentUpsampler(in_channels=128, mid_channels=UPSAMPLER_MID, num_blocks_per_stage=4)
    _randomize(up, "upsampler", dtype="float32")
    weights = {}
    for k, v in _flat(up).items():
        if "conv" in k and k.endswith("weight") and v.ndim == 5:
            v = mx.transpose(v, (0, 4, 1, 2, 3))  # MLX (O, D, H, W, I) -> PyTorch (O, I, D, H, W)
        elif "conv" in k and k.endswith("weight") and v.ndim == 4:
            v = mx.transpose(v, (0, 3, 1, 2))  # MLX (O, H, W, I) -> PyTorch (O, I, H, W)
        weights[k] = v
    return weights


def _text_encoder(dest: Path) -> None:
    """A 2-layer Gemma 3 plus a byte-level tokenizer (no download, no training)."""
    import mlx.core as mx
    from mlx_video.models.ltx.text_encoder import LanguageModel
    from mlx_vlm.models.gemma3.config import TextConfig

    dest.mkdir(parents=True, exist_ok=True)
    lm = LanguageModel(TextConfig.from_dict(GEMMA))
    _randomize(lm, "text_encoder", dtype="bfloat16")
    weights = {f"language_model.{k}": v for k, v in _flat(lm).items()}
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    _write_json(dest / "config.json", {"model_type": "gemma3", "text_config": GEMMA, "hotfolder_tiny": LABEL})
    _tokenizer(dest)


def _tokenizer(dest: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    assert len(vocab) == GEMMA["vocab_size"]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    fast.save_pretrained(str(dest))


# --- helpers ----------------------------------------------------------------


def _flat(module) -> dict:
    from mlx.utils import tree_flatten

    return dict(tree_flatten(module.parameters()))


def _randomize(module, scope: str, *, dtype: str) -> None:
    """Replace every parameter with seeded numpy noise: the same bytes on every machine."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    new = []
    for key, value in sorted(_flat(module).items()):
        rng = np.random.default_rng(zlib.crc32(f"{TINY_VERSION}/{scope}/{key}".encode()))
        shape = tuple(value.shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "bias" or key.endswith("latents_mean"):
            arr = np.zeros(shape, np.float32)
        elif leaf == "latents_std":
            arr = np.ones(shape, np.float32)
        elif "scale_shift_table" in leaf:
            arr = rng.normal(0.0, 0.02, shape).astype(np.float32)
        elif len(shape) == 1:  # norm weights
            arr = np.ones(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            arr = rng.normal(0.0, 1.0 / np.sqrt(max(fan_in, 1)), shape).astype(np.float32)
        new.append((key, mx.array(arr).astype(getattr(mx, dtype))))
    module.update(tree_unflatten(new))
    mx.eval(module.parameters())


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
