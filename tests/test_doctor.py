"""`hotfolder doctor`: every check says ok, warn or fail with the fix, and the command exits 1 on a failure.

The machine is replaced piece by piece through `Probes` (ffmpeg, weights, the root's
permissions, the agent), so each failure is shown on any machine.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from hotfolder.commands import doctor
from hotfolder.commands.agent import AgentStatus
from hotfolder.config import Config
from hotfolder.commands.doctor import FAIL, OK, WARN, Probes
from hotfolder.commands.models import GB, ModelState
from hotfolder.backends.memory import Machine
from hotfolder.weights import RepoState

BIG = Machine(ram=512 * GB, gpu_total=141 * GB, gpu_free=140 * GB, gpu_name="NVIDIA H200")


def _present(model, backend) -> ModelState:
    return ModelState(model, backend, (RepoState("r/x", None, int(model.size_gb * GB), Path("/snap"), None),))


def _missing(model, backend) -> ModelState:
    return ModelState(model, backend, (RepoState("r/x", None, 0, None, "not downloaded"),))


def _running(config: Config) -> AgentStatus:
    return AgentStatus("launchd", Path("/x.plist"), True, True, True, pid=os.getpid())


def _probes(tmp_path: Path, **kw) -> Probes:
    base = dict(
        platform="linux",
        version=lambda d: "1.0",
        ffmpeg=lambda: "/bin/sh",  # any executable file
        device=lambda backend: (OK, "cuda", "CUDA GPU test"),
        model_state=_present,
        disk_free=lambda p: 500 * GB,
        hub_cache=tmp_path / "hub",
        agent=_running,
        home=tmp_path / "home",
        memory=lambda: BIG,
    )
    base.update(kw)
    return Probes(**base)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    root = tmp_path / "root"
    root.mkdir()
    (root / "status.json").write_text(json.dumps(
        {"daemon": {"state": "running", "pid": os.getpid(), "heartbeat_unix": time.time()}}))
    return Config(root=root, cache_dir=tmp_path / "cache")


def _by_name(checks):
    return {c.name: c for c in checks}


def test_a_healthy_machine_is_all_ok_and_exits_0(config: Config, tmp_path: Path, capsys) -> None:
    checks = doctor.run_checks(config, _probes(tmp_path))
    assert [c for c in checks if c.status != OK] == []
    assert doctor.run_doctor(config, _probes(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "ffmpeg" in out and "weights ltx-2" in out


def test_a_missing_ffmpeg_fails_with_the_fix(config: Config, tmp_path: Path, capsys) -> None:
    def no_ffmpeg() -> str:
        raise RuntimeError("No ffmpeg exe could be found.")

    c = _by_name(doctor.run_checks(config, _probes(tmp_path, ffmpeg=no_ffmpeg)))["ffmpeg"]
    assert c.status == FAIL and "No ffmpeg exe" in c.detail and "imageio-ffmpeg" in c.fix
    assert doctor.run_doctor(config, _probes(tmp_path, ffmpeg=no_ffmpeg)) == 1
    out = capsys.readouterr().out
    assert "fail  ffmpeg" in out and "fix: " in out


def test_an_ffmpeg_path_that_is_not_executable_fails(config: Config, tmp_path: Path) -> None:
    c = _by_name(doctor.run_checks(config, _probes(tmp_path, ffmpeg=lambda: str(tmp_path / "nope"))))["ffmpeg"]
    assert c.status == FAIL


def test_missing_weights_fail_for_the_default_model_only(config: Config, tmp_path: Path) -> None:
    checks = _by_name(doctor.run_checks(config, _probes(tmp_path, model_state=_missing)))
    default = checks["weights ltx-2"]
    assert default.status == FAIL and default.fix == "hotfolder models pull ltx-2"
    assert checks["weights ltx-video"].status == OK and "not downloaded" in checks["weights ltx-video"].detail
    assert "weights tiny" not in checks  # built in code: nothing to check


def test_partial_weights_say_pull_resumes(config: Config, tmp_path: Path) -> None:
    def partial(model, backend):
        return ModelState(model, backend, (RepoState("r/x", None, 5 * GB, Path("/s"), "1 of 4 shards missing"),))

    c = _by_name(doctor.run_checks(config, _probes(tmp_path, model_state=partial)))["weights ltx-2"]
    assert c.status == FAIL and "1 of 4 shards missing" in c.detail and "resumes" in c.fix


def test_not_enough_disk_for_the_missing_default_model_fails(config: Config, tmp_path: Path) -> None:
    checks = _by_name(doctor.run_checks(config, _probes(tmp_path, model_state=_missing, disk_free=lambda p: 10 * GB)))
    assert checks["disk (weights)"].status == FAIL and "HF_HOME" in checks["disk (weights)"].fix
    assert checks["disk (cache)"].status == WARN  # 20 GiB cache cap > 10 GB free


def test_an_unwritable_root_fails_with_the_macos_privacy_hint(config: Config, tmp_path: Path) -> None:
    def denied(root: Path) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(root))

    linux = _by_name(doctor.run_checks(config, _probes(tmp_path, access=denied)))["root"]
    assert linux.status == FAIL and "Operation not permitted" in linux.detail and "Full Disk Access" not in linux.fix

    mac = _by_name(doctor.run_checks(config, _probes(tmp_path, access=denied, platform="darwin")))["root"]
    assert mac.status == FAIL and "Full Disk Access" in mac.fix
    assert str(os.path.realpath(doctor.Probes().python)) in mac.fix  # the exact binary to grant


@pytest.mark.unprivileged  # root writes anywhere; CI runs this as hotfolder-ci (.ci/run)
def test_a_really_unwritable_root_fails(config: Config, tmp_path: Path) -> None:
    config.root.chmod(0o500)
    try:
        c = _by_name(doctor.run_checks(config, _probes(tmp_path, access=doctor._access)))["root"]
    finally:
        config.root.chmod(0o700)
    assert c.status == FAIL


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (unwritable even for root)")
def test_a_root_that_exists_but_cannot_be_written_fails_even_for_root(tmp_path: Path) -> None:
    """CI runs as root, where chmod proves nothing: /proc/self is a folder no one can create files in."""
    config = Config(root=Path("/proc/self"))
    c = _by_name(doctor.run_checks(config, _probes(tmp_path, access=doctor._access)))["root"]
    assert c.status == FAIL and c.fix


def test_the_real_access_probe_leaves_nothing_behind(config: Config) -> None:
    before = sorted(os.listdir(config.root))
    doctor._access(config.root)
    assert sorted(os.listdir(config.root)) == before


def test_a_root_in_documents_on_macos_warns_even_when_this_terminal_can_read_it(tmp_path: Path) -> None:
    root = tmp_path / "home" / "Documents" / "Hotfolder"
    root.mkdir(parents=True)
    c = _by_name(doctor.run_checks(Config(root=root), _probes(tmp_path, platform="darwin")))["root"]
    assert c.status == WARN and "Documents" in c.detail and "Full Disk Access" in c.fix


def test_the_agent_not_installed_warns_and_installed_but_stopped_fails(config: Config, tmp_path: Path) -> None:
    absent = lambda c: AgentStatus("launchd", Path("/x.plist"), False, False, False)  # noqa: E731
    (config.root / "status.json").unlink()
    c = _by_name(doctor.run_checks(config, _probes(tmp_path, agent=absent)))["agent"]
    assert c.status == WARN and c.fix == "hotfolder agent install"

    stopped = lambda c: AgentStatus("launchd", Path("/x.plist"), True, True, False, last_exit="1")  # noqa: E731
    c = _by_name(doctor.run_checks(config, _probes(tmp_path, agent=stopped)))["agent"]
    assert c.status == FAIL


def test_an_agent_that_runs_but_never_writes_status_fails_with_the_privacy_hint(config: Config, tmp_path: Path) -> None:
    (config.root / "status.json").unlink()
    running_elsewhere = lambda c: AgentStatus("launchd", Path("/x.plist"), True, True, True, pid=999999)  # noqa: E731
    c = _by_name(doctor.run_checks(config, _probes(tmp_path, agent=running_elsewhere)))["agent"]
    assert c.status == FAIL and "Full Disk Access" in c.fix


def test_a_missing_backend_package_fails(config: Config, tmp_path: Path) -> None:
    version = lambda d: None if d == "diffusers" else "1.0"  # noqa: E731
    c = _by_name(doctor.run_checks(config, _probes(tmp_path, version=version)))["backend"]
    assert c.status == FAIL and "diffusers" in c.detail and "pip install" in c.fix


def test_an_old_python_fails(config: Config, tmp_path: Path) -> None:
    c = _by_name(doctor.run_checks(config, _probes(tmp_path, python_version=(3, 10, 12))))["python"]
    assert c.status == FAIL


def _real_doctor(tmp_path: Path, config_text: str) -> tuple[int, str, dict[str, str]]:
    """`hotfolder doctor` as a process, nothing replaced but HOME and an empty Hugging Face cache."""
    import subprocess
    import sys

    config_file = tmp_path / "config.toml"
    config_file.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTFOLDER_", "XDG_", "HF_"))}
    env.update(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "hotfolder", "doctor", "--root", str(tmp_path / "root"),
                          "--config", str(config_file)], capture_output=True, text=True, timeout=300, env=env)
    statuses = {}
    for line in run.stdout.splitlines():
        status, _, rest = line.partition("  ")
        if status.strip() in (OK, WARN, FAIL) and rest.strip():
            statuses[rest.strip().split("  ")[0].strip()] = status.strip()
    return run.returncode, run.stdout + run.stderr, statuses


def _summary_agrees(code: int, out: str, statuses: dict[str, str]) -> None:
    failed = sum(1 for s in statuses.values() if s == FAIL)
    warned = sum(1 for s in statuses.values() if s == WARN)
    assert f"{failed} failed, {warned} warnings, {len(statuses) - failed - warned} ok" in out, out
    assert code == (1 if failed else 0), out  # exit 1 exactly when a check failed


def test_the_real_doctor_fails_on_this_machine_when_the_default_models_weights_are_missing(tmp_path: Path) -> None:
    """No probe replaced: it finishes, offline, reports every check, and exits 1 because the Hugging Face cache
    it is given is empty (the default model, ltx-2, is not downloaded)."""
    code, out, statuses = _real_doctor(tmp_path, "")
    for name in ("python", "packages", "backend", "ffmpeg", "root", "agent", "weights ltx-2"):
        assert name in statuses, (name, out)
    assert statuses["weights ltx-2"] == FAIL and "fix: hotfolder models pull ltx-2" in out, out
    _summary_agrees(code, out, statuses)
    assert code == 1


def test_the_real_doctor_with_the_built_in_model_needs_no_weights(tmp_path: Path) -> None:
    code, out, statuses = _real_doctor(tmp_path, 'model = "tiny"\n')
    assert statuses.get("weights tiny") is None and statuses["ffmpeg"] == OK and statuses["root"] == OK, out
    assert not any(name.startswith("weights") and s == FAIL for name, s in statuses.items()), out
    _summary_agrees(code, out, statuses)


# -- answering in a few seconds: slow probes run beside the rest and are bounded ---------------------------------
def test_a_device_probe_that_hangs_is_reported_not_waited_for(config: Config, tmp_path: Path) -> None:
    import threading

    release = threading.Event()

    def hangs(backend: str):
        release.wait(60)  # a first `import torch` on a slow disk, a wedged GPU driver
        return OK, "cuda", "late"

    try:
        checks = _by_name(doctor.run_checks(config, _probes(tmp_path, device=hangs, device_timeout=0.3)))
    finally:
        release.set()
    c = checks["backend"]
    assert c.status == WARN and "did not answer within 0.3 s" in c.detail and "doctor" in c.fix
    assert checks["ffmpeg"].status == OK and checks["root"].status == OK  # the rest is still checked


def test_a_service_manager_that_hangs_is_reported_not_waited_for(config: Config, tmp_path: Path) -> None:
    import threading

    release = threading.Event()

    def hangs(config: Config):
        release.wait(60)
        return _running(config)

    try:
        c = _by_name(doctor.run_checks(config, _probes(tmp_path, agent=hangs, probe_timeout=0.3)))["agent"]
    finally:
        release.set()
    assert c.status == WARN and "did not answer within 0.3 s" in c.detail


def test_the_doctor_itself_never_imports_torch_and_asks_a_child_for_the_device(tmp_path: Path) -> None:
    """The device is probed in a child interpreter (bounded); the doctor's own process stays light."""
    import subprocess
    import sys

    script = ("import json, sys\nfrom pathlib import Path\nfrom hotfolder.config import Config\n"
              "from hotfolder.commands import doctor\n"
              "checks = doctor.run_checks(Config(root=Path(sys.argv[1])))\n"
              "print(json.dumps({'heavy': sorted({'torch', 'mlx', 'diffusers'} & set(sys.modules)),\n"
              "                  'backend': [c.detail for c in checks if c.name == 'backend']}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "root")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    [detail] = result["backend"]
    assert "device check failed" not in detail, detail  # the child answered (or, on a slow machine, timed out)
    assert " on cpu:" in detail or " on cuda:" in detail or " on mps:" in detail or "did not answer" in detail \
        or "not installed" in detail, detail


def test_without_a_user_bus_the_agent_check_says_why(config: Config, tmp_path: Path) -> None:
    no_bus = lambda c: AgentStatus("systemd", Path("/x.service"), True, False, False,  # noqa: E731
                                   unreachable="there is no systemd user manager for this login (no user bus)",
                                   detail="`loginctl enable-linger` ...")
    c = _by_name(doctor.run_checks(config, _probes(tmp_path, agent=no_bus)))["agent"]
    assert c.status == WARN and "no user bus" in c.detail and "enable-linger" in c.detail


# -- memory, said before it bites ------------------------------------------------------------------------------------
def test_each_models_memory_is_shown_for_this_machines_device(config: Config, tmp_path: Path) -> None:
    from hotfolder.backends import memory

    checks = _by_name(doctor.run_checks(config, _probes(tmp_path)))
    assert checks["memory"].status == OK and "512.0 GB of RAM" in checks["memory"].detail
    assert "the GPU NVIDIA H200 with 141.0 GB" in checks["memory"].detail
    ltx2 = checks["memory ltx-2"]
    est = memory.estimate(config.model_info("ltx-2"), "diffusers", "cuda")  # the device the probe answered
    assert ltx2.status == OK and ltx2.detail.startswith(f"diffusers on cuda: about {est.total / GB:.1f} GB")
    assert f"weights {est.weights / GB:.1f} GB bfloat16 + text encoder {est.text_encoder / GB:.1f} GB" in ltx2.detail
    assert "fits the GPU" in ltx2.detail
    assert not any(name.startswith("memory tiny") for name in checks)  # built in code: always fits


def test_a_default_model_too_big_for_this_machine_fails_with_the_numbers(config: Config, tmp_path: Path) -> None:
    """A 32 GB Mac-sized machine with no GPU: ltx-2 (the default) cannot fit, so every job would be refused."""
    small = Machine(ram=32 * GB)
    probes = _probes(tmp_path, memory=lambda: small, device=lambda backend: (OK, "mps", "Apple GPU"))
    checks = _by_name(doctor.run_checks(config, probes))
    c = checks["memory ltx-2"]
    assert c.status == FAIL and "diffusers on mps" in c.detail and "float32" in c.detail
    assert "this machine has 32.0 GB of memory" in c.detail and "hotfolder models list" in c.fix
    # Another model too big, whose weights are here: a warning (jobs that name it are refused).
    assert checks["memory ltx-2.3"].status == WARN and "refused" in checks["memory ltx-2.3"].fix
    assert doctor.run_doctor(config, probes) == 1


def test_another_model_too_big_and_not_downloaded_is_said_in_passing(config: Config, tmp_path: Path) -> None:
    small = Machine(ram=32 * GB)
    tiny_default = Config(root=config.root, cache_dir=config.cache_dir, model="tiny")
    checks = _by_name(doctor.run_checks(tiny_default, _probes(tmp_path, memory=lambda: small, model_state=_missing,
                                                              device=lambda backend: (WARN, "cpu", "no GPU"))))
    c = checks["memory ltx-2"]
    assert c.status == OK and "jobs naming it are refused here" in c.detail
