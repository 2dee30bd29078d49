"""Logging: JSON lines to a rotating file, readable lines on the terminal, one log per job.

Every line logged while a job runs carries its `job_id` (bound with structlog's
contextvars), and is also appended, readable, to that job's own `job.log`, which
ends up beside the video in the result folder. Fields with nothing in them (None,
"", [], {}) are left out of every line. The JSON file's timestamps are ISO 8601 with
the local offset; the terminal and the job logs show the local time, short.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

_job_logs: dict[str, Path] = {}
_lock = threading.Lock()
_configured = False


def attach_job_log(job_id: str, path: Path) -> None:
    """From now on, lines bound to `job_id` are also appended to `path`."""
    with _lock:
        _job_logs[job_id] = path


def detach_job_log(job_id: str) -> None:
    with _lock:
        _job_logs.pop(job_id, None)


def _drop_empty(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Leave out fields with nothing in them: `attachments=None` says nothing."""
    return {k: v for k, v in event_dict.items() if k == "event" or not _empty(v)}


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, dict, set)) and not value)


def _timestamp(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """ISO 8601 with the local offset (2026-11-21T10:15:00.123+01:00): readable anywhere the file is read."""
    event_dict["timestamp"] = datetime.now().astimezone().isoformat(timespec="milliseconds")
    return event_dict


def _short(timestamp: str) -> str:
    """The terminal's and job logs' form of a timestamp: local time, to the second."""
    return timestamp[:19].replace("T", " ")


def _short_timestamp(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    if isinstance(event_dict.get("timestamp"), str):
        event_dict["timestamp"] = _short(event_dict["timestamp"])
    return event_dict


def job_line(event: str, *, level: str = "info", timestamp: str | None = None, **fields: Any) -> str:
    """One line as it appears in a job's log (and its result's .log), newline included."""
    stamp = _short(timestamp or datetime.now().astimezone().isoformat(timespec="milliseconds"))
    extras = " ".join(f"{k}={v}" for k, v in fields.items() if not _empty(v))
    return f"{stamp} {level:7} {event} {extras}".rstrip() + "\n"


def _tee_to_job_log(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    job_id = event_dict.get("job_id")
    if job_id:
        with _lock:
            path = _job_logs.get(job_id)
        if path is not None:
            fields = {k: v for k, v in event_dict.items() if k not in ("event", "timestamp", "level", "job_id", "logger")}
            line = job_line(str(event_dict.get("event")), level=event_dict.get("level", "info"),
                            timestamp=event_dict.get("timestamp"), **fields)
            try:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(line)
            except OSError:
                pass
    return event_dict


def setup(log_dir: Path | None, *, verbose: bool = False) -> None:
    """Configure structlog once per process: stderr for people, a JSON file for machines."""
    global _configured
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        _timestamp,
        _drop_empty,
        _tee_to_job_log,
    ]
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_hotfolder", False):
            root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _short_timestamp,
                structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
            ],
            foreign_pre_chain=shared,
        )
    )
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console._hotfolder = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if log_dir is not None:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            file = logging.handlers.RotatingFileHandler(
                log_dir / "hotfolder.log", maxBytes=10 * 1024**2, backupCount=5, encoding="utf-8"
            )
            file.setFormatter(
                structlog.stdlib.ProcessorFormatter(
                    processors=[
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.JSONRenderer(),
                    ],
                    foreign_pre_chain=shared,
                )
            )
            file.setLevel(logging.DEBUG)
            file._hotfolder = True  # type: ignore[attr-defined]
            root.addHandler(file)
        except OSError as e:
            print(f"hotfolder: cannot write logs to {log_dir}: {e}", file=sys.stderr)
    root.setLevel(logging.DEBUG)
    logging.getLogger("watchdog").setLevel(logging.CRITICAL)  # its stop races log errors; we watch liveness
    for noisy in ("PIL", "urllib3", "filelock", "httpx", "huggingface_hub", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not _configured:
        structlog.configure(
            processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
        _configured = True


def get(name: str = "hotfolder") -> Any:
    return structlog.get_logger(name)
