"""Job files as people write them: what they resolve to, and the messages a mistake gets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hotfolder.config import JOB_DEFAULTS, Config
from hotfolder.errors import JobInvalid, Problem
from hotfolder.job.spec import JobSpec, parse, safe_name

# --- helpers ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def this_machine_is_injected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`backend = "auto"` depends on the machine (Apple Silicon with MLX, and the weights in the Hugging Face
    cache): every test here gets a Linux machine with an empty cache, so it means the same everywhere. Tests of
    the choice itself set the platform and the weights."""
    import huggingface_hub.constants as hf

    from hotfolder.backends import choose

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(choose, "is_apple_silicon", lambda: False)
    return cache


def weights_in_cache(cache: Path, repo: str, revision: str | None = None) -> None:
    """A complete download of `repo` in the Hugging Face cache layout (one small file)."""
    from hotfolder import weights

    commit = revision if revision and len(revision) == 40 else "0" * 40
    folder = weights.repo_folder(repo, cache)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / (revision or "main")).write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / commit / "config.json").write_text("{}")


def config(tmp_path: Path, **kwargs) -> Config:
    return Config(root=tmp_path, **kwargs)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def job(tmp_path: Path, content: str, name: str = "job.toml", cfg: Config | None = None, **kwargs) -> JobSpec:
    """The one JobSpec of a file that must be valid."""
    specs = parse(write(tmp_path, name, content), cfg or config(tmp_path), **kwargs)
    assert len(specs) == 1
    return specs[0]


def problems(tmp_path: Path, content: str | bytes, name: str = "job.toml", cfg: Config | None = None, **kwargs):
    """The problems of a file that must be invalid."""
    with pytest.raises(JobInvalid) as info:
        parse(write(tmp_path, name, content), cfg or config(tmp_path), **kwargs)
    assert info.value.problems
    return info.value.problems


def messages(tmp_path: Path, content: str | bytes, **kwargs) -> str:
    """All problem messages of an invalid file, one per line."""
    return "\n".join(p.message for p in problems(tmp_path, content, **kwargs))


def only(tmp_path: Path, content: str | bytes, **kwargs) -> Problem:
    found = problems(tmp_path, content, **kwargs)
    assert len(found) == 1, [p.message for p in found]
    return found[0]


# --- happy paths -----------------------------------------------------------------


def test_txt_is_the_whole_prompt_with_defaults(tmp_path):
    spec = job(tmp_path, "\n  A fox runs through snow.\n\nSlow motion.  \n", name="fox.txt")
    assert spec.prompt == "A fox runs through snow.\n\nSlow motion."
    assert (spec.format, spec.mode, spec.width, spec.height) == ("linkedin", "preview", 640, 352)
    assert (spec.duration, spec.fps, spec.num_frames, spec.steps) == (5.0, 24.0, 121, 10)
    assert (spec.seed, spec.seed_random, spec.priority, spec.cache) == (42, False, 0, "use")
    assert (spec.backend, spec.model, spec.generate_audio, spec.gif, spec.thumbnail) == (
        "diffusers", "ltx-2", True, True, True
    )  # fmt: skip
    assert (spec.name, spec.source, spec.index, spec.preset, spec.negative_prompt) == ("fox", "fox.txt", 0, None, "")
    assert spec.adjustments == (
        "height 360 -> 352 (diffusers needs multiples of 32)",
        "num_frames 120 -> 121 (frames must be 8k+1)",
    )


def test_full_toml_job(tmp_path):
    spec = job(
        tmp_path,
        """
prompt = "A wide aerial shot of a mountain lake"
negative_prompt = "blurry"
format = "tiktok"
mode = "production"
duration = 2.0
fps = 30
seed = 7
steps = 12
priority = 3
cache = "refresh"
backend = "diffusers"
model = "tiny"

[audio]
generate = false

[output]
name = "lake-teaser"
gif = false
thumbnail = true
""",
    )
    assert spec.prompt == "A wide aerial shot of a mountain lake"
    assert spec.negative_prompt == "blurry"
    assert (spec.width, spec.height) == (736, 1280)
    assert (spec.duration, spec.fps, spec.num_frames) == (2.0, 30.0, 57)
    assert (spec.seed, spec.steps, spec.priority, spec.cache) == (7, 12, 3, "refresh")
    assert (spec.backend, spec.model, spec.generate_audio) == ("diffusers", "tiny", False)
    assert (spec.name, spec.gif, spec.thumbnail) == ("lake-teaser", False, True)


