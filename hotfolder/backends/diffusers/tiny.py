"""Tiny random-weight LTX-2 and LTX-Video pipelines, built entirely in code.

THE OUTPUT IS NOISE. These pipelines have random weights: nothing here has
been trained, and a person must never be shown their output as a real model's.

Why they exist: tests, CI and the demo need to run the *real* Diffusers
pipeline code end to end (prompt encoding, denoising loop, step callbacks,
VAE decode, audio VAE + vocoder) on a machine with no GPU, no network and no
multi-gigabyte download. So every component is the real Diffusers/Transformers
class with a minimal config:

- tokenizers are built locally from a character vocabulary (no hub file);
- the video VAEs keep the real models' compression, 32x spatial and 8x
  temporal (patch_size 4 and three spatio-temporal stages of 8 channels), so
  the latent grid, and therefore the cost, stays small at real preset sizes:
  a 640x352, 121-frame, 8-step LTX-2 job with audio takes a few seconds on a
  2-core CPU;
- the LTX-2 vocoder upsamples by exactly the audio VAE's hop length (8 x 20 =
  160 at 16 kHz), so the audio lasts as long as the video, as with the real
  model: to within ~50 ms (40 ms latent frames, and the causal audio decoder
  drops 3 mel frames), which the backend pads or trims.

Building is deterministic: a fixed torch seed per component (inside a forked
RNG, so the caller's RNG is untouched) and `.eval()` on every module. Bump
`TINY_VERSION` whenever the architecture, the vocabulary or the seed changes:
the result cache uses it as the weights' identity.

Only this module and `diffusers_ltx.py` import torch/diffusers.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusers import LTX2Pipeline, LTXPipeline
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

TINY_VERSION = "1"

SEED = 0

# Audio: 16 kHz mel frames every 160 samples; the vocoder's upsample factors
# multiply to the same 160, so samples out = mel frames x hop = the video's length.
AUDIO_SAMPLE_RATE = 16000
AUDIO_HOP = 160
VOCODER_UPSAMPLE = (8, 20)

# Characters the tiny tokenizers know; anything else maps to <unk>.
_CHARS = string.ascii_letters + string.digits + string.punctuation


def _seeded(build):
    """Run `build()` with torch seeded to SEED, leaving the caller's RNG state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        module = build()
    return module.eval()


def _gemma_tokenizer(max_length: int):
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    specials += ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]  # Gemma 3's image tokens
    pieces = specials + ["▁"] + list(_CHARS)
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    return tokenizer, vocab


def _t5_tokenizer(max_length: int):
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in _CHARS] + [("▁" + c, -2.5) for c in _CHARS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)


