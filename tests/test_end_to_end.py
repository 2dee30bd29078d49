"""The real daemon process on the real tiny LTX-2 pipeline: drop files, get MP4s with sound.

Slow (it imports torch and diffusers in a subprocess), and CI runs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import Root
from hotfolder.media import probe

pytestmark = pytest.mark.slow


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.rename(tmp, path)


def test_toml_txt_batch_and_preset_jobs_become_mp4s_with_sound(root: Root) -> None:
    root.write_config(defaults={"duration": 1.0, "fps": 12})
    _write(root.inbox / "lake.toml",
           'prompt = "A mountain lake at golden hour"\nwidth = 96\nheight = 64\nduration = 1.0\nfps = 16\nsteps = 2\n')
    _write(root.inbox / "fox.txt", "A red fox running through fresh snow\n")
    _write(root.inbox / "pair.toml",
           'width = 64\nheight = 64\nsteps = 2\nfps = 8\nduration = 1\n'
           '[[jobs]]\nprompt = "first shot"\n[[jobs]]\nprompt = "second shot"\nseed = 7\n')
    _write(root.inbox / "tiktok" / "dance.txt", "A dancer on a rooftop at sunset\n")

    run = root.cli("run", "--once", "--backend", "diffusers", "--model", "tiny", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert root.failures() == []

    by_name = {}
    for result in root.results():
        meta = root.metadata(result)
        by_name[meta["outputs"]["video"]] = (result, meta)
    assert set(by_name) == {"lake.mp4", "fox.mp4", "pair-1.mp4", "pair-2.mp4", "dance.mp4"}

    from hotfolder.backends.diffusers.backend import pick_device

    device = pick_device()  # the daemon's own choice on this machine (the choice itself: test_diffusers_backend)
    expected = {  # name: (width, height, frames, fps)
        "lake.mp4": (96, 64, 17, 16.0),
        "fox.mp4": (640, 352, 9, 12.0),  # linkedin preview, 1 s at 12 fps -> 12 -> 9 frames
        "pair-1.mp4": (64, 64, 9, 8.0),
        "pair-2.mp4": (64, 64, 9, 8.0),
        "dance.mp4": (352, 640, 9, 12.0),  # the tiktok preset folder: 9:16
    }
    for name, (w, h, frames, fps) in expected.items():
        result, meta = by_name[name]
        info = probe(result / name)
        assert info.video is not None and info.audio is not None, name
        assert (info.video.width, info.video.height, info.video.num_frames) == (w, h, frames), name
        assert info.video.fps == pytest.approx(fps), name
        assert info.video.codec == "h264" and info.video.pix_fmt == "yuv420p" and info.faststart
        assert info.audio.codec == "aac"
        assert info.audio.duration == pytest.approx(frames / fps, abs=1 / fps), name
        assert (meta["width"], meta["height"], meta["num_frames"], meta["fps"]) == (w, h, frames, fps)
        stem = name[:-4]
        for suffix in (".gif", ".jpg", ".json", ".log"):
            assert (result / f"{stem}{suffix}").is_file(), f"{stem}{suffix}"
        assert meta["model"] == "tiny" and "noise" in meta["warning"] and "noise" in meta["model_label"]
        assert meta["backend"] == "diffusers" and meta["device"] == device  # this machine's: cpu, cuda or mps
        for key in ("job_id", "source", "status", "prompt", "negative_prompt", "seed", "steps", "cache_hit",
                    "cache_key", "adjustments", "timings", "outputs", "versions"):
            assert key in meta, key
        assert "torch" in meta["versions"] and "diffusers" in meta["versions"]
        assert "job started" in (result / f"{stem}.log").read_text()

    # One daemon run, five generations, one model load.
    loads = sorted((m["timings"]["load_s"] for _, m in by_name.values()), reverse=True)
    assert loads[0] > 0 and loads[1:] == [0.0, 0.0, 0.0, 0.0]
    assert "num_frames 12 -> 9 (frames must be 8k+1)" in by_name["fox.mp4"][1]["adjustments"]
    assert json.loads((by_name["pair-2.mp4"][0] / "pair-2.json").read_text())["seed"] == 7


def test_missing_real_weights_fail_fast_with_the_pull_command(root: Root) -> None:
    _write(root.inbox / "real.toml", 'prompt = "needs the real model"\nwidth = 64\nheight = 64\nduration = 0.5\n')
    run = root.cli("run", "--once", "--backend", "diffusers", "--model", "ltx-2", timeout=300)
    assert run.returncode == 1
    [failed] = root.failures()
    text = (failed / "error.txt").read_text()
    assert "hotfolder models pull ltx-2" in text
    error = json.loads((failed / "error.json").read_text())
    assert error["kind"] == "weights_missing" and "attempts" not in error  # not retried: it cannot help


def test_make_demo_command_runs_the_examples(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTFOLDER_")}
    env.update(HOME=str(tmp_path), HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "hotfolder", "demo"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    results = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("result: ")]
    assert len(results) == 4 and all(Path(r).is_file() for r in results)
    assert "noise" in out.stdout


def test_the_mlx_backend_through_the_daemon_loads_once_and_delivers_video_with_sound(root: Root) -> None:
    for n in range(2):
        _write(root.inbox / f"mlx{n}.toml",
               f'prompt = "shot {n}"\nwidth = 192\nheight = 128\nduration = 0.75\nfps = 12\nseed = {n}\n')
    run = root.cli("run", "--once", "--backend", "mlx", "--model", "tiny", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert root.failures() == []
    metas = [(root.metadata(r), r) for r in root.results()]
    assert len(metas) == 2
    for meta, result in metas:
        info = probe(result / meta["outputs"]["video"])
        assert info.video is not None and info.audio is not None
        assert (info.video.width, info.video.height, info.video.num_frames) == (192, 128, 9)
        assert info.audio.duration == pytest.approx(9 / 12, abs=1 / 12)
        assert meta["backend"] == "mlx" and "noise" in meta["model_label"]
    loads = sorted(m["timings"]["load_s"] for m, _ in metas)
    assert loads[0] == 0 and loads[1] > 0


def test_production_runs_both_stages_and_an_image_job_changes_the_video(root: Root, tmp_path: Path) -> None:
    from PIL import Image

    job = 'prompt = "A harbour at dawn"\nwidth = 256\nheight = 128\nduration = 0.75\nfps = 12\nsteps = 2\n'
    _write(root.inbox / "prod.toml", job + 'mode = "production"\n')
    folder = root.inbox / "framed"
    folder.mkdir()
    Image.new("RGB", (160, 90), (220, 30, 30)).save(folder / "first.png")
    _write(folder / "framed.toml", job + '[image]\nfile = "first.png"\n')
    _write(root.inbox / "plain.toml", job)
    run = root.cli("run", "--once", "--backend", "diffusers", "--model", "tiny", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = {root.metadata(r)["source"]: (r, root.metadata(r)) for r in root.results()}
    result, meta = results["prod.toml"]
    assert [s["name"] for s in meta["backend_info"]["stages"]] == ["stage1", "stage2"]
    log = (result / "prod.log").read_text()
    assert "stage1 128x64 2 steps; stage2 256x128 3 steps" in log
    info = probe(result / "prod.mp4")
    assert (info.video.width, info.video.height, info.video.num_frames) == (256, 128, 9) and info.audio is not None
    [framed_source] = [s for s in results if s.startswith("framed")]
    (framed, fmeta), (plain, pmeta) = results[framed_source], results["plain.toml"]
    assert fmeta["cache_key"] != pmeta["cache_key"]
    assert fmeta["backend_info"]["image_fit"]["target_size"] == [256, 128]
    assert (framed / "framed.jpg").read_bytes() != (plain / "plain.jpg").read_bytes()