@pytest.mark.parametrize(
    "fmt, mode, backend, size, adjusted",
    [
        ("linkedin", "preview", "diffusers", (640, 352), ["height 360 -> 352 (diffusers needs multiples of 32)"]),
        ("linkedin", "production", "diffusers", (1280, 736), ["height 720 -> 736 (diffusers needs multiples of 32)"]),
        ("tiktok", "preview", "diffusers", (352, 640), ["width 360 -> 352 (diffusers needs multiples of 32)"]),
        ("instagram", "production", "diffusers", (736, 736), ["width 720 -> 736", "height 720 -> 736"]),
        ("linkedin", "preview", "mlx", (640, 384), ["height 360 -> 384 (mlx needs multiples of 64)"]),
        ("linkedin", "production", "mlx", (1280, 704), ["height 720 -> 704 (mlx needs multiples of 64)"]),
        ("tiktok", "preview", "mlx", (384, 640), ["width 360 -> 384 (mlx needs multiples of 64)"]),
    ],
)
def test_format_sizes_are_halved_in_preview_and_snapped(tmp_path, fmt, mode, backend, size, adjusted):
    spec = job(tmp_path, f'prompt = "x"\nformat = "{fmt}"\nmode = "{mode}"\nbackend = "{backend}"\n')
    assert (spec.width, spec.height) == size
    assert spec.backend == backend
    for text in adjusted:
        assert any(a.startswith(text) for a in spec.adjustments), spec.adjustments


def test_explicit_size_is_used_as_given_then_snapped(tmp_path):
    spec = job(tmp_path, 'prompt = "x"\nwidth = 768\nheight = 512\n')  # preview does not halve it
    assert (spec.width, spec.height) == (768, 512)
    assert not any(a.startswith(("width", "height")) for a in spec.adjustments)
    spec = job(tmp_path, 'prompt = "x"\nformat = "custom"\nwidth = 770\nheight = 500\nbackend = "mlx"\n')
    assert (spec.width, spec.height, spec.format) == (768, 512, "custom")
    assert "width 770 -> 768 (mlx needs multiples of 64)" in spec.adjustments
    assert "height 500 -> 512 (mlx needs multiples of 64)" in spec.adjustments


def test_size_snap_ties_go_up(tmp_path):
    spec = job(tmp_path, 'prompt = "x"\nwidth = 80\nheight = 96\nbackend = "mlx"\n')
    assert (spec.width, spec.height) == (64, 128)  # 80 is nearer 64; 96 is halfway and goes up
    spec = job(tmp_path, 'prompt = "x"\nwidth = 64\nheight = 4096\nbackend = "mlx"\n')
    assert (spec.width, spec.height) == (64, 4096)


@pytest.mark.parametrize(
    "duration, fps, frames",
    [(5, 24, 121), (1, 24, 25), (2, 30, 57), (4, 25, 97), (13, 1, 17), (0.1, 24, 9), (20, 60, 1201), (2.5, 25, 65)],
)
def test_frames_snap_to_8k_plus_1_ties_up(tmp_path, duration, fps, frames):
    spec = job(tmp_path, f'prompt = "x"\nduration = {duration}\nfps = {fps}\n')
    assert spec.num_frames == frames
    assert (spec.num_frames - 1) % 8 == 0


def test_frames_adjustment_is_recorded_only_when_changed(tmp_path):
    assert "num_frames 120 -> 121 (frames must be 8k+1)" in job(tmp_path, 'prompt = "x"\n').adjustments
    spec = job(tmp_path, 'prompt = "x"\nduration = 1\nfps = 25\n')
    assert spec.num_frames == 25
    assert not any(a.startswith("num_frames") for a in spec.adjustments)


def test_steps_default_by_mode_and_override(tmp_path):
    assert job(tmp_path, 'prompt = "x"\n').steps == 10
    assert job(tmp_path, 'prompt = "x"\nmode = "production"\n').steps == 30
    assert job(tmp_path, 'prompt = "x"\nmode = "production"\nsteps = 8\n').steps == 8


def test_cache_values_map_to_modes(tmp_path):
    assert job(tmp_path, 'prompt = "x"\ncache = true\n').cache == "use"
    assert job(tmp_path, 'prompt = "x"\ncache = false\n').cache == "off"
    assert job(tmp_path, 'prompt = "x"\ncache = "refresh"\n').cache == "refresh"


def test_seed_random_is_drawn_and_recorded(tmp_path):
    spec = job(tmp_path, 'prompt = "x"\nseed = "random"\n')
    assert spec.seed_random is True
    assert 0 <= spec.seed < 2**32
    assert f'seed "random" drew {spec.seed}' in spec.adjustments


