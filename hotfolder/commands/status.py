"""`hotfolder status`: what the daemon is doing, read from status.json (never from the daemon itself).

Whether the daemon is alive is `folders/status.py`'s rule (a fresh heartbeat), the
same one `submit --wait`, `agent install` and `doctor` use.
"""

from __future__ import annotations

import json

from hotfolder.config import Config
from hotfolder.folders import status as status_file


def show_status(config: Config, *, as_json: bool = False) -> int:
    seen = status_file.read(config.root)
    status, alive, age = seen.status, seen.alive, seen.age_s
    if as_json:
        print(json.dumps({"alive": alive, "heartbeat_age_s": age, "status": status}, indent=2))
        return 0
    if status is None:
        print(f"No daemon has run on {config.root} (no status.json). Start one with `hotfolder run`.")
        return 0
    d = status["daemon"]
    if alive:
        print(f"Daemon running: pid {d['pid']} on {d['root']} (heartbeat {age:.0f} s ago)")
    elif d.get("state") == "stopped":
        print(f"No daemon running on {config.root}: the last one (pid {d['pid']}) stopped at {d['heartbeat']}.")
    else:
        print(f"No daemon running on {config.root}: the last heartbeat (pid {d['pid']}) is {age:.0f} s old; "
              "it probably crashed. Start one with `hotfolder run`.")
    running = status.get("running")
    if running:
        p = running.get("progress") or {}
        eta = f", ETA {p['eta_s']:.0f} s" if p.get("eta_s") is not None else ""
        print(f"Running: {running['source']} ({running['job_id']}): {p.get('stage', '?')} "
              f"{p.get('step', 0)}/{p.get('total_steps', 0)} ({p.get('percent', 0):.0f}%{eta})")
    queue = status.get("queue") or []
    print(f"Queue: {len(queue)} job(s)")
    for q in queue[:20]:
        print(f"  {q['position']:>3}. {q['source']} (priority {q['priority']}, {q['job_id']})")
    recent = status.get("recent") or []
    if recent:
        print("Recent:")
        for r in recent[:10]:
            print(f"  {r['status']:6} {r['source']} -> {r['path']}")
    return 0
