"""`hotfolder status` (and `--watch`), and where one job stands: read from the folders, never from the daemon.

Whether the daemon is alive is `folders/status.py`'s rule (a fresh heartbeat), the
same one `submit --wait`, `agent install` and `doctor` use: a job whose daemon is
dead is never shown as running. Where a job stands comes from status.json (queue
and running job) and the job's `processing/<job>/progress.json` (its stage and
step, rewritten several times a second), as the daemon writes them: `queued` with
a position, `loading`, `generating` step k/n, `decoding`, `encoding`, `delivering`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from hotfolder.config import Config
from hotfolder.folders import status as status_file
from hotfolder.fsutil import read_json

# How the daemon's stage names read to a person; a stage not listed here is shown as the daemon wrote it.
STAGES = {
    "queued": "queued",
    "starting": "checking the cache",
    "waiting": "waiting for a worker",
    "loading": "loading the model",
    "generating": "generating",
    "denoise": "generating",
    "stage1": "generating (stage 1 of 2)",
    "stage2": "refining (stage 2 of 2)",
    "decoding": "decoding",
    "encoding": "encoding",
    "delivering": "delivering",
}


@dataclass(frozen=True)
class JobState:
    """Where one submitted job stands, as the folders say."""

    stage: str  # "inbox" | "claimed" | "no daemon" | a daemon stage (queued, loading, generating, ...)
    step: int = 0
    total: int = 0
    position: int | None = None
    queue_length: int | None = None
    eta_s: float | None = None
    job_id: str | None = None
    detail: str = ""
    phase: str | None = None  # a two-stage pipeline's "stage1" / "stage2" while generating

    def key(self) -> tuple[Any, ...]:
        """What makes a new line when not on a terminal: the stage and queue place, not each step."""
        return (self.stage, self.phase, self.position, self.job_id, self.total)

    def line(self, *, steps: bool = True, count: bool = True) -> str:
        """In words; `steps`: with step k/n and the time left; `count`: else with the number of steps."""
        if self.stage == "inbox":
            return "in the inbox, waiting for the daemon to take it"
        if self.stage == "no daemon":
            return f"waiting: {self.detail}"
        if self.stage == "claimed":
            return f"taken by the daemon (job {self.job_id}), being checked"
        text = STAGES.get(self.stage, self.stage)
        if self.phase and self.phase in STAGES and self.phase != "denoise":
            text = STAGES[self.phase]
        if self.stage == "queued" and self.position is not None:
            of = f" of {self.queue_length}" if self.queue_length else ""
            job = f", job {self.job_id}" if self.job_id else ""
            text += f" (position {self.position}{of}{job})"
        if steps and self.total:
            eta = f", about {self.eta_s:.0f} s left" if self.eta_s is not None else ""
            text += f": step {self.step}/{self.total}{eta}"
        elif self.total and count:
            text += f" ({self.total} steps)"
        return text


def _progress_of(config: Config, job_id: str) -> dict[str, Any]:
    """The running job's progress.json (its folder is the job id without a batch entry's `.n`)."""
    try:
        data = read_json(config.processing / job_id.split(".", 1)[0] / "progress.json")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _running(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Every running entry (several with a cluster's workers); a status.json from before lists one."""
    jobs = status.get("running_jobs")
    if isinstance(jobs, list):
        return [r for r in jobs if isinstance(r, dict)]
    return [status["running"]] if isinstance(status.get("running"), dict) else []


