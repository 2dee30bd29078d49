"""`hotfolder demo` (and `make demo`): the real daemon, end to end, offline, on the tiny model.

A fresh root under the system temp dir, the example jobs dropped into its inbox,
the daemon run with `--once` on the built-in `tiny` model (random weights: the
videos are noise, but every line of the real pipeline, encoder and spool runs).
The root is kept and the result paths printed; the last line of the output is the
path of an MP4 alone, so a script can open it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hotfolder import log
from hotfolder.config import Config
from hotfolder.daemon.daemon import Daemon
from hotfolder.job.names import is_job_file_name

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "jobs"
FALLBACK_JOBS = {
    "lake.toml": 'prompt = "A wide aerial shot of a mountain lake at golden hour, camera slowly descending"\n',
    "tiktok/street-food.txt": "A close-up of sizzling street food at night, steam rising, neon reflections\n",
}


def _drop_examples(inbox: Path) -> list[str]:
    """Copy examples/jobs/ into the inbox (preset subfolders kept), like a person would."""
    files = {p.relative_to(EXAMPLES).as_posix(): p.read_bytes() for p in sorted(EXAMPLES.rglob("*"))
             if p.is_file() and is_job_file_name(p.name)} if EXAMPLES.is_dir() else {}
    if not files:  # installed without the repository's examples/
        files = {rel: text.encode() for rel, text in FALLBACK_JOBS.items()}
    for rel, data in files.items():
        dest = inbox / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return list(files)


def run_demo() -> int:
    root = Path(tempfile.mkdtemp(prefix="hotfolder-demo-"))
    config = Config(
        root=root,
        model="tiny",
        backend="diffusers",
        settle_seconds=0.2,
        rescan_seconds=0.5,
        cache_dir=root / "cache",
        log_dir=root / "logs",
        notifications=False,
    )
    log.setup(config.log_dir)
    Daemon(config).spool.ensure_folders()
    dropped = _drop_examples(config.inbox)
    print(f"hotfolder demo: root {root}")
    print("hotfolder demo: model 'tiny' has RANDOM weights: the videos and sounds are noise. "
          "It runs the real pipeline, daemon and encoder offline.")
    print(f"hotfolder demo: dropped {len(dropped)} job(s): {', '.join(dropped)}")
    code = Daemon(config, once=True).run()
    results = sorted(config.outbox.glob("*/*.mp4"))
    failures = sorted(config.failed.glob("*/error.txt"))
    for mp4 in results:
        meta = json.loads(mp4.with_suffix(".json").read_text())
        print(f"result: {mp4}  ({meta['width']}x{meta['height']}, {meta['num_frames']} frames, "
              f"audio: {meta['audio']}, generate {meta['timings']['generate_s']} s, "
              f"load {meta['timings']['load_s']} s)")
    for err in failures:
        print(f"FAILED: {err.parent}\n{err.read_text()}")
    print(f"hotfolder demo: {len(results)} result(s) in {config.outbox}")
    if failures or len(results) < len(dropped):
        return 1
    # The last line is a video's path alone, for scripts: `open "$(hotfolder demo | tail -n 1)"`.
    print(results[0])
    return code
