"""The Ray executor on a real multi-node Ray cluster inside this machine (`ray.cluster_utils.Cluster`, CPU only).

One cluster per module (a head with no CPUs, so workers land on the two worker nodes), real daemon
processes (`Root.start`), the fake backend steered by HOTFOLDER_FAKE_STEP_S (the daemon forwards its
HOTFOLDER_ settings to the workers, and the actors import the fake backend from where the daemon did),
and the tiny Diffusers model once. Faults are made from outside: a worker's pid killed, a node removed,
the daemon SIGKILLed. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import Root, drop, needs, wait_until

SMALL = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\n'
NODE_CPUS = 2


@pytest.fixture(scope="module", autouse=True)
def _ray_installed() -> None:
    """Skipped without Ray only on a developer's machine: CI (`make test` installs the ray extra) must run them."""
    needs(importlib.util.find_spec("ray"), "the ray extra is not installed (pip install 'hotfolder[ray]')")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head (no CPUs: it places no worker) and two worker nodes; shut down even when a test fails."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(num_cpus=NODE_CPUS)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()


def _use(root: Root, cluster: Any, **extra: object) -> None:
    root.write_config(executor="ray", ray_address=cluster.address, workers=2, **extra)


def _status(root: Root) -> dict[str, Any]:
    try:
        return json.loads((root.path / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _running(root: Root, source: str, at_step: int = 1) -> dict[str, Any] | None:
    """The running entry of `source` once it is generating on a worker at `at_step` or later."""
    for r in _status(root).get("running_jobs") or []:
        p = r.get("progress") or {}
        if r.get("source") == source and r.get("worker") and (p.get("step") or 0) >= at_step:
            return r
    return None


def _worker(root: Root, name: str) -> dict[str, Any]:
    return next(w for w in (_status(root).get("workers") or {}).get("workers", []) if w["name"] == name)


def _sources(root: Root) -> list[str]:
    return sorted(root.metadata(r)["source"] for r in root.results())


def _stop(daemon: subprocess.Popen[str]) -> str:
    if daemon.poll() is None:
        daemon.terminate()
    out, _ = daemon.communicate(timeout=30)
    return out


def _job(prompt: str, steps: int) -> str:
    return f'prompt = "{prompt}"\nsteps = {steps}\n{SMALL}'


@pytest.mark.slow
def test_a_burst_is_delivered_exactly_once_across_nodes(root: Root, cluster: Any) -> None:
    _use(root, cluster)
    names = [f"burst-{i}.toml" for i in range(6)]
    for i, name in enumerate(names):
        drop(root, name, _job(f"a burst, clip {i}", 3) + "[output]\ngif = true\nthumbnail = true\n")
    daemon = root.start(env=root.env(HOTFOLDER_FAKE_STEP_S="0.2"))
    try:
        wait_until(lambda: len(root.results()) + len(root.failures()) >= 6, timeout=120, what="the burst")
        assert root.failures() == []
        assert _sources(root) == names  # each exactly once
        infos = [root.metadata(r)["backend_info"] for r in root.results()]
        assert {i["worker"] for i in infos} == {"w1", "w2"}
        assert len({i["worker_node"] for i in infos}) == 2  # the two worker nodes, not one
        for result in root.results():  # the GIF and thumbnail came back as bytes, encoded next to the worker
            assert {p.suffix for p in result.iterdir()} >= {".mp4", ".gif", ".jpg"}
        wait_until(lambda: not any((root.path / "processing").iterdir()), timeout=30, what="processing/ emptied")
    finally:
        _stop(daemon)


@pytest.mark.slow
def test_a_worker_killed_mid_job_costs_time_not_the_job(root: Root, cluster: Any) -> None:
    _use(root, cluster, max_attempts=1)  # a lost worker is not an attempt: with one, a counted loss would fail it
    drop(root, "long.toml", _job("a worker dies under me", 12))
    daemon = root.start(env=root.env(HOTFOLDER_FAKE_STEP_S="0.25"))
    try:
        running = wait_until(lambda: _running(root, "long.toml", 2), timeout=60, what="the job on a worker")
        victim = _worker(root, running["worker"])
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(lambda: root.results() or root.failures(), timeout=120, what="the job after the kill")
        assert root.failures() == [] and _sources(root) == ["long.toml"]
        log = next(root.results()[0].glob("*.log")).read_text()
        assert "the worker went away" in log
        # The actor came back (a new process) and is ready for the next job.
        wait_until(lambda: _worker(root, running["worker"]).get("pid") not in (None, victim["pid"])
                   and _worker(root, running["worker"])["state"] == "ready", timeout=60, what="the actor restarted")
    finally:
        _stop(daemon)


@pytest.mark.slow
def test_a_job_that_kills_every_worker_ends_in_failed_and_the_next_job_is_made(root: Root, cluster: Any) -> None:
    _use(root, cluster, max_attempts=1)  # bound: max_attempts x workers = 2 lost workers
    drop(root, "deadly.toml", _job("this prompt crashes the worker", 3))
    daemon = root.start(env=root.env(HOTFOLDER_FAKE_SEGFAULT_PROMPT="crashes the worker"))
    try:
        [failed] = wait_until(root.failures, timeout=120, what="the deadly job in failed/")
        error = json.loads((failed / "error.json").read_text())
        assert error["kind"] == "worker-lost" and "went away 2 times" in error["message"], error
        assert [a["outcome"] for a in error["attempts"]] == ["lost", "lost"]
        drop(root, "fine.toml", _job("a harmless prompt", 2))
        wait_until(root.results, timeout=90, what="the next job, on the restarted workers")
    finally:
        _stop(daemon)


@pytest.mark.slow
def test_a_node_removed_mid_job_costs_time_not_the_job(root: Root, cluster: Any) -> None:
    _use(root, cluster, max_attempts=1)
    drop(root, "node.toml", _job("my machine leaves the cluster", 12))
    daemon = root.start(env=root.env(HOTFOLDER_FAKE_STEP_S="0.25"))
    removed = False
    try:
        running = wait_until(lambda: _running(root, "node.toml", 2), timeout=60, what="the job on a worker")
        node_id = _worker(root, running["worker"])["node"]
        [node] = [n for n in cluster.list_all_nodes() if n.node_id.startswith(node_id) and not n.head]
        cluster.remove_node(node)
        removed = True
        wait_until(lambda: root.results() or root.failures(), timeout=120, what="the job after the node left")
        assert root.failures() == [] and _sources(root) == ["node.toml"]
        assert root.metadata(root.results()[0])["backend_info"]["worker_node"] != node.node_id
    finally:
        _stop(daemon)
        if removed:  # the module's cluster keeps its two worker nodes
            cluster.add_node(num_cpus=NODE_CPUS)
            cluster.wait_for_nodes()


@pytest.mark.slow
def test_the_daemon_killed_with_jobs_on_workers_requeues_them_and_delivers_each_once(root: Root, cluster: Any) -> None:
    _use(root, cluster, max_attempts=1)  # the attempts the daemon died in must not count (they ran elsewhere)
    names = ["k1.toml", "k2.toml"]
    for name in names:
        drop(root, name, _job(f"the daemon dies, {name}", 12))
    env = root.env(HOTFOLDER_FAKE_STEP_S="0.25")
    daemon = root.start(env=env)
    try:
        wait_until(lambda: all(_running(root, n, 1) for n in names), timeout=60, what="both jobs on workers")
        shown = root.cli("status", fake=True).stdout
        assert "Running on w1" in shown and "Running on w2" in shown and "Cluster:" in shown, shown
        records = [json.loads(p.read_text()) for p in (root.path / "processing").glob("*/job.json")]
        assert sorted(a.get("worker") for r in records for a in r["attempts"]) == ["w1", "w2"]  # journalled
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=30)
        assert root.results() == []
    finally:
        _stop(daemon)
    daemon = root.start(env=env)
    try:
        wait_until(lambda: len(root.results()) + len(root.failures()) >= 2, timeout=120, what="both after restart")
        assert root.failures() == [] and _sources(root) == names
    finally:
        out = _stop(daemon)
    assert "requeued after restart" in out


@pytest.mark.slow
def test_cancel_reaches_the_job_on_its_worker_within_a_step(root: Root, cluster: Any) -> None:
    _use(root, cluster)
    drop(root, "cancel-me.toml", _job("cancel me on the cluster", 200))
    daemon = root.start(env=root.env(HOTFOLDER_FAKE_STEP_S="0.25"))
    try:
        running = wait_until(lambda: _running(root, "cancel-me.toml", 2), timeout=60, what="the job on a worker")
        t0 = time.monotonic()
        said = root.cli("cancel", "cancel-me.toml", fake=True)
        assert said.returncode == 0 and f"on worker {running['worker']}" in said.stdout, said.stdout + said.stderr
        [failed] = wait_until(root.failures, timeout=30, what="the cancelled job in failed/")
        assert json.loads((failed / "error.json").read_text())["kind"] == "cancelled"
        # The worker stopped at its next step: it is free again at once and makes the next job.
        drop(root, "next.toml", _job("after the cancel", 2))
        wait_until(root.results, timeout=60, what="the next job")
        assert time.monotonic() - t0 < 30
        assert _worker(root, running["worker"])["state"] == "ready"
    finally:
        _stop(daemon)


@pytest.mark.slow
def test_a_result_for_a_job_whose_folder_was_removed_is_dropped(root: Root, cluster: Any) -> None:
    """The job's folder leaves processing/ while its worker encodes (no step is polled then, so no step's cancel
    check sees it): when the files come back the daemon finds no stage to write them into and drops them."""
    # One worker: the next job can only be made there, so it shows the worker is free again. Noise frames make
    # the worker's encode last seconds: the folder is removed in it, after the daemon saw "encoding".
    root.write_config(executor="ray", ray_address=cluster.address, workers=1)
    drop(root, "gone.toml", 'prompt = "removed while it encodes"\nsteps = 2\nwidth = 448\nheight = 448\n'
                            'duration = 3\nfps = 16\n[output]\ngif = true\nthumbnail = true\n')
    daemon = root.start(env=root.env(HOTFOLDER_FAKE_STEP_S="0.1", HOTFOLDER_FAKE_NOISE="1"))
    out = ""
    try:
        [folder] = wait_until(lambda: list((root.path / "processing").iterdir()), timeout=60, what="the claim")

        def encoding() -> bool:
            try:
                return json.loads((folder / "progress.json").read_text()).get("stage") == "encoding"
            except (OSError, ValueError):
                return False

        wait_until(encoding, timeout=60, interval=0.02, what="the job encoding on its worker")
        # As a person's `rm -rf` does (retried: the daemon may add a file to it meanwhile).
        wait_until(lambda: shutil.rmtree(folder, ignore_errors=True) or not folder.exists(), timeout=10,
                   what="the job's folder removed")
        wait_until(lambda: not any(r.get("source") == "gone.toml" for r in _status(root).get("running_jobs") or []),
                   timeout=60, what="the result back and dropped")
        # Nothing was written for it anywhere, and nothing of it is left over.
        assert list((root.path / "processing").iterdir()) == []
        assert root.results() == [] and root.failures() == []
        # The worker is free again: the next job is made there and delivered once.
        drop(root, "next.toml", _job("after the dropped result", 2))
        wait_until(root.results, timeout=60, what="the next job")
        wait_until(lambda: not any((root.path / "processing").iterdir()), timeout=30, what="processing/ emptied")
        assert _sources(root) == ["next.toml"] and root.failures() == []
        assert root.metadata(root.results()[0])["backend_info"]["worker"] == "w1"
        wait_until(lambda: _worker(root, "w1")["state"] == "ready" and _worker(root, "w1")["busy"] is False,
                   timeout=10, what="w1 ready and free")
    finally:
        out = _stop(daemon)
    assert "cancelled: the job's folder was removed from processing/" in out, out
    assert "attempt failed" not in out and "worker error" not in out, out


@pytest.mark.slow
def test_cancel_of_a_job_waiting_for_its_restarting_worker_takes_it_out(root: Root, cluster: Any,
                                                                         tmp_path: Path) -> None:
    """A job whose worker is not ready (killed, restarting and loading its model again: HOTFOLDER_FAKE_LOAD_S) is
    in stage "waiting"; `hotfolder cancel` takes it out then: failed/ as cancelled, never made afterwards."""
    # One worker, so nothing can take the job over from its restarting worker; max_attempts = 1: one worker lost
    # by chance must not fail the job (the bound is max_attempts x workers, and at least 2).
    root.write_config(executor="ray", ray_address=cluster.address, workers=1, max_attempts=1)
    generated = tmp_path / "generated.txt"  # a line per generate() call, whichever worker makes it
    drop(root, "stuck.toml", _job("my worker restarts", 12))
    drop(root, "after.toml", _job("made after the cancel", 2))
    daemon = root.start(env=root.env(HOTFOLDER_FAKE_STEP_S="0.25", HOTFOLDER_FAKE_LOAD_S="8",
                                     HOTFOLDER_FAKE_IMAGES=str(generated)))
    try:
        wait_until(lambda: _running(root, "stuck.toml", 2), timeout=60, what="the job on its worker")
        os.kill(_worker(root, "w1")["pid"], signal.SIGKILL)

        def waiting() -> dict[str, Any] | None:
            return next((r for r in _status(root).get("running_jobs") or []
                         if r.get("source") == "stuck.toml" and (r.get("progress") or {}).get("stage") == "waiting"),
                        None)

        wait_until(waiting, timeout=30, what="the job waiting for its restarting worker")
        said = json.loads(root.cli("status", "--json", fake=True).stdout)
        assert said["alive"] is True
        shown = said["status"]
        [entry] = [r for r in shown["running_jobs"] if r["source"] == "stuck.toml"]
        assert entry["worker"] == "w1" and entry["progress"]["text"] == "waiting for a worker", entry
        assert _worker(root, "w1")["state"] != "ready"
        assert [q["source"] for q in shown["queue"]] == ["after.toml"], shown["queue"]
        text = root.cli("status", fake=True).stdout
        assert any(line.startswith("Running on w1: stuck.toml") and line.endswith(": waiting for a worker")
                   for line in text.splitlines()), text
        cancel = root.cli("cancel", "stuck.toml", fake=True)
        assert cancel.returncode == 0 and "cancel requested" in cancel.stdout, cancel.stdout + cancel.stderr
        [failed] = wait_until(root.failures, timeout=30, what="the cancelled job in failed/")
        error = json.loads((failed / "error.json").read_text())
        assert error["kind"] == "cancelled" and error["source"] == "stuck.toml", error
        # The worker comes back and makes the next job, once; the cancelled one is never made again.
        wait_until(root.results, timeout=90, what="the next job")
        wait_until(lambda: not any((root.path / "processing").iterdir()), timeout=30, what="processing/ emptied")
        assert _sources(root) == ["after.toml"] and root.failures() == [failed]
        assert len(generated.read_text().splitlines()) == 2  # stuck.toml's run before the kill, and after.toml
    finally:
        _stop(daemon)


@pytest.mark.slow
def test_the_image_and_the_voice_over_travel_with_the_job(root: Root, cluster: Any, tmp_path: Path) -> None:
    """The image goes to the worker as bytes (its path exists only here); the voice-over is mixed here, after."""
    from test_attachments import make_audio, make_image

    _use(root, cluster)
    images = tmp_path / "images.txt"
    folder = root.inbox / ".harbour"
    folder.mkdir()
    make_image(folder / "first.png", colour=(10, 200, 30))
    make_audio(folder / "voice.wav", 0.3)
    (folder / "harbour.toml").write_text(_job("a harbour", 2) + '[image]\nfile = "first.png"\n[audio]\n'
                                         'file = "voice.wav"\n')
    os.rename(folder, root.inbox / "harbour")
    daemon = root.start(env=root.env(HOTFOLDER_FAKE_IMAGES=str(images)))
    try:
        wait_until(lambda: root.results() or root.failures(), timeout=90, what="the job with attachments")
        assert root.failures() == [], (root.failures()[0] / "error.txt").read_text()
        meta = root.metadata(root.results()[0])
        assert [a["kind"] for a in meta["attachments"]] == ["image", "voice-over"]
        [seen] = images.read_text().split()
        assert "hotfolder-worker-" in seen and str(root.path) not in seen  # a copy on the worker, from bytes
    finally:
        _stop(daemon)


@pytest.mark.slow
def test_a_cache_hit_needs_no_worker(root: Root, cluster: Any) -> None:
    _use(root, cluster)
    drop(root, "first.toml", _job("the same clip twice", 2))
    daemon = root.start()
    workers = [n for n in cluster.list_all_nodes() if not n.head]
    removed = []
    try:
        wait_until(root.results, timeout=60, what="the first job")
        for node in workers:  # every worker node leaves: no worker can run anything now
            cluster.remove_node(node)
            removed.append(node)
        drop(root, "second.toml", _job("the same clip twice", 2))
        wait_until(lambda: len(root.results()) == 2 or root.failures(), timeout=60, what="the hit")
        assert root.failures() == []
        second = next(r for r in root.results() if root.metadata(r)["source"] == "second.toml")
        assert root.metadata(second)["cache_hit"] is True
    finally:
        _stop(daemon)
        for _ in removed:
            cluster.add_node(num_cpus=NODE_CPUS)
        if removed:
            cluster.wait_for_nodes()


@pytest.mark.slow
def test_doctor_reports_the_cluster_its_nodes_and_workers(root: Root, cluster: Any) -> None:
    root.write_config(executor="ray", ray_address=cluster.address)
    out = root.cli("doctor", fake=True, timeout=120).stdout
    lines = [line for line in out.splitlines() if " cluster" in line]
    assert any(line.startswith("ok") and f"{cluster.address}: ray " in line and "3 node(s), 2 worker(s)" in line
               for line in lines), out
    assert sum(1 for line in lines if "cluster node" in line and "2 CPU" in line) == 2, out
    assert any(line.startswith("warn") and "no GPU" in line for line in lines), out  # a CPU-only cluster, said so
    root.write_config(executor="ray", ray_address="127.0.0.1:9")
    out = root.cli("doctor", fake=True, timeout=120).stdout
    assert any(line.startswith("fail") and "cannot reach the Ray cluster at 127.0.0.1:9" in line
               for line in out.splitlines()), out


@pytest.mark.slow
def test_the_tiny_diffusers_model_on_the_cluster(root: Root, cluster: Any) -> None:
    _use(root, cluster, model="tiny")
    names = ["tiny-1.toml", "tiny-2.toml"]
    for i, name in enumerate(names):
        drop(root, name, f'prompt = "a tiny clip {i}"\nsteps = 2\n{SMALL}')
    daemon = root.start(fake=False)
    try:
        wait_until(lambda: len(root.results()) + len(root.failures()) >= 2, timeout=240, what="two tiny clips")
        assert root.failures() == [], (root.failures()[0] / "error.txt").read_text()
        assert _sources(root) == names
        metas = [root.metadata(r) for r in root.results()]
        assert {m["backend"] for m in metas} == {"diffusers"} and all(m["model"] == "tiny" for m in metas)
        assert {m["backend_info"]["worker"] for m in metas} == {"w1", "w2"}
    finally:
        _stop(daemon)


@pytest.mark.slow
def test_a_cluster_that_goes_away_pauses_claiming_and_the_daemon_goes_on_once_it_is_back(root: Root) -> None:
    """Its own cluster (on a fixed port, so that it can come back there). Ray ends a driver whose cluster has been
    gone for gcs_rpc_server_reconnect_timeout_s (60 s; 10 s here): the daemon leaves the cluster before that, so
    it lives on, paused, and joins the new one when it answers."""
    import socket

    from ray.cluster_utils import Cluster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = {"num_cpus": 2, "include_dashboard": False, "gcs_server_port": port}
    first = Cluster(initialize_head=True, head_node_args=args)
    second = None
    daemon = None
    try:
        root.write_config(executor="ray", ray_address=first.address, workers=1)
        env = root.env(RAY_gcs_rpc_server_reconnect_timeout_s="10")
        daemon = root.start(env=env)
        drop(root, "before.toml", _job("before it goes", 2))
        wait_until(root.results, timeout=60, what="a job before the cluster goes")
        first.shutdown()
        wait_until(lambda: "cannot be reached" in str(_status(root).get("paused")), timeout=30, what="the pause")
        assert "Paused: the Ray cluster at" in root.cli("status", fake=True).stdout
        drop(root, "during.toml", _job("while it is gone", 2))
        deadline = time.monotonic() + 15  # past Ray's 10 s: a daemon still in the cluster would be ended by now
        wait_until(lambda: time.monotonic() > deadline or daemon.poll() is not None, timeout=30, what="15 s")
        assert daemon.poll() is None, _stop(daemon)
        assert (root.inbox / "during.toml").exists()  # not claimed while the cluster is gone
        second = Cluster(initialize_head=True, head_node_args=args)
        wait_until(lambda: len(root.results()) == 2, timeout=90, what="the job after the cluster came back")
        assert _status(root).get("paused") is None
    finally:
        if daemon is not None:
            _stop(daemon)
        for c in (first, second):
            if c is not None:
                c.shutdown()


@pytest.mark.parametrize("address", ["127.0.0.1:9", "ray://127.0.0.1:9"])
def test_an_unreachable_cluster_at_start_is_an_error_naming_the_address(root: Root, address: str) -> None:
    root.write_config(executor="ray", ray_address=address)
    t0 = time.monotonic()
    result = root.cli("run", fake=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"cannot reach the Ray cluster at {address}" in result.stderr and "ray_address" in result.stderr
    assert time.monotonic() - t0 < 60
    assert not (root.path / "status.json").exists() or json.loads((root.path / "status.json").read_text())