def claimed(config: Config) -> dict[str, str]:
    """Jobs in processing/: source (inbox-relative name as dropped) -> job id, from each job.json."""
    found: dict[str, str] = {}
    for record in sorted(config.processing.glob("*/job.json")):
        try:
            rec = json.loads(record.read_text())
            found[str(rec["source"])] = str(rec["job_id"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def job_state(config: Config, source: str, seen: status_file.Seen | None = None) -> JobState:
    """Where the job dropped as `source` stands now."""
    seen = seen or status_file.read(config.root)
    status = seen.status or {}
    if seen.alive:
        running = next((r for r in _running(status) if r.get("source") == source), {})
        if running:
            progress = {**(running.get("progress") or {}), **_progress_of(config, str(running.get("job_id", "")))}
            return JobState(stage=str(progress.get("stage") or "running"), step=int(progress.get("step") or 0),
                            total=int(progress.get("total_steps") or 0), eta_s=progress.get("eta_s"),
                            position=progress.get("position"), job_id=running.get("job_id"),
                            phase=progress.get("phase"))
        queue = status.get("queue") or []
        for q in queue:
            if q.get("source") == source:
                return JobState(stage="queued", position=q.get("position"), queue_length=len(queue),
                                job_id=q.get("job_id"))
    job_id = claimed(config).get(source)
    if not seen.alive:
        where = f"it is in {config.processing}" if job_id else f"it is in {config.inbox}"
        return JobState(stage="no daemon", job_id=job_id,
                        detail=f"no daemon is running on {config.root} ({where}); start one with `hotfolder run` "
                               "or `hotfolder agent install`")
    if job_id:
        return JobState(stage="claimed", job_id=job_id)
    return JobState(stage="inbox")


# -- hotfolder status -------------------------------------------------------------------------------
def render(config: Config, seen: status_file.Seen | None = None) -> str:
    """The status report as text."""
    seen = seen or status_file.read(config.root)
    status, alive, age = seen.status, seen.alive, seen.age_s
    system = {"darwin": "macOS", "linux": "Linux"}.get(sys.platform, sys.platform)
    came = config.origins.get("root", f"the default on {system}")
    lines = [f"Root: {config.root} ({came})"]
    if status is None and getattr(seen, "unreadable", None):
        lines.append(seen.unreadable)  # says which file, why, and what to do
        return "\n".join(lines)
    if status is None:
        lines.append(f"No daemon has run on {config.root} (no status.json). Start one with `hotfolder run`.")
        return "\n".join(lines)
    d = status["daemon"]
    if alive:
        lines.append(f"Daemon running: pid {d.get('pid')} (heartbeat {age:.0f} s ago)")
    elif d.get("state") == "stopped":
        lines.append(f"No daemon running: the last one (pid {d.get('pid')}) stopped at {d.get('heartbeat')}. "
                     "Start one with `hotfolder run`.")
    else:
        lines.append(f"No daemon running: the last heartbeat (pid {d.get('pid')}) is {age or 0:.0f} s old; "
                     "it probably crashed. Start one with `hotfolder run`.")
    if alive and status.get("paused"):
        lines.append(f"Paused: {status['paused']}")
    if alive:
        for running in _running(status):
            state = job_state(config, str(running.get("source")), seen)
            on = f" on {running['worker']}" if running.get("worker") and running["worker"] != "local" else ""
            lines.append(f"Running{on}: {running.get('source')} ({running.get('job_id')}): {state.line()}")
        workers = status.get("workers")
        if isinstance(workers, dict):
            lines.append(f"Cluster: {workers.get('address')} ({workers.get('placement')})")
            for w in workers.get("workers") or []:
                where = f"{w.get('host')} node {w.get('node')} pid {w.get('pid')}" if w.get("pid") else "not placed yet"
                doing = "busy" if w.get("busy") else "free"
                trouble = f": {w['trouble']}" if w.get("trouble") else ""
                lines.append(f"  {w.get('name')}: {w.get('state')}, {doing} ({where}){trouble}")
        queue = status.get("queue") or []
        lines.append(f"Queue: {len(queue)} job(s)")
        for q in queue[:20]:
            lines.append(f"  {q['position']:>3}. {q['source']} (priority {q['priority']}, {q['job_id']})")
    else:
        # A dead daemon runs nothing: what it had claimed waits in processing/ and resumes at the next start.
        waiting = claimed(config)
        if waiting:
            lines.append(f"Waiting in {config.processing} for a daemon: {len(waiting)} job(s) "
                         "(they resume when one starts)")
            for source, job_id in list(waiting.items())[:20]:
                lines.append(f"       {source} ({job_id})")
    recent = status.get("recent") or []
    if recent:
        lines.append("Recent:")
        for r in recent[:10]:
            lines.append(f"  {r['status']:6} {r['source']} -> {r['path']}")
    return "\n".join(lines)


def show_status(config: Config, *, as_json: bool = False) -> int:
    seen = status_file.read(config.root)
    if as_json:
        print(json.dumps({"root": str(config.root), "alive": seen.alive, "heartbeat_age_s": seen.age_s,
                          "status": seen.status}, indent=2))
        return 0
    print(render(config, seen))
    return 0


def watch(config: Config, *, interval: float = 1.0, out: TextIO | None = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Redraw the status every `interval` seconds until Ctrl-C (a terminal is cleared; a pipe gets each
    report that changed, under a time stamp)."""
    out = out or sys.stdout
    tty = out.isatty()
    last = None
    try:
        while True:
            text = render(config)
            if tty:
                out.write("\033[H\033[2J" + text + f"\n\n(every {interval:g} s; Ctrl-C to stop)\n")
                out.flush()
            elif text != last:
                out.write(f"--- {time.strftime('%H:%M:%S')}\n{text}\n")
                out.flush()
            last = text
            sleep(interval)
            if not tty and _reader_gone(out):
                raise BrokenPipeError("the reader of the output went away")  # `| head -5`: end as peers do
    except KeyboardInterrupt:
        return 0


def _reader_gone(out: TextIO) -> bool:
    """Whether the pipe `out` writes to has lost its reader (checked without writing: the report may not change)."""
    import select

    try:
        poller = select.poll()
        poller.register(out.fileno(), select.POLLERR | select.POLLHUP)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False
