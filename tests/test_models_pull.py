"""`hotfolder models pull` on a terminal: the real CLI and the real huggingface_hub download, from a local Hub.

README: "`hotfolder models pull NAME` downloads them into the Hugging Face cache with a progress bar". The Hub
is a small HTTP server here (the three calls a snapshot download makes: the revision, the file tree, each file),
and the command runs on a pseudo-terminal, where tqdm draws its bars (on a pipe it draws none, by design).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

COMMIT = "c0ffee" + "0" * 34
REPO = "me/mini-ltx"
FILES = {
    "model_index.json": json.dumps({"_class_name": "LTXPipeline", "vae": ["diffusers", "AutoencoderKLLTXVideo"],
                                    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}).encode(),
    "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.safetensors": os.urandom(3 * 1024 * 1024),
    "scheduler/scheduler_config.json": b"{}",
    "other-checkpoint.safetensors": os.urandom(1024),  # not a pipeline component: never fetched
}
# An LTX-2 pipeline repository, with production's latent upsampler folder, and the repository of its stage-2 LoRA.
REPO2 = "me/mini-ltx2"
FILES2 = {
    "model_index.json": json.dumps({"_class_name": "LTX2Pipeline", "vae": ["diffusers", "AutoencoderKLLTX2Video"],
                                    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}).encode(),
    "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.safetensors": os.urandom(1024 * 1024),
    "scheduler/scheduler_config.json": b"{}",
    "latent_upsampler/config.json": b"{}",
    "latent_upsampler/diffusion_pytorch_model.safetensors": os.urandom(512 * 1024),
}
LORA_REPO, LORA = "me/loras", "mini-distilled-lora-384.safetensors"
LORA_FILES = {LORA: os.urandom(256 * 1024), "another-lora.safetensors": os.urandom(1024)}
REPOS = {REPO: FILES, REPO2: FILES2, LORA_REPO: LORA_FILES}


class _Hub(BaseHTTPRequestHandler):
    served: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _repo(self) -> str | None:
        path = self.path.split("?")[0]
        return next((r for r in REPOS if f"/{r}/" in path or path.endswith(f"/{r}")), None)

    def _file(self, head: bool) -> None:
        repo = self._repo()
        name = self.path.split(f"/{repo}/resolve/{COMMIT}/", 1)[-1].split("?")[0]
        data = REPOS.get(repo, {}).get(name)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if not head:
            self.served.append(name if repo == REPO else f"{repo}/{name}")
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802
        self._file(head=True)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        repo = self._repo()
        files = REPOS.get(repo) if repo else None
        if files is None:
            self.send_error(404)
        elif path.startswith(f"/api/models/{repo}/revision/"):
            self._json({"id": repo, "_id": "0", "sha": COMMIT, "private": False, "tags": [], "downloads": 0,
                        "likes": 0, "siblings": [{"rfilename": f} for f in files]})
        elif path.startswith(f"/api/models/{repo}/tree/"):
            self._json([{"type": "file", "oid": hashlib.sha1(d).hexdigest(), "size": len(d), "path": f}
                        for f, d in files.items()])
        elif path.startswith(f"/{repo}/resolve/"):
            self._file(head=False)
        else:
            self.send_error(404)


@pytest.fixture
def hub() -> Iterator[str]:
    _Hub.served = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, name="fake-hub")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _on_a_terminal(argv: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str]:
    """Run `argv` with stdout and stderr on a pseudo-terminal; (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0x0: no bar fits
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, out.decode(errors="replace")


def test_models_pull_downloads_with_a_progress_bar_on_a_terminal(hub: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[models.mini]\nfamily = "ltx"\ndiffusers_repo = "{REPO}"\nhas_audio = false\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTFOLDER_", "XDG_", "HF_", "TQDM_"))}
    env.update(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub, HF_HUB_DISABLE_XET="1",
               TERM="xterm", COLUMNS="100")
    code, out = _on_a_terminal([sys.executable, "-m", "hotfolder", "models", "pull", "mini", "--config",
                                str(config), "--root", str(tmp_path / "root")], env)
    assert code == 0, out
    assert "mini is ready" in out, out
    assert re.search(r"Fetching 4 files: +100%\|", out), out  # tqdm bars, drawn to their end: the files ...
    assert re.search(r"Download complete: .*\| +3\.15MB", out), out  # ... and the bytes (the 3 MB weights file)
    snapshot = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    weights = snapshot / "vae" / "diffusion_pytorch_model.safetensors"
    assert weights.read_bytes() == FILES["vae/diffusion_pytorch_model.safetensors"]
    assert "other-checkpoint.safetensors" not in _Hub.served  # only what the pipeline loads


def test_models_pull_fetches_the_latent_upsampler_and_the_stage2_lora_with_the_model(hub: str, tmp_path: Path) -> None:
    """An LTX-2 model on non-distilled weights: the pipeline, its latent_upsampler/ folder, and the one LoRA file
    production's stage 2 loads, from its own repository (the repository's other files stay remote)."""
    config = tmp_path / "config.toml"
    config.write_text(f'[models.mini2]\nfamily = "ltx2"\ndiffusers_repo = "{REPO2}"\n'
                      f'stage2_lora_repo = "{LORA_REPO}"\nstage2_lora = "{LORA}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTFOLDER_", "XDG_", "HF_", "TQDM_"))}
    env.update(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub, HF_HUB_DISABLE_XET="1",
               TERM="xterm", COLUMNS="100")
    common = ["--config", str(config), "--root", str(tmp_path / "root")]
    code, out = _on_a_terminal([sys.executable, "-m", "hotfolder", "models", "pull", "mini2", *common], env)
    assert code == 0, out
    assert f"- {LORA_REPO}/{LORA}" in out and "mini2 is ready" in out, out
    assert "Latent upsampler: present. Stage-2 LoRA: present." in out, out
    hub_dir = tmp_path / "hf" / "hub"
    lora = hub_dir / f"models--{LORA_REPO.replace('/', '--')}" / "snapshots" / COMMIT / LORA
    assert lora.read_bytes() == LORA_FILES[LORA]
    up = hub_dir / f"models--{REPO2.replace('/', '--')}" / "snapshots" / COMMIT / "latent_upsampler"
    assert (up / "diffusion_pytorch_model.safetensors").read_bytes() == FILES2["latent_upsampler/"
                                                                              "diffusion_pytorch_model.safetensors"]
    assert f"{LORA_REPO}/another-lora.safetensors" not in _Hub.served

    # `models list` (offline) now says the model is present, production's files included.
    listed = subprocess.run([sys.executable, "-m", "hotfolder", "models", "list", *common], capture_output=True,
                            text=True, timeout=120, env={**env, "HF_HUB_OFFLINE": "1"})
    row = next(line for line in listed.stdout.splitlines() if line.startswith("mini2 "))
    assert row.rstrip().endswith("present"), listed.stdout
