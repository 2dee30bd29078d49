"""Issue 13: the model families (LTX-2, LTX-2 distilled, LTX-2.3, LTX-2.5), each run the way its makers document.

- The model table: one entry per model with its documented defaults, settable in [models.NAME].
- Jobs naming a feature their model lacks are refused by `validate` (and `submit`: the same parse), with the
  model named and the reason.
- The backend on every tiny family (the real pipeline classes, random weights): preview and production, the
  stage-2 distilled LoRA loaded once through peft and enabled for stage 2 only, `duration = "auto"` (the
  duration head) and `enhance_prompt` (the prompt enhancer) on LTX-2.5.
- The real daemon on every tiny family (slow): metadata listing each stage's pipeline, weights and adapters;
  a preview after a production job equals a preview on a fresh daemon.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import Root, make_spec
from hotfolder.config import BUILTIN_MODELS, DISTILLED_STEPS, MODEL_KEYS, Config, ModelInfo, load_config
from hotfolder.job import spec as spec_module

TINY_FAMILIES = ("tiny", "tiny-distilled", "tiny-2.3", "tiny-2.5")


def no_progress(stage: str, step: int, total: int) -> None:
    pass


# --- the model table ----------------------------------------------------------------------


def test_the_table_holds_every_family_with_its_documented_defaults() -> None:
    m = BUILTIN_MODELS
    assert {"ltx-2", "ltx-2-distilled", "ltx-2.3", "ltx-2.3-distilled", "ltx-2.3-q4", "ltx-2.5", "ltx-video",
            *TINY_FAMILIES, "tiny-ltx-video"} <= set(m)
    # LTX-2: the Diffusers two-stage recipe (guidance 4, the distilled LoRA for stage 2), STG block 29.
    assert (m["ltx-2"].diffusers_repo, m["ltx-2"].guidance, m["ltx-2"].stg_block) == ("Lightricks/LTX-2", 4.0, 29)
    assert (m["ltx-2"].stage2_lora_repo, m["ltx-2"].stage2_lora) == (
        "Lightricks/LTX-2", "ltx-2-19b-distilled-lora-384.safetensors")
    # LTX-2.3: 3.0 video / 7.0 audio, STG 1.0 at block 28, modality 3.0 (LTX2Pipeline.__call__'s docstring).
    v23 = m["ltx-2.3"]
    assert (v23.version, v23.guidance, v23.audio_guidance, v23.stg_scale, v23.stg_block, v23.modality_scale) == (
        "2.3", 3.0, 7.0, 1.0, 28, 3.0)
    # Distilled: 8 fixed steps, no guidance, no LoRA (whatever the mode).
    for name in ("ltx-2-distilled", "ltx-2.3-distilled", "ltx-2.3-q4", "ltx-2.5", "tiny-distilled", "tiny-2.5"):
        assert m[name].distilled and m[name].guidance == 1.0, name
        assert m[name].steps("preview") == m[name].steps("production") == DISTILLED_STEPS == 8, name
    # LTX-2.5: the DFR pipeline, CRF 18, a duration head and a prompt enhancer; everything before it: CRF 33.
    v25 = m["ltx-2.5"]
    assert (v25.diffusers_repo, v25.pipeline_class, v25.image_crf) == (
        "Lightricks/LTX-2.5-Diffusers", "LTX2DFRPipeline", 18)
    assert v25.duration_head and v25.prompt_enhancer
    assert all(m[n].image_crf == 33 for n in ("ltx-2", "ltx-2.3", "ltx-2-distilled", "tiny", "tiny-2.3"))
    assert m["ltx-2"].steps("preview") == 10 and m["ltx-2"].steps("production") == 30
    # The MLX checkpoints mlx-video-with-audio 0.1.37 runs: the unified LTX-2 and the LTX-2.3 distilled q4.
    assert m["ltx-2"].mlx_repo == "notapalindrome/ltx2-mlx-av"
    assert m["ltx-2.3-q4"].mlx_repo == "dgrauet/ltx-2.3-mlx-distilled-q4"
    assert Config(root=Path("/tmp")).model == "ltx-2"  # the default model is unchanged
    # Every new field can be set in [models.NAME].
    fields = {f.name for f in dataclasses.fields(ModelInfo)} - {"name"}
    assert fields == set(MODEL_KEYS)


def test_model_settings_in_the_config_file_are_checked_and_applied(tmp_path: Path) -> None:
    from hotfolder.errors import UsageError

    good = tmp_path / "good.toml"
    good.write_text('[models.my-ltx]\ndiffusers_repo = "me/my-ltx"\nversion = "2.3"\ndistilled = true\n'
                    'image_crf = 18\naudio_guidance = 6.5\nstg_block = 28\nsteps_preview = 12\n'
                    '[models.ltx-2]\nsteps_production = 40\n')
    config = load_config(good, root=tmp_path)
    mine = config.models["my-ltx"]
    assert (mine.version, mine.distilled, mine.image_crf, mine.audio_guidance, mine.stg_block) == (
        "2.3", True, 18, 6.5, 28)
    assert config.models["ltx-2"].steps("production") == 40  # the documented 30, changed by the file
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.ltx-2]\nimage_crf = 70\nversion = "3"\npipeline = "LTX3Pipeline"\nstg_block = -1\n')
    with pytest.raises(UsageError) as caught:
        load_config(bad, root=tmp_path)
    text = str(caught.value)
    assert "models.ltx-2.image_crf = 70" in text and "from 0 (no re-compression) to 51" in text
    assert 'models.ltx-2.version = "3"' in text and '"2.3"' in text
    assert "LTX2DFRPipeline" in text and "models.ltx-2.stg_block = -1" in text


# --- the job keys, and what each model refuses --------------------------------------------


def _job(tmp_path: Path, text: str, config: Config | None = None) -> spec_module.JobSpec:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return spec_module.parse(path, config or Config(root=tmp_path))[0]


def _refused(tmp_path: Path, text: str) -> str:
    from hotfolder.errors import JobInvalid

    with pytest.raises(JobInvalid) as caught:
        _job(tmp_path, text)
    return str(caught.value)


def test_each_model_gets_its_own_steps_and_ltx25_its_job_keys(tmp_path: Path) -> None:
    assert _job(tmp_path, 'prompt = "x"\nmodel = "tiny-distilled"\n').steps == 8
    assert _job(tmp_path, 'prompt = "x"\nmodel = "tiny-distilled"\nmode = "production"\n').steps == 8
    assert _job(tmp_path, 'prompt = "x"\nmodel = "tiny"\nmode = "production"\n').steps == 30
    assert _job(tmp_path, 'prompt = "x"\nmodel = "tiny"\nsteps = 4\n').steps == 4  # a job still overrides

    auto = _job(tmp_path, 'prompt = "x"\nmodel = "tiny-2.5"\nduration = "auto"\nenhance_prompt = true\n')
    assert auto.duration_auto and auto.enhance_prompt
    assert (auto.duration, auto.num_frames) == (0.0, 0)  # known once the duration head has chosen
    assert any('duration "auto"' in a and "tiny-2.5" in a for a in auto.adjustments)
    plain = _job(tmp_path, 'prompt = "x"\nmodel = "tiny-2.5"\n')
    assert not plain.duration_auto and not plain.enhance_prompt and plain.num_frames == 121


@pytest.mark.parametrize("text, model, words", [
    ('steps = 20\nmodel = "tiny-distilled"', "tiny-distilled", "distilled and runs a fixed schedule of 8 steps"),
    ('steps = 20\nmodel = "ltx-2.5"', "ltx-2.5", "fixed schedule"),
    ('duration = "auto"\nmodel = "tiny"', "tiny", "no duration head"),
    ('duration = "auto"\nmodel = "ltx-2.3"', "ltx-2.3", "no duration head"),
    ('enhance_prompt = true\nmodel = "ltx-2"', "ltx-2", "no prompt enhancer"),
    ('model = "ltx-video"\n[audio]\ngenerate = true', "ltx-video", "makes no sound"),
], ids=["steps-distilled", "steps-ltx25", "auto-tiny", "auto-ltx23", "enhance-ltx2", "audio-ltxv"])
def test_a_feature_the_model_lacks_is_refused_with_the_model_and_the_reason(
    tmp_path: Path, text: str, model: str, words: str
) -> None:
    message = _refused(tmp_path, f'prompt = "x"\n{text}\n')
    assert f"cannot be used with model '{model}'" in message and words in message, message


def test_an_image_on_a_model_without_image_to_video_is_refused(tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text('[models.text-only]\ndiffusers_repo = "me/text-only"\nimage_to_video = false\n')
    config = load_config(config_file, root=tmp_path)
    from hotfolder.errors import JobInvalid

    with pytest.raises(JobInvalid) as caught:
        _job(tmp_path, 'prompt = "x"\nmodel = "text-only"\n[image]\nfile = "first.png"\n', config)
    assert "image.file = \"first.png\" cannot be used with model 'text-only'" in str(caught.value)
    assert "no image-to-video path" in str(caught.value)


def test_validate_refuses_a_feature_the_model_lacks_naming_the_model(root: Root, tmp_path: Path) -> None:
    """The real CLI (`validate` and `submit` share the parse): exit 2, the key, the model and why."""
    auto = tmp_path / "auto.toml"
    auto.write_text('prompt = "a fox"\nmodel = "tiny"\nduration = "auto"\n')
    steps = tmp_path / "fast.toml"
    steps.write_text('prompt = "a fox"\nmodel = "tiny-distilled"\nsteps = 30\n')
    good = tmp_path / "good.toml"
    good.write_text('prompt = "a fox"\nmodel = "tiny-2.5"\nduration = "auto"\nenhance_prompt = true\n')
    out = root.cli("validate", str(auto), str(steps), str(good))
    assert out.returncode == 2, out
    text = out.stdout + out.stderr
    assert "duration = \"auto\" cannot be used with model 'tiny': it has no duration head" in text, text
    assert "steps = 30 cannot be used with model 'tiny-distilled': it is distilled" in text, text
    assert root.cli("validate", str(good)).returncode == 0
    sub = root.cli("submit", "a fox", "--model", "tiny-distilled", "--steps", "12")
    assert sub.returncode == 2 and "cannot be used with model 'tiny-distilled'" in sub.stderr, sub.stderr
    assert list(root.inbox.glob("*.toml")) == []  # nothing was submitted


def test_the_cache_key_holds_auto_the_enhancer_and_the_run_settings(tmp_path: Path) -> None:
    from hotfolder.cache.key import KEY_SCHEMA, cache_key

    assert KEY_SCHEMA >= 4
    model = BUILTIN_MODELS["tiny-2.5"]
    base = make_spec(model="tiny-2.5", steps=8)
    key = cache_key(base, model, model_identity="tiny-2.5@builtin-1")
    enhanced = cache_key(dataclasses.replace(base, enhance_prompt=True), model, model_identity="tiny-2.5@builtin-1")
    other_enhancer = cache_key(dataclasses.replace(base, enhance_prompt=True),
                               dataclasses.replace(model, prompt_enhancer="another"),
                               model_identity="tiny-2.5@builtin-1")
    auto = cache_key(dataclasses.replace(base, duration_auto=True, num_frames=0, duration=0.0), model,
                     model_identity="tiny-2.5@builtin-1")
    assert len({key, enhanced, other_enhancer, auto}) == 4
    # The prompt as written is the key's prompt: the same enhanced job keys the same.
    assert enhanced == cache_key(dataclasses.replace(base, enhance_prompt=True), model,
                                 model_identity="tiny-2.5@builtin-1")
    ltx2 = BUILTIN_MODELS["ltx-2"]
    assert cache_key(base, ltx2, model_identity="x") != cache_key(
        base, dataclasses.replace(ltx2, audio_guidance=5.0), model_identity="x")


# --- the backend on each tiny family ------------------------------------------------------------


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    from hotfolder.backends.diffusers import backend as diffusers_ltx

    made: dict[str, object] = {}
    root = tmp_path_factory.mktemp("root")
    for name in TINY_FAMILIES:
        backend = diffusers_ltx.create(BUILTIN_MODELS[name], Config(root=root))
        backend.load()
        made[name] = backend
    yield made
    for backend in made.values():
        backend.close()  # type: ignore[attr-defined]


def _spec(name: str, **changes: object) -> spec_module.JobSpec:
    model = BUILTIN_MODELS[name]
    mode = str(changes.get("mode", "preview"))
    return make_spec(model=name, steps=2 if not model.distilled else model.steps(mode), width=128, height=64,
                     **changes)


def test_each_tiny_family_is_built_from_its_real_classes(backends: dict[str, object]) -> None:
    pipes = {name: backends[name].pipe for name in TINY_FAMILIES}  # type: ignore[attr-defined]
    assert type(pipes["tiny"]).__name__ == type(pipes["tiny-2.3"]).__name__ == "LTX2Pipeline"
    assert pipes["tiny-2.3"].connectors.config.per_modality_projections  # LTX-2.3's connectors
    assert not pipes["tiny"].connectors.config.per_modality_projections
    v25 = pipes["tiny-2.5"]
    assert type(v25).__name__ == "LTX2DFRPipeline"
    assert type(v25.text_encoder).__name__ == "Gemma4UnifiedForConditionalGeneration"
    assert type(v25.prompt_enhancer).__name__ == "Gemma4ForConditionalGeneration"
    assert type(v25.duration_head).__name__ == "LTX2DurationHead"
    assert v25.transformer.config.use_keyframes_abs_pos_embedding
    for name, pipe in pipes.items():  # really tiny: well under a million parameters each
        assert sum(p.numel() for p in pipe.transformer.parameters()) < 100_000, name


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_preview_then_production_then_preview_on_each_family(backends: dict[str, object], name: str) -> None:
    from hotfolder.backends.diffusers import backend as diffusers_ltx

    backend = backends[name]
    model = BUILTIN_MODELS[name]
    before = backend.generate(_spec(name), no_progress)  # type: ignore[attr-defined]
    production = backend.generate(_spec(name, mode="production"), no_progress)  # type: ignore[attr-defined]
    after = backend.generate(_spec(name), no_progress)  # type: ignore[attr-defined]

    (denoise,) = before.info["stages"]
    assert denoise["pipeline"] == model.pipeline_class and denoise["adapters"] == []
    assert denoise["weights"] == f"built in code (tiny {name}@{model.revision})"
    assert denoise["steps"] == (8 if model.distilled else 2)
    stage1, stage2 = production.info["stages"]
    assert stage1["adapters"] == [] and stage1["pipeline"] == stage2["pipeline"] == model.pipeline_class
    assert stage2["steps"] == 3 and stage2["sigmas"] == [0.909375, 0.725, 0.421875] and stage2["guidance"] == 1.0
    if model.distilled:  # distilled weights need no LoRA
        assert stage2["adapters"] == [] and "no LoRA" in stage2["note"]
    else:
        (adapter,) = stage2["adapters"]
        assert adapter["name"] == diffusers_ltx.STAGE2_ADAPTER and adapter["scale"] == 1.0
        assert adapter["file"] == model.stage2_lora and "built in code" in adapter["source"]
    assert production.frames.shape == (9, 64, 128, 3)
    # The adapter is off again: the next preview runs the base weights.
    assert np.array_equal(before.frames, after.frames) and np.array_equal(before.audio, after.audio)


@pytest.mark.parametrize("name", ["tiny", "tiny-2.3"])
def test_the_lora_is_loaded_once_kept_and_changes_stage2_only(
    backends: dict[str, object], name: str, tmp_path: Path
) -> None:
    from hotfolder.backends.diffusers import backend as diffusers_ltx

    backend = backends[name]
    first = backend.generate(_spec(name, mode="production"), no_progress)  # type: ignore[attr-defined]
    lora = backend._lora  # type: ignore[attr-defined]
    assert lora is not None
    assert diffusers_ltx.STAGE2_ADAPTER in backend.pipe.get_list_adapters()["transformer"]  # type: ignore[attr-defined]
    again = backend.generate(_spec(name, mode="production"), no_progress)  # type: ignore[attr-defined]
    assert backend._lora is lora and np.array_equal(first.frames, again.frames)  # type: ignore[attr-defined]

    # The same weights without the LoRA make another stage 2 (and a fresh backend's preview is the same).
    plain = diffusers_ltx.create(dataclasses.replace(BUILTIN_MODELS[name], stage2_lora=None), Config(root=tmp_path))
    plain.load()
    try:
        without = plain.generate(_spec(name, mode="production"), no_progress)
        assert without.info["stages"][1]["adapters"] == [] and "no stage-2 LoRA" in without.info["stages"][1]["note"]
        assert not np.array_equal(first.frames, without.frames)
        fresh_preview = plain.generate(_spec(name), no_progress)
        assert np.abs(fresh_preview.frames.astype(np.int16)
                      - backend.generate(_spec(name), no_progress).frames).max() <= 1  # type: ignore[attr-defined]
    finally:
        plain.close()


def test_the_tiny_lora_file_has_the_published_layout(backends: dict[str, object], tmp_path: Path) -> None:
    """`diffusion_model.<module>.lora_A.weight` [rank, in] and `lora_B.weight` [out, rank], bfloat16: the layout of
    ltx-2-19b-distilled-lora-384.safetensors, which Diffusers' LTX-2 LoRA loader converts."""
    import torch
    from safetensors import safe_open

    from hotfolder.backends.diffusers import tiny

    transformer = backends["tiny"].pipe.transformer  # type: ignore[attr-defined]
    path = tiny.save_distilled_lora(tiny.build_ltx2_pipeline().transformer, tmp_path, "lora.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        a = f.get_tensor("diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight")
        b = f.get_tensor("diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight")
    assert keys and all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert a.dtype == b.dtype == torch.bfloat16 and a.shape[0] == b.shape[1] == tiny.LORA_RANK
    assert transformer is not None


def test_ltx25_chooses_its_duration_and_enhances_its_prompt(backends: dict[str, object]) -> None:
    backend = backends["tiny-2.5"]
    steps: list[tuple[str, int, int]] = []
    spec = _spec("tiny-2.5", duration_auto=True, num_frames=0, duration=0.0, enhance_prompt=True)
    clip = backend.generate(spec, lambda stage, step, total: steps.append((stage, step, total)))  # type: ignore
    chosen = clip.info["duration"]
    assert chosen["auto"] and chosen["chosen_by"] == "duration head"
    frames = chosen["num_frames"]
    assert (frames - 1) % 8 == 0 and 1.0 <= frames / 24 <= 20.0 + 1 / 3
    assert clip.frames.shape == (frames, 64, 128, 3) and clip.info["num_frames"] == frames
    assert clip.audio is not None and clip.audio.shape[1] == round(frames / 24 * clip.sample_rate)
    enhancement = clip.info["prompt_enhancement"]
    assert enhancement["prompt"] == spec.prompt and enhancement["enhanced_prompt"]
    assert enhancement["system_prompt"] == "LTX2_5_T2V_DEFAULT_SYSTEM_PROMPT"
    assert enhancement["class"] == "Gemma4ForConditionalGeneration"
    assert [s for s in steps if s[0] == "denoise"][-1] == ("denoise", 8, 8)
    assert steps[0][0] == "denoise"  # the enhancer and the duration head run before, and report no steps

    again = backend.generate(spec, no_progress)  # type: ignore[attr-defined]
    assert again.info["prompt_enhancement"] == enhancement and np.array_equal(again.frames, clip.frames)
    # In production the duration head decides once, before stage 1, and both stages use it.
    production = backend.generate(dataclasses.replace(spec, mode="production", enhance_prompt=False),  # type: ignore
                                  no_progress)
    assert production.frames.shape[0] == production.info["duration"]["num_frames"]


def test_ltx25_image_to_video_conditions_dfr_with_its_own_crf(backends: dict[str, object], tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "first.png"
    Image.fromarray((np.random.default_rng(0).random((80, 120, 3)) * 255).astype(np.uint8)).save(image)
    backend = backends["tiny-2.5"]
    plain = backend.generate(_spec("tiny-2.5"), no_progress)  # type: ignore[attr-defined]
    for mode in ("preview", "production"):
        clip = backend.generate(_spec("tiny-2.5", mode=mode, image=str(image)), no_progress)  # type: ignore
        assert clip.info["image"] == {"strength": 1.0, "crf": 18}  # LTX-2.5 was trained on CRF 18
        assert {s["pipeline"] for s in clip.info["stages"]} == {"LTX2DFRPipeline"}
        if mode == "preview":
            assert not np.array_equal(clip.frames, plain.frames)
    enhanced = backend.generate(_spec("tiny-2.5", image=str(image), enhance_prompt=True), no_progress)  # type: ignore
    assert enhanced.info["prompt_enhancement"]["system_prompt"] == "LTX2_5_I2V_DEFAULT_SYSTEM_PROMPT"


# --- the real daemon on every tiny family (slow) ----------------------------------------------


def _frames(mp4: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


def _drop_all(root: Root, jobs: dict[str, str]) -> None:
    for name, text in jobs.items():
        tmp = root.inbox / f".{name}.tmp"
        tmp.write_text(text)
        tmp.rename(root.inbox / name)


COMMON = 'prompt = "A red fox in fresh snow"\nwidth = 128\nheight = 64\nduration = 0.375\nfps = 24\nseed = 5\n' \
         'cache = false\n[output]\ngif = false\nthumbnail = false\n'


@pytest.mark.slow
def test_the_daemon_runs_every_family_and_a_preview_after_production_runs_the_base_weights(root: Root) -> None:
    """One daemon: per family a production job then a preview (priorities keep each pair together on one
    resident backend), and LTX-2.5's duration = "auto" with enhance_prompt. A second daemon (a fresh process)
    makes the same previews: equal to the ones made after production (within 1/255, across processes)."""
    jobs: dict[str, str] = {}
    for i, name in enumerate(TINY_FAMILIES):
        priority = 100 - 10 * i
        jobs[f"{name}-production.toml"] = f'model = "{name}"\nmode = "production"\npriority = {priority}\n' + COMMON
        jobs[f"{name}-after.toml"] = f'model = "{name}"\npriority = {priority - 1}\n' + COMMON
    jobs["auto.toml"] = ('model = "tiny-2.5"\npriority = -1\nenhance_prompt = true\n'
                         + COMMON.replace("duration = 0.375", 'duration = "auto"'))
    _drop_all(root, jobs)
    run = root.cli("run", "--once", "--backend", "diffusers", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert root.failures() == [], [json.loads((f / "error.json").read_text()) for f in root.failures()]
    results = {root.metadata(r)["outputs"]["video"]: (r, root.metadata(r)) for r in root.results()}
    assert len(results) == len(jobs)

    for name in TINY_FAMILIES:
        model = BUILTIN_MODELS[name]
        result, meta = results[f"{name}-production.mp4"]
        stages = meta["backend_info"]["stages"]
        assert [s["name"] for s in stages] == ["stage1", "stage2"], name
        assert all(s["pipeline"] == model.pipeline_class and s["weights"].startswith("built in code") for s in stages)
        assert stages[0]["adapters"] == []
        if model.distilled:
            assert stages[1]["adapters"] == [], name
        else:
            assert [a["name"] for a in stages[1]["adapters"]] == ["stage2-distilled"], name
            assert stages[1]["adapters"][0]["scale"] == 1.0 and stages[1]["adapters"][0]["source"]
        preview = results[f"{name}-after.mp4"][1]["backend_info"]["stages"]
        assert len(preview) == 1 and preview[0]["adapters"] == []

    auto_result, auto_meta = results["auto.mp4"]
    chosen = auto_meta["backend_info"]["duration"]
    assert chosen["auto"] and _frames(auto_result / "auto.mp4").shape[0] == chosen["num_frames"]
    # What the model chose is what the result says at its top level too (the gallery and people read these).
    assert auto_meta["num_frames"] == chosen["num_frames"] > 0
    assert auto_meta["duration"] == pytest.approx(chosen["num_frames"] / auto_meta["fps"], abs=1e-3)
    enhancement = auto_meta["backend_info"]["prompt_enhancement"]
    assert auto_meta["prompt"] == enhancement["prompt"] == "A red fox in fresh snow" and enhancement["enhanced_prompt"]

    # A fresh daemon makes the same previews.
    for name in TINY_FAMILIES:
        (root.inbox / f"{name}-fresh.toml").write_text(f'model = "{name}"\n' + COMMON)
    run = root.cli("run", "--once", "--backend", "diffusers", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    fresh = {root.metadata(r)["outputs"]["video"]: r for r in root.results()}
    for name in TINY_FAMILIES:
        after = _frames(results[f"{name}-after.mp4"][0] / f"{name}-after.mp4").astype(np.int16)
        again = _frames(fresh[f"{name}-fresh.mp4"] / f"{name}-fresh.mp4").astype(np.int16)
        assert after.shape == again.shape == (9, 64, 128, 3), name
        assert np.abs(after - again).max() <= 1, name
