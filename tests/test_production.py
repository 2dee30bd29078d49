"""Two-stage production and image-to-video in the Diffusers backend, on the built-in tiny models.

The tiny models run the real Diffusers code (LTX2Pipeline, LTX2LatentUpsamplePipeline,
LTX2ImageToVideoPipeline, LTX2ConditionPipeline) with random weights: these tests show the
plumbing (stages, sizes, steps, audio length, image conditioning, shared weights, missing
weights), not the quality of a real model's output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import test_diffusers_backend as backend_tests
from PIL import Image
from test_diffusers_backend import fake_hub_cache, loaded, make_spec, no_progress

# Fixtures shared with test_diffusers_backend (bound here, so pytest finds them in this module).
ltx2 = backend_tests.ltx2
empty_hf_cache = backend_tests.empty_hf_cache

from hotfolder.backends.diffusers import backend as diffusers_ltx
from hotfolder.config import BUILTIN_MODELS, Config
from hotfolder.errors import BackendError, Interrupted, WeightsMissing


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different test images (a landscape gradient and a portrait checkerboard), made with Pillow."""
    folder = tmp_path_factory.mktemp("images")
    x = np.linspace(0, 255, 160, dtype=np.float32)
    gradient = np.stack([np.tile(x, (100, 1)), np.tile(x[::-1], (100, 1)), np.full((100, 160), 128.0)], axis=-1)
    board = ((np.indices((150, 90)).sum(axis=0) // 15) % 2 * 255).astype(np.uint8)
    paths = {"gradient": folder / "gradient.png", "board": folder / "board.jpg"}
    Image.fromarray(gradient.astype(np.uint8)).save(paths["gradient"])
    Image.fromarray(np.stack([board, 255 - board, board], axis=-1)).save(paths["board"], quality=95)
    return paths


def recorder() -> tuple[list[tuple[str, int, int]], diffusers_ltx.OnStep]:
    calls: list[tuple[str, int, int]] = []
    return calls, lambda stage, step, total: calls.append((stage, step, total))


# --- two-stage production -------------------------------------------------------------


def test_production_runs_stage1_at_half_size_then_the_upsampler_then_stage2(
    ltx2: diffusers_ltx.DiffusersBackend,
) -> None:
    calls, on_step = recorder()
    spec = make_spec(mode="production", width=128, height=96, num_frames=17, duration=17 / 24, steps=2)
    clip = ltx2.generate(spec, on_step)

    assert calls == [("stage1", 1, 2), ("stage1", 2, 2), ("stage2", 1, 3), ("stage2", 2, 3), ("stage2", 3, 3)]
    assert clip.frames.shape == (17, 96, 128, 3) and clip.frames.dtype == np.uint8
    assert clip.audio is not None and clip.sample_rate
    assert abs(clip.audio.shape[1] / clip.sample_rate - 17 / 24) <= 1 / 24
    assert abs(clip.info["audio_native_samples"] / clip.sample_rate - 17 / 24) <= 0.06

    stage1, stage2 = clip.info["stages"]
    # 96 px = 3 latents: stage 1 takes 2 (rounded up), the upsampler makes 4, cropped back to 3.
    assert (stage1["name"], stage1["width"], stage1["height"], stage1["steps"]) == ("stage1", 64, 64, 2)
    assert "cropped to 128x96" in stage1["note"]
    assert (stage2["name"], stage2["width"], stage2["height"], stage2["steps"]) == ("stage2", 128, 96, 3)
    assert stage2["sigmas"] == [0.909375, 0.725, 0.421875] and stage2["noise_scale"] == 0.909375
    assert stage1["pipeline"] == stage2["pipeline"] == "LTX2Pipeline"
    assert clip.info["upsampler"]["class"] == "LTX2LatentUpsamplerModel"
    assert clip.info["mode"] == "production" and clip.info["steps"] == 5 and clip.info["steps_requested"] == 2


def test_an_even_production_size_needs_no_crop(ltx2: diffusers_ltx.DiffusersBackend) -> None:
    clip = ltx2.generate(make_spec(mode="production", width=128, height=128), no_progress)
    stage1, stage2 = clip.info["stages"]
    assert (stage1["width"], stage1["height"], stage2["width"], stage2["height"]) == (64, 64, 128, 128)
    assert "note" not in stage1
    assert clip.frames.shape == (9, 128, 128, 3)


def test_production_is_reproducible_and_not_the_preview(ltx2: diffusers_ltx.DiffusersBackend) -> None:
    production = make_spec(mode="production", width=128, height=64)
    first = ltx2.generate(production, no_progress)
    again = ltx2.generate(production, no_progress)
    preview = ltx2.generate(make_spec(width=128, height=64), no_progress)

    assert np.array_equal(first.frames, again.frames) and np.array_equal(first.audio, again.audio)
    assert first.frames.shape == preview.frames.shape
    assert not np.array_equal(first.frames, preview.frames)


def test_the_upsampler_is_loaded_once_and_stays_resident(ltx2: diffusers_ltx.DiffusersBackend) -> None:
    ltx2.generate(make_spec(mode="production", width=128, height=64), no_progress)
    upsampler = ltx2.upsampler
    assert upsampler is not None and ltx2.upsample_pipe.vae is ltx2.pipe.vae
    ltx2.generate(make_spec(mode="production", width=128, height=64, seed=3), no_progress)
    assert ltx2.upsampler is upsampler


def test_preview_stays_one_stage(ltx2: diffusers_ltx.DiffusersBackend) -> None:
    calls, on_step = recorder()
    clip = ltx2.generate(make_spec(width=128, height=64, steps=3), on_step)
    assert {c[0] for c in calls} == {"denoise"} and len(calls) == 3
    assert clip.info["stages"] == [
        {"name": "denoise", "width": 128, "height": 64, "pipeline": "LTX2Pipeline", "steps": 3,
         "weights": "built in code (tiny tiny@builtin-1)", "adapters": []}
    ]


def test_an_interrupt_in_stage2_stops_at_once_and_the_backend_stays_usable(
    ltx2: diffusers_ltx.DiffusersBackend,
) -> None:
    calls: list[tuple[str, int]] = []

    def stop_in_stage2(stage: str, step: int, total: int) -> None:
        calls.append((stage, step))
        if stage == "stage2":
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        ltx2.generate(make_spec(mode="production", width=128, height=64), stop_in_stage2)
    assert calls == [("stage1", 1), ("stage1", 2), ("stage2", 1)]
    assert ltx2.generate(make_spec(mode="production", width=128, height=64), no_progress).frames.shape == (
        9, 64, 128, 3,
    )  # fmt: skip


@pytest.mark.slow
def test_production_at_a_real_preset_size(ltx2: diffusers_ltx.DiffusersBackend) -> None:
    # 640x352 (11 latents high: stage 1 at 320x192, upsampled to 640x384, cropped), 121 frames, 8 + 3 steps:
    # about 13 s on a busy 2-core CPU, most of it the full-size VAE decode.
    spec = make_spec(mode="production", width=640, height=352, num_frames=121, steps=8, duration=5.0)
    clip = ltx2.generate(spec, no_progress)
    assert clip.frames.shape == (121, 352, 640, 3)
    assert clip.audio is not None and clip.sample_rate
    assert abs(clip.audio.shape[1] / clip.sample_rate - 121 / 24) <= 1 / 24
    assert [(s["width"], s["height"], s["steps"]) for s in clip.info["stages"]] == [(320, 192, 8), (640, 352, 3)]


def test_the_tiny_upsampler_is_deterministic_and_doubles_width_and_height() -> None:
    import torch

    from hotfolder.backends.diffusers import tiny
    rng = torch.random.get_rng_state()
    first, second = tiny.build_ltx2_latent_upsampler(), tiny.build_ltx2_latent_upsampler()
    assert torch.equal(rng, torch.random.get_rng_state())
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not first.training
    with torch.no_grad():
        out = first(torch.randn(1, 8, 2, 3, 5))
    assert out.shape == (1, 8, 2, 6, 10)


# --- image-to-video -------------------------------------------------------------------


def test_an_image_changes_the_output_and_the_same_image_gives_the_same_frames(
    ltx2: diffusers_ltx.DiffusersBackend, images: dict[str, Path]
) -> None:
    plain = ltx2.generate(make_spec(), no_progress)
    with_image = ltx2.generate(make_spec(image=str(images["gradient"])), no_progress)
    again = ltx2.generate(make_spec(image=str(images["gradient"])), no_progress)
    other = ltx2.generate(make_spec(image=str(images["board"])), no_progress)

    assert with_image.frames.shape == plain.frames.shape == (9, 64, 64, 3)
    assert not np.array_equal(with_image.frames, plain.frames)
    assert np.array_equal(with_image.frames, again.frames)
    assert not np.array_equal(with_image.frames, other.frames)
    assert with_image.audio is not None
    assert with_image.info["pipeline"] == "LTX2ImageToVideoPipeline"
    assert with_image.info["image"] == {"strength": 1.0, "crf": BUILTIN_MODELS["tiny"].image_crf} == {
        "strength": 1.0, "crf": 33}  # LTX-2's CRF (33 through LTX-2.3; 18 from LTX-2.5)
    # 160x100 covers 64x64 by its centre 100x100 (crop box in the source's pixels), resized once.
    assert with_image.info["image_fit"] == {
        "method": "cover+centre-crop",
        "source_size": [160, 100],
        "crop_box": [30, 0, 130, 100],
        "target_size": [64, 64],
    }


def test_the_image_to_video_pipeline_shares_the_resident_weights(
    ltx2: diffusers_ltx.DiffusersBackend, images: dict[str, Path]
) -> None:
    ltx2.generate(make_spec(image=str(images["gradient"])), no_progress)
    i2v = ltx2._views[("LTX2ImageToVideoPipeline", "base")]
    assert type(i2v).__name__ == "LTX2ImageToVideoPipeline"
    assert i2v.transformer is ltx2.pipe.transformer
    for name in ("vae", "audio_vae", "text_encoder", "connectors", "vocoder", "tokenizer"):
        assert getattr(i2v, name) is getattr(ltx2.pipe, name), name
    ltx2.generate(make_spec(image=str(images["board"])), no_progress)
    assert ltx2._views[("LTX2ImageToVideoPipeline", "base")] is i2v  # built once


def test_a_strength_under_one_conditions_through_the_condition_pipeline(
    ltx2: diffusers_ltx.DiffusersBackend, images: dict[str, Path]
) -> None:
    full = ltx2.generate(make_spec(image=str(images["gradient"])), no_progress)
    half = ltx2.generate(make_spec(image=str(images["gradient"]), image_strength=0.5), no_progress)
    assert half.info["pipeline"] == "LTX2ConditionPipeline"
    assert half.info["image"]["strength"] == 0.5
    assert ltx2._views[("LTX2ConditionPipeline", "base")].transformer is ltx2.pipe.transformer
    assert not np.array_equal(full.frames, half.frames)
    assert np.array_equal(half.frames, ltx2.generate(make_spec(image=str(images["gradient"]), image_strength=0.5),
                                                     no_progress).frames)  # fmt: skip


def test_image_to_video_in_production_conditions_both_stages(
    ltx2: diffusers_ltx.DiffusersBackend, images: dict[str, Path]
) -> None:
    calls, on_step = recorder()
    spec = make_spec(mode="production", width=128, height=128, image=str(images["board"]))
    clip = ltx2.generate(spec, on_step)
    plain = ltx2.generate(make_spec(mode="production", width=128, height=128), no_progress)

    assert [c[0] for c in calls] == ["stage1", "stage1", "stage2", "stage2", "stage2"]
    assert clip.frames.shape == (9, 128, 128, 3)
    assert not np.array_equal(clip.frames, plain.frames)
    stage1, stage2 = clip.info["stages"]
    assert stage1["pipeline"] == "LTX2ImageToVideoPipeline"
    assert stage2["pipeline"] == "LTX2ConditionPipeline"  # re-encodes the image at full size over the latents
    assert stage1["image"]["fit"]["target_size"] == [64, 64]
    assert stage2["image"]["fit"]["target_size"] == [128, 128]
    assert clip.info["image_fit"]["target_size"] == [128, 128]
    assert clip.info["image_fit"]["source_size"] == [90, 150]
    assert ltx2._views[("LTX2ConditionPipeline", "stage2")].transformer is ltx2.pipe.transformer


def test_an_unreadable_image_is_a_backend_error_naming_it(ltx2: diffusers_ltx.DiffusersBackend, tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is text")
    calls, on_step = recorder()
    with pytest.raises(BackendError, match="not-an-image.png"):
        ltx2.generate(make_spec(image=str(bad)), on_step)
    assert calls == []


def test_fit_image_covers_and_centre_crops() -> None:
    from hotfolder.media import fit_image

    assert diffusers_ltx.fit_image is fit_image  # one rule for both backends (media.fit)
    landscape = Image.new("RGB", (400, 200))
    fitted, fit = fit_image(landscape, 96, 160)  # into a portrait frame: the centre 120x200 columns
    assert fitted.size == (96, 160)
    assert fit["source_size"] == [400, 200] and fit["crop_box"] == [140, 0, 260, 200]

    exact, fit = fit_image(Image.new("RGB", (64, 32)), 128, 64)  # same aspect: scaled, no crop
    assert exact.size == (128, 64) and fit["crop_box"] == [0, 0, 64, 32]

    # The centre survives the crop: a red stripe in the middle of a wide image stays in the frame.
    wide = np.zeros((100, 300, 3), dtype=np.uint8)
    wide[:, 140:160] = (255, 0, 0)
    fitted, _ = fit_image(Image.fromarray(wide), 64, 64)
    centre = np.asarray(fitted)[:, 28:36]
    assert centre[..., 0].mean() > 200 and centre[..., 1].mean() < 30


def test_compress_like_training_is_lossy_deterministic_and_keeps_the_size() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    first = diffusers_ltx.compress_like_training(image, 33)
    assert first.size == (96, 64) and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(diffusers_ltx.compress_like_training(image, 33)))
    assert not np.array_equal(np.asarray(first), np.asarray(image))


# --- LTX-Video -----------------------------------------------------------------------


def test_ltx_video_image_to_video_and_its_one_stage_production(tmp_path: Path, images: dict[str, Path]) -> None:
    backend = loaded("tiny-ltx-video", tmp_path)
    try:
        plain = backend.generate(make_spec(model="tiny-ltx-video"), no_progress)
        clip = backend.generate(make_spec(model="tiny-ltx-video", image=str(images["gradient"])), no_progress)
        weak = backend.generate(
            make_spec(model="tiny-ltx-video", image=str(images["gradient"]), image_strength=0.4), no_progress
        )
        assert clip.info["pipeline"] == "LTXImageToVideoPipeline" and weak.info["pipeline"] == "LTXConditionPipeline"
        assert not np.array_equal(plain.frames, clip.frames) and not np.array_equal(clip.frames, weak.frames)
        assert backend._views[("LTXImageToVideoPipeline", "base")].transformer is backend.pipe.transformer

        calls, on_step = recorder()
        production = backend.generate(make_spec(model="tiny-ltx-video", mode="production"), on_step)
        assert {c[0] for c in calls} == {"denoise"}
        (stage,) = production.info["stages"]
        assert (stage["width"], stage["height"]) == (64, 64) and "one stage" in stage["note"]
        assert backend.upsampler is None
    finally:
        backend.close()


# --- real weights without their upsampler -----------------------------------------------


@pytest.fixture(scope="module")
def saved_tiny(ltx2: diffusers_ltx.DiffusersBackend, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hotfolder.backends.diffusers import tiny

    folder = tmp_path_factory.mktemp("saved") / "tiny-ltx2"
    # Built afresh: the resident one may carry the stage-2 LoRA's peft layers (production loads it once, keeps it).
    tiny.build_ltx2_pipeline().save_pretrained(folder)
    return folder


def test_missing_upsampler_weights_are_weights_missing_at_once_and_preview_still_works(
    ltx2: diffusers_ltx.DiffusersBackend, saved_tiny: Path, empty_hf_cache: Path, tmp_path: Path  # noqa: F811
) -> None:
    from hotfolder.backends.diffusers import tiny
    model = dataclasses.replace(BUILTIN_MODELS["ltx-2"], guidance=1.0)  # run as the tiny model does
    snapshot = fake_hub_cache(empty_hf_cache / "hub", "Lightricks/LTX-2", saved_tiny)
    backend = diffusers_ltx.create(model, Config(root=tmp_path))
    backend.load()
    try:
        calls, on_step = recorder()
        with pytest.raises(WeightsMissing) as caught:
            backend.generate(make_spec(mode="production", width=128, height=64, model="ltx-2"), on_step)
        assert calls == [] and backend.upsampler is None  # at once: before a single denoising step
        assert "latent_upsampler" in str(caught.value) and "Lightricks/LTX-2" in str(caught.value)
        assert "hotfolder models pull ltx-2" in (caught.value.hint or "")
        assert 'mode = "preview"' in (caught.value.hint or "")
        assert backend.generate(make_spec(model="ltx-2"), no_progress).frames.shape == (9, 64, 64, 3)

        # With the upsampler's folder in the snapshot, production still needs the distilled LoRA for
        # stage 2 (ltx-2 is not distilled): WeightsMissing at once, naming the file and the pull command.
        tiny.build_ltx2_latent_upsampler().save_pretrained(snapshot / diffusers_ltx.UPSAMPLER_SUBFOLDER)
        with pytest.raises(WeightsMissing) as caught:
            backend.generate(make_spec(mode="production", width=128, height=64, model="ltx-2"), on_step)
        assert calls == [] and "ltx-2-19b-distilled-lora-384.safetensors" in str(caught.value)
        assert "hotfolder models pull ltx-2" in (caught.value.hint or "")

        # With the LoRA file there too (the tiny one, in the real file's layout, under the real name), production
        # loads both and makes what the tiny model makes (to the last bit of float32: a loaded copy of the
        # tiny pipeline already differs from the built one by 1/255 in a few pixels at 128x64,
        # in preview as well).
        tiny.save_distilled_lora(backend.pipe.transformer, snapshot, "ltx-2-19b-distilled-lora-384.safetensors")
        spec = make_spec(mode="production", width=128, height=64)
        clip = backend.generate(dataclasses.replace(spec, model="ltx-2"), no_progress)
        assert clip.info["upsampler"]["source"].endswith(diffusers_ltx.UPSAMPLER_SUBFOLDER)
        assert [s["name"] for s in clip.info["stages"]] == ["stage1", "stage2"]
        assert clip.info["stages"][1]["adapters"][0]["source"] == (
            "Lightricks/LTX-2/ltx-2-19b-distilled-lora-384.safetensors")
        assert clip.info["stages"][1]["adapters"][0]["file"].startswith(str(empty_hf_cache))
        assert np.abs(clip.frames.astype(np.int16) - ltx2.generate(spec, no_progress).frames).max() <= 1
    finally:
        backend.close()
    assert backend.upsampler is None and backend.pipe is None


def test_a_local_folder_without_an_upsampler_says_what_to_add(saved_tiny: Path, tmp_path: Path) -> None:
    config = Config(root=tmp_path)
    model = config.model_info(str(saved_tiny))
    assert model is not None and model.local_path
    backend = diffusers_ltx.create(dataclasses.replace(model, guidance=1.0), config)
    backend.load()
    try:
        with pytest.raises(WeightsMissing) as caught:
            backend.generate(make_spec(mode="production", width=128, height=64), no_progress)
        assert str(saved_tiny) in str(caught.value)
        assert "latent_upsampler/" in (caught.value.hint or "") and 'mode = "preview"' in (caught.value.hint or "")
    finally:
        backend.close()
