"""The executor seam: the local executor's overlapped encode, the journal's "lost" attempts, the settings.

The Ray executor's own tests need a cluster: tests/test_cluster.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import Root, drop, make_spec

from hotfolder.config import BUILTIN_MODELS, Config, load_config
from hotfolder.daemon import executor as executors
from hotfolder.errors import UsageError
from hotfolder.folders.spool import LOST, Spool, outcome
from hotfolder.media.clip import Clip


class _Backend:
    name, device = "stub", "cpu"

    def generate(self, spec, on_step):
        on_step("denoise", 1, 1)
        frames = np.zeros((spec.num_frames, spec.height, spec.width, 3), dtype=np.uint8)
        return Clip(frames=frames, fps=spec.fps, audio=None, sample_rate=16000, info={})


class _Provider:
    key = ("stub", "tiny")

    def serves(self, spec, model):
        return True

    def get(self, spec, model):
        return _Backend(), 0.0

    def close(self):
        pass


class _Log:
    def info(self, *args, **kwargs):
        pass


def test_the_local_slot_is_given_back_before_encoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While job N encodes, job N+1 can take the model: the GPU never waits for ffmpeg."""
    local = executors.LocalExecutor(_Provider())  # type: ignore[arg-type]
    stop = threading.Event()
    encoding, release = threading.Event(), threading.Event()

    def slow_encode(clip, spec, model, mp4, wanted):
        encoding.set()
        assert release.wait(10)
        return 0.0, 0.0

    monkeypatch.setattr(executors, "encode_clip", slow_encode)
    first = local.acquire(stop)
    stages: list[str] = []
    worker = threading.Thread(target=lambda: first.make(make_spec(), BUILTIN_MODELS["tiny"], tmp_path / "a.mp4", None,
                                                        [], stages.append, lambda *a: None, _Log()))
    worker.start()
    try:
        assert encoding.wait(10)
        second = local.acquire(stop)  # taken while the first job is still encoding
        assert second is not None and stages == ["generating", "encoding"]
        second.release()
    finally:
        release.set()
        worker.join(10)
    first.release()  # twice is harmless: the slot was given back once
    third = local.acquire(stop)
    assert third is not None
    third.release()
    stop.set()


@pytest.mark.slow
def test_the_local_daemon_generates_the_next_job_while_it_encodes_this_one(root: Root) -> None:
    job = 'width = 256\nheight = 256\nduration = 2.0\nfps = 24\nsteps = 2\n'
    drop(root, "one.toml", f'prompt = "noise to encode, one"\n{job}')
    drop(root, "two.toml", f'prompt = "noise to encode, two"\n{job}')
    result = root.cli("run", "--once", fake=True, env=root.env(HOTFOLDER_FAKE_NOISE="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    metas = {root.metadata(r)["source"]: root.metadata(r) for r in root.results()}
    one, two = metas["one.toml"]["timings"], metas["two.toml"]["timings"]
    assert one["started"] < two["started"]  # arrival order kept
    assert two["started"] < one["finished"]  # two began while one was still encoding
    assert one["encode_s"] > 0


def test_an_attempt_on_a_cluster_worker_that_the_daemon_died_in_is_lost_not_counted(tmp_path: Path) -> None:
    config = Config(root=tmp_path / "root", cache_dir=tmp_path / "c", log_dir=tmp_path / "l", state_dir=tmp_path / "s")
    spool = Spool(config)
    spool.ensure_folders()
    folder = config.processing / "20261201-000000-abcdef"
    (folder / "input").mkdir(parents=True)
    (folder / "input" / "fox.txt").write_text("a fox")
    attempts = [{"index": 0, "started": "x", "stage": "generating", "executor": "ray", "worker": "w2"},
                {"index": 0, "started": "y", "stage": "generating"}]
    (folder / "job.json").write_text(json.dumps({"job_id": folder.name, "source": "fox.txt", "arrival": 1.0,
                                                 "seq": 1, "attempts": attempts}))
    [job] = spool.recover()
    assert [outcome(a) for a in job.attempts] == [LOST, "died"]
    assert "w2" in job.attempts[0]["error"]
    assert len(job.tries(0)) == 1  # only the local death counts towards max_attempts


@pytest.mark.parametrize(("text", "words"), [
    ('executor = "cluster"', ["executor", "local", "ray"]),
    ("workers = 0", ["workers", "1 or more"]),
    ('workers = "four"', ["workers", "whole number"]),
    ("ray_address = 6379", ["ray_address", "double quotes"]),
])
def test_the_executor_settings_are_checked_in_words(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text + "\n")
    with pytest.raises(UsageError) as e:
        load_config(path, root=tmp_path)
    for word in words:
        assert word in str(e.value)


def test_the_executor_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('executor = "ray"\nray_address = "ray://gpu-box:10001"\nworkers = 4\n')
    config = load_config(path, root=tmp_path)
    assert (config.executor, config.ray_address, config.workers) == ("ray", "ray://gpu-box:10001", 4)