def test_seed_limits(tmp_path):
    assert job(tmp_path, 'prompt = "x"\nseed = 0\n').seed == 0
    assert job(tmp_path, f'prompt = "x"\nseed = {2**32 - 1}\n').seed == 2**32 - 1


def test_model_without_audio_turns_sound_off_and_says_so(tmp_path):
    spec = job(tmp_path, 'prompt = "x"\nmodel = "ltx-video"\n')
    assert spec.generate_audio is False
    assert "audio.generate true -> false (model 'ltx-video' makes no sound)" in spec.adjustments


@pytest.mark.parametrize("apple, mlx_weights, backend, size", [
    (False, False, "diffusers", (640, 352)),
    (False, True, "diffusers", (640, 352)),  # not a Mac: MLX weights change nothing
    (True, False, "diffusers", (640, 352)),  # a Mac without the model's MLX weights: Diffusers, rather than fail
    (True, True, "mlx", (640, 384)),  # Apple Silicon with MLX weights: MLX, snapped to multiples of 64
], ids=["linux", "linux-with-mlx-weights", "mac-without-mlx-weights", "mac-with-mlx-weights"])
def test_auto_picks_mlx_on_apple_silicon_when_its_weights_are_here(tmp_path, monkeypatch, this_machine_is_injected,
                                                                   apple, mlx_weights, backend, size):
    from hotfolder.backends import choose
    from hotfolder.config import BUILTIN_MODELS

    monkeypatch.setattr(choose, "is_apple_silicon", lambda: apple)
    monkeypatch.setattr(choose, "mlx_status", lambda: (True, "mlx with mlx-video-with-audio (injected)"))
    if mlx_weights:
        model = BUILTIN_MODELS["ltx-2"]
        weights_in_cache(this_machine_is_injected, model.mlx_repo, model.revision)
        weights_in_cache(this_machine_is_injected, model.mlx_text_encoder_repo)
    spec = job(tmp_path, 'prompt = "x"\nbackend = "auto"\n')
    assert (spec.backend, (spec.width, spec.height)) == (backend, size)