def build_ltx2_pipeline() -> LTX2Pipeline:
    """A tiny random-weight `LTX2Pipeline` (video + audio). Its output is noise."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text_hidden = 32  # must equal the connectors' heads x head_dim (4 x 8)
    text_layers = 2
    latent_channels = 8
    audio_latent_channels = 2
    mel_bins = 8  # the audio VAE compresses mel bins 4x: 2 latent bins

    tokenizer, vocab = _gemma_tokenizer(max_length=1024)

    def text_encoder():
        config = Gemma3Config(
            text_config=Gemma3TextConfig(
                vocab_size=len(vocab),
                hidden_size=text_hidden,
                intermediate_size=64,
                num_hidden_layers=text_layers,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                max_position_embeddings=2048,
                sliding_window=64,
                pad_token_id=vocab["<pad>"],
                bos_token_id=vocab["<bos>"],
                eos_token_id=vocab["<eos>"],
            ),
            vision_config=SiglipVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=8,
                patch_size=2,
            ),
            mm_tokens_per_image=4,
            boi_token_index=vocab["<start_of_image>"],
            eoi_token_index=vocab["<end_of_image>"],
            image_token_index=vocab["<image_soft_token>"],
        )
        return Gemma3ForConditionalGeneration(config)

    def connectors():
        return LTX2TextConnectors(
            caption_channels=text_hidden,
            text_proj_in_factor=text_layers + 1,
            video_connector_num_attention_heads=4,
            video_connector_attention_head_dim=8,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=None,
            audio_connector_num_attention_heads=4,
            audio_connector_attention_head_dim=8,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32,
            rope_double_precision=False,  # float64 is not available on every device (MPS)
            rope_type="split",
        )

    def transformer():
        return LTX2VideoTransformer3DModel(
            in_channels=latent_channels,
            out_channels=latent_channels,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=2,
            attention_head_dim=8,
            cross_attention_dim=16,
            audio_in_channels=audio_latent_channels * (mel_bins // 4),
            audio_out_channels=audio_latent_channels * (mel_bins // 4),
            audio_num_attention_heads=2,
            audio_attention_head_dim=4,
            audio_cross_attention_dim=8,
            audio_sampling_rate=AUDIO_SAMPLE_RATE,
            audio_hop_length=AUDIO_HOP,
            num_layers=2,
            caption_channels=text_hidden,
            rope_double_precision=False,
            rope_type="split",
        )

    def vae():
        # patch 4 x 2^3 = 32x spatial, 2^3 = 8x temporal: the real models' compression.
        return AutoencoderKLLTX2Video(
            latent_channels=latent_channels,
            block_out_channels=(8, 8, 8),
            decoder_block_out_channels=(8, 8, 8),
            down_block_types=("LTX2VideoDownBlock3D",) * 3,
            layers_per_block=(1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, True),
            decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=(False, False, False, False),
            downsample_type=("spatiotemporal",) * 3,
            upsample_type=("spatiotemporal",) * 3,
            upsample_residual=(False, False, False),
            upsample_factor=(1, 1, 1),
            timestep_conditioning=False,
            patch_size=4,
            patch_size_t=1,
        )

    def audio_vae():
        return AutoencoderKLLTX2Audio(
            base_channels=4,
            output_channels=2,
            ch_mult=(1,),
            num_res_blocks=1,
            attn_resolutions=None,
            in_channels=2,
            resolution=32,
            latent_channels=audio_latent_channels,
            sample_rate=AUDIO_SAMPLE_RATE,
            mel_hop_length=AUDIO_HOP,
            mel_bins=mel_bins,
        )

    def vocoder():
        return LTX2Vocoder(
            in_channels=2 * mel_bins,
            hidden_channels=16,
            out_channels=2,
            upsample_kernel_sizes=[2 * f for f in VOCODER_UPSAMPLE],
            upsample_factors=list(VOCODER_UPSAMPLE),
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
            output_sampling_rate=AUDIO_SAMPLE_RATE,
        )

    pipe = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_seeded(vae),
        audio_vae=_seeded(audio_vae),
        text_encoder=_seeded(text_encoder),
        tokenizer=tokenizer,
        connectors=_seeded(connectors),
        transformer=_seeded(transformer),
        vocoder=_seeded(vocoder),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_ltx2_latent_upsampler() -> LTX2LatentUpsamplerModel:
    """A tiny random-weight LTX-2 latent upsampler (2x spatial), for the two-stage production path.

    Its channels match `build_ltx2_pipeline()`'s video latents (8). It is a
    separate model, as the real one is (the `latent_upsampler` folder of the
    LTX-2 repository, outside the pipeline's components), so adding it leaves
    the tiny text-to-video pipeline, and its output, unchanged.
    """
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    def upsampler():
        return LTX2LatentUpsamplerModel(
            in_channels=8,  # the tiny LTX-2 VAE's latent channels
            mid_channels=32,  # GroupNorm(32, mid_channels): the smallest width it allows
            num_blocks_per_stage=1,
            dims=3,
            spatial_upsample=True,
            temporal_upsample=False,
            rational_spatial_scale=2.0,
            use_rational_resampler=True,
        )

    return _seeded(upsampler)


def build_ltx_pipeline() -> LTXPipeline:
    """A tiny random-weight `LTXPipeline` (LTX-Video: video only). Its output is noise."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    text_hidden = 32  # the transformer's caption_channels must equal T5's d_model
    latent_channels = 8
    tokenizer = _t5_tokenizer(max_length=128)

    def text_encoder():
        return T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=text_hidden,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
            )
        )

    def transformer():
        return LTXVideoTransformer3DModel(
            in_channels=latent_channels,
            out_channels=latent_channels,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=2,
            attention_head_dim=8,
            cross_attention_dim=16,
            num_layers=1,
            caption_channels=text_hidden,
        )

    def vae():
        # patch 4 x 2^3 = 32x spatial, 2^3 = 8x temporal: LTX-Video's compression.
        return AutoencoderKLLTXVideo(
            latent_channels=latent_channels,
            block_out_channels=(8, 8, 8),
            decoder_block_out_channels=(8, 8, 8),
            down_block_types=("LTXVideoDownBlock3D",) * 3,
            layers_per_block=(1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, True),
            decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=(False, False, False, False),
            downsample_type=("conv",) * 3,
            upsample_residual=(False, False, False),
            upsample_factor=(1, 1, 1),
            timestep_conditioning=False,
            patch_size=4,
            patch_size_t=1,
        )

    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_seeded(vae),
        text_encoder=_seeded(text_encoder),
        tokenizer=tokenizer,
        transformer=_seeded(transformer),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
