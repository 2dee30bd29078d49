"""Tiny random-weight pipelines of every family (LTX-2, LTX-2.3, LTX-2.5 DFR, LTX-Video), built entirely in code,
with a tiny latent upsampler and a tiny distilled LoRA in the real LoRA file's layout.

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

Only this module and `backend.py` import torch/diffusers here.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import LTXPipeline
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    from hotfolder.config import ModelInfo

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


def build(model: ModelInfo) -> Any:
    """The tiny pipeline of `model`'s family and generation: LTX-Video, LTX-2, LTX-2.3 or LTX-2.5 (DFR)."""
    if model.family == "ltx":
        return build_ltx_pipeline()
    if model.version == "2.5":
        return build_ltx2_pipeline(version="2.5")
    return build_ltx2_pipeline(version=model.version or "2")


def build_ltx2_pipeline(version: str = "2") -> Any:
    """A tiny random-weight LTX-2 pipeline (video + audio). Its output is noise.

    `version` picks the generation's real architecture, at tiny sizes:
    - "2": `LTX2Pipeline`, Gemma 3, one shared text projection in the connectors;
    - "2.3": `LTX2Pipeline` with LTX-2.3's per-modality text projections and gated attention in the
      connectors, and its cross-attention modulation in the transformer (no caption projection);
    - "2.5": `LTX2DFRPipeline` over LTX-2.3's layout with a Gemma 4 text encoder
      (`Gemma4UnifiedForConditionalGeneration`), the keyframe-slot embedding DFR needs, a
      duration head (`LTX2DurationHead`) and a Gemma 4 prompt enhancer (`Gemma4ForConditionalGeneration`
      with a processor whose chat template the enhancer's messages go through).
    Version "2" builds exactly what it always built (the `tiny` model's cache identity).
    """
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

    later = version in ("2.3", "2.5")  # LTX-2.3's layout (LTX-2.5 keeps it)

    text_hidden = 32  # must equal the connectors' heads x head_dim (4 x 8)
    text_layers = 2
    latent_channels = 8
    audio_latent_channels = 2
    mel_bins = 8  # the audio VAE compresses mel bins 4x: 2 latent bins

    tokenizer, vocab = _gemma_tokenizer(max_length=1024)

    def text_encoder():
        if version == "2.5":
            return _gemma4_text_encoder(vocab, text_hidden, text_layers)
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
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=None,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32,
            rope_double_precision=False,  # float64 is not available on every device (MPS)
            rope_type="split",
            # LTX-2.3: per-modality projections straight to the transformer's widths (video 2 x 8, audio 2 x 4),
            # gated attention in both connectors. LTX-2: one width (4 heads x 8) for both.
            **({"video_connector_num_attention_heads": 2, "video_connector_attention_head_dim": 8,
                "audio_connector_num_attention_heads": 2, "audio_connector_attention_head_dim": 4,
                "video_gated_attn": True, "audio_gated_attn": True, "per_modality_projections": True,
                "video_hidden_dim": 16, "audio_hidden_dim": 8, "proj_bias": True} if later else
               {"video_connector_num_attention_heads": 4, "video_connector_attention_head_dim": 8,
                "audio_connector_num_attention_heads": 4, "audio_connector_attention_head_dim": 8}),
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
            **({"gated_attn": True, "cross_attn_mod": True, "audio_gated_attn": True, "audio_cross_attn_mod": True,
                "use_prompt_embeddings": False} if later else {}),
            **({"use_prompt_adaln_single": False, "use_keyframes_abs_pos_embedding": True}
               if version == "2.5" else {}),
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

    components = dict(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_seeded(vae),
        audio_vae=_seeded(audio_vae),
        text_encoder=_seeded(text_encoder),
        tokenizer=tokenizer,
        connectors=_seeded(connectors),
        transformer=_seeded(transformer),
        vocoder=_seeded(vocoder),
    )
    if version == "2.5":
        from diffusers import LTX2DFRPipeline
        from diffusers.pipelines.ltx2 import LTX2DurationHead

        processor, enhancer = _gemma4_prompt_enhancer()
        pipe = LTX2DFRPipeline(
            **components,
            processor=processor,
            prompt_enhancer=_seeded(lambda: enhancer),
            duration_head=_seeded(lambda: LTX2DurationHead(
                video_cross_attention_dim=16, audio_cross_attention_dim=8, pooler_hidden_dim=8,
                num_queries=1, num_pooler_heads=2, mlp_hidden_dim=8,
            )),
        )
    else:
        pipe = LTX2Pipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gemma4_text_encoder(vocab: dict[str, int], hidden: int, layers: int) -> Any:
    """LTX-2.5's text encoder class, `Gemma4UnifiedForConditionalGeneration`, text only, 2 layers of 32."""
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration, Gemma4UnifiedTextConfig

    text = Gemma4UnifiedTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
        sliding_window=64, layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
        pad_token_id=vocab["<pad>"], bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"],
    )  # fmt: skip
    config = Gemma4UnifiedConfig(
        text_config=text, vision_config=None, audio_config=None, image_token_id=vocab["<image_soft_token>"],
        boi_token_id=vocab["<start_of_image>"], eoi_token_id=vocab["<end_of_image>"],
    )  # fmt: skip
    return Gemma4UnifiedForConditionalGeneration(config)