def test_model_can_be_a_local_folder_of_weights(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    spec = job(tmp_path, f'prompt = "x"\nmodel = "{weights}"\n')
    assert spec.model == str(weights)


def test_auto_backend_follows_config_and_model(tmp_path):
    assert job(tmp_path, 'prompt = "x"\n', cfg=config(tmp_path, backend="mlx")).backend == "mlx"
    assert job(tmp_path, 'prompt = "x"\nmodel = "ltx-2.3-q4"\n').backend == "mlx"  # exists only for MLX
    assert job(tmp_path, 'prompt = "x"\nbackend = "diffusers"\n', cfg=config(tmp_path, backend="mlx")).backend == (
        "diffusers"
    )


def test_utf8_with_byte_order_mark_is_fine(tmp_path):
    spec = job(tmp_path, "\ufeffprompt = \"café\"\n".encode().decode(), name="bom.toml")
    assert spec.prompt == "café"
    path = write(tmp_path, "bom.txt", b"\xef\xbb\xbfcaf\xc3\xa9")
    assert parse(path, config(tmp_path))[0].prompt == "café"


# --- precedence and presets -------------------------------------------------------


def test_precedence_defaults_then_preset_then_file_then_entry(tmp_path):
    cfg = config(
        tmp_path,
        job_defaults={**JOB_DEFAULTS, "mode": "production", "fps": 30, "duration": 3.0, "seed": 1, "priority": 5},
        presets={"slow": {"format": "tiktok", "fps": 25, "duration": 4.0, "seed": 2}},
    )
    path = write(
        tmp_path,
        "layers.toml",
        """
prompt = "x"
duration = 2.0
seed = 3

[[jobs]]
seed = 4

[[jobs]]
""",
    )
    first, second = parse(path, cfg, preset="slow")
    assert first.mode == "production"  # config defaults
    assert (first.format, first.fps) == ("tiktok", 25.0)  # preset over defaults
    assert first.duration == 2.0  # file over preset
    assert first.priority == 5
    assert (first.seed, second.seed) == (4, 3)  # entry over file
    assert (first.preset, first.source) == ("slow", "layers.toml")


def test_builtin_presets_set_the_format(tmp_path):
    spec = job(tmp_path, "a cat", name="cat.txt", preset="tiktok", display_name="tiktok/cat.txt")
    assert (spec.format, spec.width, spec.height) == ("tiktok", 352, 640)
    assert (spec.preset, spec.source, spec.name) == ("tiktok", "tiktok/cat.txt", "cat")


def test_file_overrides_preset_format(tmp_path):
    spec = job(tmp_path, 'prompt = "x"\nformat = "instagram"\n', preset="tiktok")
    assert spec.format == "instagram"


def test_unknown_preset_lists_the_presets(tmp_path):
    p = only(tmp_path, "a cat", name="cat.txt", preset="tiktk")
    assert "preset 'tiktk'" in p.message
    assert "did you mean 'tiktok'?" in p.message
    assert "instagram, linkedin, tiktok" in p.message


def test_bad_value_from_a_preset_says_where_it_came_from(tmp_path):
    cfg = config(tmp_path, presets={"long": {"duration": 60}})
    p = only(tmp_path, "a cat", name="cat.txt", cfg=cfg, preset="long")
    assert p.message.startswith("duration = 60 is not allowed")
    assert "(set by preset 'long')" in p.message


def test_default_model_comes_from_config(tmp_path):
    assert job(tmp_path, 'prompt = "x"\n', cfg=config(tmp_path, model="tiny")).model == "tiny"


# --- [[jobs]] batches -------------------------------------------------------------


def test_batch_entries_inherit_and_get_numbered_names(tmp_path):
    path = write(
        tmp_path,
        "batch.toml",
        """
prompt = "a lake"
duration = 2.0

[output]
gif = false

[[jobs]]

[[jobs]]
prompt = "a river"
output = { thumbnail = false }

[[jobs]]
duration = 1.0
output = { name = "hero" }
""",
    )
    specs = parse(path, config(tmp_path))
    assert [s.index for s in specs] == [0, 1, 2]
    assert [s.name for s in specs] == ["batch-1", "batch-2", "hero"]
    assert [s.prompt for s in specs] == ["a lake", "a river", "a lake"]
    assert [s.duration for s in specs] == [2.0, 2.0, 1.0]
    assert [s.gif for s in specs] == [False, False, False]  # [output] merges key by key
    assert [s.thumbnail for s in specs] == [True, False, True]
    assert all(s.source == "batch.toml" for s in specs)


def test_batch_top_level_name_is_numbered(tmp_path):
    path = write(tmp_path, "b.toml", 'prompt = "x"\n[output]\nname = "lake"\n[[jobs]]\n[[jobs]]\n')
    assert [s.name for s in parse(path, config(tmp_path))] == ["lake-1", "lake-2"]


def test_single_entry_batch_is_not_numbered(tmp_path):
    assert job(tmp_path, '[[jobs]]\nprompt = "x"\n', name="one.toml").name == "one"


def test_batch_without_top_prompt_when_every_entry_has_one(tmp_path):
    path = write(tmp_path, "b.toml", '[[jobs]]\nprompt = "a"\n[[jobs]]\nprompt = "b"\n')
    assert [s.prompt for s in parse(path, config(tmp_path))] == ["a", "b"]


def test_batch_entry_without_prompt(tmp_path):
    p = only(tmp_path, '[[jobs]]\nprompt = "a"\n[[jobs]]\nseed = 1\n')
    assert p.message.startswith("jobs[1] has no prompt")
    assert p.key == "jobs[1].prompt"


def test_batch_random_seeds_are_drawn_per_job(tmp_path):
    path = write(tmp_path, "b.toml", 'prompt = "x"\nseed = "random"\n' + "[[jobs]]\n" * 4)
    specs = parse(path, config(tmp_path))
    assert all(s.seed_random for s in specs)
    assert len({s.seed for s in specs}) > 1


def test_problems_in_entries_are_prefixed(tmp_path):
    text = messages(tmp_path, 'prompt = "x"\n[[jobs]]\n[[jobs]]\nduration = 0\n[[jobs]]\nfsp = 24\n')
    assert "jobs[1].duration = 0 is not allowed: give seconds greater than 0" in text
    assert "key 'jobs[2].fsp' is not a job key; did you mean 'jobs[2].fps'?" in text


def test_top_level_problem_is_reported_once_in_a_batch(tmp_path):
    found = problems(tmp_path, 'prompt = "x"\nfps = 0\n' + "[[jobs]]\n" * 3)
    assert [p.message for p in found] == ["fps = 0 is not allowed: give frames per second from 1 to 60"]


def test_empty_and_malformed_jobs_lists(tmp_path):
    assert "jobs = [] holds no jobs" in messages(tmp_path, 'prompt = "x"\njobs = []\n')
    text = messages(tmp_path, 'prompt = "x"\njobs = [1, "b"]\n')
    assert "jobs[0] = 1 is not allowed: each job must be a [[jobs]] table" in text
    assert 'jobs[1] = "b" is not allowed' in text
    assert "jobs = \"all\" is not allowed" in messages(tmp_path, 'prompt = "x"\njobs = "all"\n')


def test_nested_jobs_are_not_allowed(tmp_path):
    assert "jobs[0].jobs is not allowed here" in messages(tmp_path, '[[jobs]]\nprompt = "x"\n[[jobs.jobs]]\n')


# --- names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, name",
    [
        ("lake-teaser", "lake-teaser"),
        ("my lake_v2.final", "my lake_v2.final"),
        ("a/b:c*d", "a-b-c-d"),
        ("../../etc/passwd", "-..-etc-passwd"),
        (".hidden", "hidden"),
        ("...", "video"),
        ("", "video"),
        ("café 日本", "café 日本"),
        ("cafe\u0301", "café"),  # decomposed accent (as macOS hands it out) stays one letter
        ("x" * 150, "x" * 100),
    ],
)
def test_safe_name(raw, name):
    assert safe_name(raw) == name


def test_output_name_is_sanitised_and_recorded(tmp_path):
    spec = job(tmp_path, 'prompt = "x"\n[output]\nname = "lake/teaser?"\n')
    assert spec.name == "lake-teaser-"
    assert any(a.startswith('output.name "lake/teaser?" -> "lake-teaser-"') for a in spec.adjustments)


def test_name_defaults_to_display_name_stem(tmp_path):
    assert job(tmp_path, "a cat", name="staged.txt", display_name="inbox cat.txt").name == "inbox cat"
    assert job(tmp_path, "a cat", name="my cat.txt").name == "my cat"


# --- file-level problems ----------------------------------------------------------


def test_empty_file(tmp_path):
    p = only(tmp_path, b"", name="empty.txt")
    assert p.message == "the file is empty: write a prompt in it"
    assert only(tmp_path, b"", name="empty.toml").message == "the file is empty: write a prompt in it"


def test_whitespace_only_txt(tmp_path):
    assert "write a prompt in it" in only(tmp_path, "  \n\n\t ", name="blank.txt").message


def test_binary_toml(tmp_path):
    p = only(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", name="image.toml")
    assert "is not a text file" in p.message


def test_utf16_file(tmp_path):
    p = only(tmp_path, "a cat".encode("utf-16"), name="cat.txt")
    assert "UTF-16" in p.message and "UTF-8" in p.message


def test_file_over_the_size_limit(tmp_path):
    cfg = config(tmp_path, max_prompt_bytes=100)
    p = only(tmp_path, "x" * 101, name="big.txt", cfg=cfg)
    assert "101 bytes" in p.message
    assert "limit of 100 bytes" in p.message
    assert "max_prompt_bytes" in p.message
    assert job(tmp_path, "x" * 100, name="ok.txt", cfg=cfg).prompt == "x" * 100


def test_non_utf8_txt(tmp_path):
    with pytest.raises(JobInvalid) as info:
        parse(write(tmp_path, "latin.txt", "un café\nau lait".encode("latin-1")), config(tmp_path))
    message = info.value.problems[0].message
    assert "not UTF-8" in message
    assert "byte offset 6" in message and "0xE9" in message
    assert "save it as UTF-8" in message
    assert str(info.value).startswith("latin.txt: ")


def test_wrong_extension(tmp_path):
    p = only(tmp_path, '{"prompt": "x"}', name="job.json")
    assert "'job.json' is not a job file" in p.message
    assert ".toml" in p.message and ".txt" in p.message


def test_uppercase_extension_is_a_job(tmp_path):
    assert job(tmp_path, "a cat", name="CAT.TXT").prompt == "a cat"


def test_display_name_labels_the_error(tmp_path):
    with pytest.raises(JobInvalid) as info:
        parse(write(tmp_path, "staged.toml", b""), config(tmp_path), display_name="tiktok/cat.toml")
    assert info.value.file == "tiktok/cat.toml"


# --- TOML syntax ------------------------------------------------------------------


def test_syntax_error_gives_line_and_column(tmp_path):
    p = only(tmp_path, 'prompt = "a fox"\nduration = five\n')
    assert (p.line, p.column) == (2, 12)
    assert "line 2, column 12" in p.message
    assert "double quotes" in p.message  # the likely fix for a bare word


def test_the_double_quotes_hint_is_only_for_a_bare_word(tmp_path):
    p = only(tmp_path, 'prompt = "a fox"\nduration = = 3\n')
    assert (p.line, p.column) == (2, 12) and "double quotes" not in p.message


def test_unterminated_string_at_end_of_file(tmp_path):
    p = only(tmp_path, 'prompt = "a fox\nseed = 1')
    assert p.line is not None and p.column is not None
    assert f"line {p.line}, column {p.column}" in p.message


def test_duplicate_table(tmp_path):
    p = only(tmp_path, 'prompt = "x"\n[output]\ngif = true\n[output]\nthumbnail = true\n')
    assert (p.line, p.column) == (4, 8)
    assert "line 4, column 8" in p.message


# --- keys -------------------------------------------------------------------------


def test_unknown_key_did_you_mean(tmp_path):
    p = only(tmp_path, 'prompt = "x"\nduraton = 5\n')
    assert p.message == "key 'duraton' is not a job key; did you mean 'duration'?"
    assert p.key == "duraton"


def test_unknown_key_in_a_table(tmp_path):
    assert only(tmp_path, 'prompt = "x"\n[output]\nnmae = "a"\n').message == (
        "key 'output.nmae' is not a job key; did you mean 'output.name'?"
    )
    assert "[audio] may hold file, generate, tts" in only(tmp_path, 'prompt = "x"\n[audio]\nvolume = 1\n').message


def test_unknown_key_without_a_close_match_lists_the_keys(tmp_path):
    message = only(tmp_path, 'prompt = "x"\nzzz = 1\n').message
    assert message.startswith("key 'zzz' is not a job key; the job keys are prompt, negative_prompt, format")


def test_table_key_at_top_level_points_to_its_table(tmp_path):
    assert "did you mean 'output.gif'?" in only(tmp_path, 'prompt = "x"\ngif = false\n').message


def test_top_level_key_below_a_table(tmp_path):
    message = messages(tmp_path, '[output]\nname = "a"\nprompt = "x"\n')
    assert "key 'output.prompt' is not a job key" in message
    assert "top of the file" in message


def test_table_written_as_a_value(tmp_path):
    message = messages(tmp_path, 'prompt = "x"\noutput = "lake"\n')
    assert 'output = "lake" is not allowed: write it as a table' in message


def test_all_problems_are_reported_at_once(tmp_path):
    found = problems(
        tmp_path,
        'prompt = ""\nduraton = 5\nfps = 0\nseed = -1\nmode = "fast"\nwidth = 640\n[output]\ngif = "yes"\n',
    )
    keys = {p.key for p in found}
    assert {"prompt", "duraton", "fps", "seed", "mode", "width", "output.gif"} <= keys


# --- types and ranges -------------------------------------------------------------


@pytest.mark.parametrize("value", ["-3", "0", "21", "-0.5", "nan", "inf", str(10**30)])
def test_duration_out_of_range(tmp_path, value):
    p = only(tmp_path, f'prompt = "x"\nduration = {value}\n')
    assert p.message == (
        f"duration = {value} is not allowed: give seconds greater than 0 and at most 20 (the limit of model 'ltx-2')"
    )
    assert p.key == "duration"


def test_duration_limit_is_the_models(tmp_path):
    message = only(tmp_path, 'prompt = "x"\nmodel = "ltx-video"\nduration = 15\n').message
    assert "at most 10 (the limit of model 'ltx-video')" in message
    assert job(tmp_path, 'prompt = "x"\nduration = 20\n').duration == 20.0


def test_duration_as_text(tmp_path):
    message = only(tmp_path, 'prompt = "x"\nduration = "5"\n').message
    assert message.startswith('duration = "5" is not allowed: give seconds greater than 0')
    assert message.endswith("not text")


@pytest.mark.parametrize("value", ["0", "61", "0.5", "true", '"24"'])
def test_fps_out_of_range_or_wrong_type(tmp_path, value):
    message = only(tmp_path, f'prompt = "x"\nfps = {value}\n').message
    assert message.startswith(f"fps = {value} is not allowed: give frames per second from 1 to 60")


def test_bool_is_never_a_number(tmp_path):
    assert only(tmp_path, 'prompt = "x"\nsteps = true\n').message == (
        "steps = true is not allowed: give a whole number of denoising steps from 1 to 200, not true/false"
    )
    assert "priority = false is not allowed" in messages(tmp_path, 'prompt = "x"\npriority = false\n')


@pytest.mark.parametrize("value", ["0", "201", "2.5"])
def test_steps_out_of_range(tmp_path, value):
    message = only(tmp_path, f'prompt = "x"\nsteps = {value}\n').message
    assert message.startswith(f"steps = {value} is not allowed: give a whole number of denoising steps from 1 to 200")


@pytest.mark.parametrize("value", ["-1", str(2**32), "1.5", '"lucky"', "true"])
def test_bad_seed(tmp_path, value):
    message = only(tmp_path, f'prompt = "x"\nseed = {value}\n').message
    assert message.startswith(f"seed = {value} is not allowed: give a whole number from 0 to 4294967295, or \"random\"")


@pytest.mark.parametrize("content", ['prompt = ""\n', 'prompt = "   \\n "\n'])
def test_empty_prompt(tmp_path, content):
    message = only(tmp_path, content).message
    assert message.startswith("prompt = ")
    assert "write what the video should show" in message


def test_missing_prompt(tmp_path):
    message = only(tmp_path, 'duration = 3\n').message
    assert message.startswith("the job has no prompt")
    assert 'prompt = "' in message


def test_prompt_of_wrong_type(tmp_path):
    message = only(tmp_path, "prompt = 42\n").message
    assert message == "prompt = 42 is not allowed: give text in double quotes, not a whole number"


def test_unknown_format_mode_backend_did_you_mean(tmp_path):
    assert "did you mean 'tiktok'?" in only(tmp_path, 'prompt = "x"\nformat = "tiktock"\n').message
    message = only(tmp_path, 'prompt = "x"\nmode = "Production"\n').message
    assert message == 'mode = "Production" is not allowed: give "preview" or "production"; did you mean \'production\'?'
    assert "did you mean 'diffusers'?" in only(tmp_path, 'prompt = "x"\nbackend = "difusers"\n').message


def test_custom_format_needs_a_size(tmp_path):
    message = only(tmp_path, 'prompt = "x"\nformat = "custom"\n').message
    assert message.startswith('format = "custom" needs a size: add width and height')


def test_width_without_height(tmp_path):
    p = only(tmp_path, 'prompt = "x"\nwidth = 768\n')
    assert p.message == (
        "width = 768 is given without height: give both width and height, or neither to use the format's size"
    )
    assert "height = 512 is given without width" in messages(tmp_path, 'prompt = "x"\nheight = 512\n')


@pytest.mark.parametrize("value", ["32", "5000", "640.0"])
def test_size_out_of_range(tmp_path, value):
    message = messages(tmp_path, f'prompt = "x"\nwidth = {value}\nheight = 512\n')
    assert f"width = {value} is not allowed: give a whole number of pixels from 64 to 4096" in message


def test_bad_cache_value_suggests_the_boolean(tmp_path):
    message = only(tmp_path, 'prompt = "x"\ncache = "off"\n').message
    assert message.startswith('cache = "off" is not allowed: give true, false or "refresh"')
    assert message.endswith("did you mean false (without quotes)?")


def test_bad_booleans(tmp_path):
    assert only(tmp_path, 'prompt = "x"\n[output]\ngif = "yes"\n').message == (
        'output.gif = "yes" is not allowed: give true or false (without quotes), not text'
    )
    assert "audio.generate = 1 is not allowed" in messages(tmp_path, 'prompt = "x"\n[audio]\ngenerate = 1\n')


def test_unknown_model_lists_known_models(tmp_path):
    p = only(tmp_path, 'prompt = "x"\nmodel = "ltx2"\n')
    assert p.message.startswith('model = "ltx2" is not a known model')
    assert "ltx-2" in p.message and "tiny" in p.message and "ltx-video" in p.message
    assert "did you mean 'ltx-2'?" in p.message
    assert p.key == "model" and p.value == "ltx2"


def test_model_that_the_backend_cannot_run(tmp_path):
    message = only(tmp_path, 'prompt = "x"\nmodel = "ltx-video"\nbackend = "mlx"\n').message
    assert message.startswith('model = "ltx-video" cannot run on mlx')
    assert 'backend = "diffusers"' in message


# --- attachments: the job file's side (the files themselves: tests/test_attachments.py) ----


def test_attachments_resolve_to_clean_relative_paths(tmp_path):
    spec = job(tmp_path, 'prompt = "A lake"\n[image]\nfile = "./media/first.png"\nstrength = 0.7\n'
                         '[audio]\nfile = "voice.mp3"\ntts = "Hello there"\n')
    assert (spec.image, spec.image_strength, spec.audio_file, spec.tts) == ("media/first.png", 0.7, "voice.mp3",
                                                                            "Hello there")
    assert spec.image_sha256 is None  # filled in by the daemon from the claimed file


def test_tts_true_narrates_the_prompt_and_false_narrates_nothing(tmp_path):
    assert job(tmp_path, 'prompt = " A lake at dawn "\n[audio]\ntts = true\n').tts == "A lake at dawn"
    assert job(tmp_path, 'prompt = "x"\n[audio]\ntts = false\n').tts is None
    assert job(tmp_path, 'prompt = "x"\n').tts is None


def test_batch_entries_name_their_own_images(tmp_path):
    specs = parse(write(tmp_path, "b.toml", '[image]\nstrength = 0.5\n[[jobs]]\nprompt = "a"\n[jobs.image]\n'
                        'file = "a.png"\n[[jobs]]\nprompt = "b"\n[jobs.image]\nfile = "b.png"\n'), config(tmp_path))
    assert [(s.image, s.image_strength) for s in specs] == [("a.png", 0.5), ("b.png", 0.5)]


@pytest.mark.parametrize(
    "table, start, detail",
    [
        ('[image]\nfile = "../secret.png"\n', 'image.file = "../secret.png" leaves the job\'s folder', "relative"),
        ('[audio]\nfile = "a/../../x.mp3"\n', 'audio.file = "a/../../x.mp3" leaves the job\'s folder', "inside"),
        ('[audio]\nfile = "/etc/hosts"\n', 'audio.file = "/etc/hosts" is an absolute path', "relative"),
        ('[image]\nfile = "~/cat.png"\n', 'image.file = "~/cat.png" is an absolute path', "relative"),
        ('[image]\nfile = "C:\\\\cat.png"\n', 'image.file = "C:\\\\cat.png" is an absolute path', "relative"),
        ('[image]\nfile = "media\\\\cat.png"\n', "is not allowed", '"/"'),
        ('[image]\nfile = ""\n', 'image.file = "" is not allowed', "relative"),
        ('[audio]\nfile = ".voice.mp3"\n', 'audio.file = ".voice.mp3" names a file the inbox ignores', "rename"),
        ('[audio]\nfile = "voice.mp3.part"\n', "names a file the inbox ignores", "rename"),
        ('[audio]\nfile = "other.toml"\n', 'audio.file = "other.toml" is not an image or audio file', "wav"),
        ("[audio]\nfile = 3\n", "audio.file = 3 is not allowed", "text"),
        ('[image]\nfile = "a.png"\nstrength = 0\n', "image.strength = 0 is not allowed", "greater than 0"),
        ('[image]\nfile = "a.png"\nstrength = 1.5\n', "image.strength = 1.5 is not allowed", "at most 1"),
        ('[image]\nfile = "a.png"\nstrength = "full"\n', 'image.strength = "full" is not allowed', "not text"),
        ("[image]\nstrength = 0.5\n", "image.strength = 0.5 is given without image.file", "file ="),
        ('[audio]\ntts = ""\n', 'audio.tts = "" is not allowed', "text to narrate"),
        ("[audio]\ntts = 1\n", "audio.tts = 1 is not allowed", "not a whole number"),
        ('[image]\nfile = "a.png"\nsize = 3\n', "key 'image.size' is not a job key", "[image] may hold file, strength"),
        ('image = "a.png"\n', 'image = "a.png" is not allowed: write it as a table', "[image]"),
    ],
)
def test_bad_attachment_keys_name_the_key_the_value_and_what_is_allowed(tmp_path, table, start, detail):
    message = only(tmp_path, 'prompt = "x"\n' + table).message
    assert message.startswith(start) or start in message, message
    assert detail in message


def test_a_top_level_file_key_points_to_its_table(tmp_path):
    assert "did you mean 'audio.file'?" in only(tmp_path, 'prompt = "x"\nfile = "a.mp3"\n').message


def test_audio_generate_is_supported(tmp_path):
    assert job(tmp_path, 'prompt = "x"\n[audio]\ngenerate = false\n').generate_audio is False


# --- hygiene ----------------------------------------------------------------------


def test_problems_name_the_file(tmp_path):
    with pytest.raises(JobInvalid) as info:
        parse(write(tmp_path, "bad.toml", 'prompt = "x"\nfps = 0\n'), config(tmp_path))
    assert str(info.value) == "bad.toml: fps = 0 is not allowed: give frames per second from 1 to 60"
    assert info.value.exit_code == 2


def test_parsing_imports_no_heavy_backend():
    code = (
        "import sys; import hotfolder.job.spec; "
        "bad = [m for m in ('torch', 'mlx', 'diffusers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_jobspec_is_frozen(tmp_path):
    spec = job(tmp_path, 'prompt = "x"\n')
    with pytest.raises(AttributeError):
        spec.seed = 1  # type: ignore[misc]
    assert re.fullmatch(r"[\w .-]+", spec.name)