# A plain chat template for the tiny enhancer's tokenizer (the real one ships Gemma's).
_CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}model: {% endif %}"
)


def _gemma4_prompt_enhancer() -> tuple[Any, Any]:
    """(processor, enhancer): a one-layer `Gemma4ForConditionalGeneration` and the processor Diffusers' `enhance_prompt`
    templates and tokenizes the system prompt and the prompt with.

    The processor is a `Gemma3Processor` (text and images): transformers' `Gemma4Processor` needs a video
    processor, which needs torchvision, not a dependency here. It is told not to return `token_type_ids`,
    which Gemma 4's `generate` does not take.
    """
    from transformers import (Gemma3ImageProcessorPil, Gemma3Processor, Gemma4Config, Gemma4ForConditionalGeneration,
                              Gemma4TextConfig, GemmaTokenizer)

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]  # fmt: skip
    vocab = {piece: i for i, piece in enumerate(specials + ["▁"] + list(_CHARS))}
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=[], model_max_length=8192, chat_template=_CHAT_TEMPLATE,
        extra_special_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                              "eoi_token": "<end_of_image>"},
    )  # fmt: skip
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 8, "width": 8}),
                                tokenizer=tokenizer, chat_template=_CHAT_TEMPLATE, image_seq_length=4)
    processor.return_mm_token_type_ids = False
    text = Gemma4TextConfig(
        vocab_size=len(tokenizer) + 4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=8192, sliding_window=64,
        layer_types=["full_attention"], vocab_size_per_layer_input=len(tokenizer) + 4, hidden_size_per_layer_input=0,
        pad_token_id=vocab["<pad>"], bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"],
    )  # fmt: skip
    config = Gemma4Config(text_config=text, vision_config=None, audio_config=None,
                          image_token_id=vocab["<image_soft_token>"], boi_token_id=vocab["<start_of_image>"],
                          eoi_token_id=vocab["<end_of_image>"])  # fmt: skip
    return processor, Gemma4ForConditionalGeneration(config)


# The distilled LoRA's layers: what `ltx-2-19b-distilled-lora-384.safetensors` adapts in every transformer block.
_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
LORA_RANK = 4


def distilled_lora_state_dict(transformer: Any) -> dict[str, Any]:
    """A tiny random "distilled LoRA" for `transformer`, keyed as the real LTX-2 LoRA files are.

    The published `ltx-2-19b-distilled-lora-384.safetensors` is in the original LTX-2 (ComfyUI) layout:
    `diffusion_model.transformer_blocks.N.attn1.to_q.lora_A.weight` ([rank, in]) and `...lora_B.weight`
    ([out, rank]) in bfloat16; Diffusers' `LTX2LoraLoaderMixin.lora_state_dict` recognises the
    `diffusion_model.` prefix and converts it (`_convert_non_diffusers_ltx2_lora_to_diffusers`).
    These weights are small (std 0.02) but not zero, so stage 2 with the adapter differs from without.
    """
    import torch

    generator = torch.Generator("cpu").manual_seed(SEED + 1)
    state: dict[str, Any] = {}
    for name, module in transformer.named_modules():
        if not name.startswith("transformer_blocks.") or not isinstance(module, torch.nn.Linear):
            continue
        if not name.endswith(_LORA_TARGETS):
            continue
        down = torch.randn(LORA_RANK, module.in_features, generator=generator) * 0.02
        up = torch.randn(module.out_features, LORA_RANK, generator=generator) * 0.02
        state[f"diffusion_model.{name}.lora_A.weight"] = down.to(torch.bfloat16)
        state[f"diffusion_model.{name}.lora_B.weight"] = up.to(torch.bfloat16)
    return state


def save_distilled_lora(transformer: Any, folder: Path, filename: str) -> Path:
    """Write the tiny distilled LoRA into `folder/filename` as a safetensors file (the real file's format)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    save_file(distilled_lora_state_dict(transformer), str(path), metadata={"format": "pt"})
    return path


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
