"""The `hotfolder` command: parse arguments, build a Config, call one function.

Exit codes (SPEC section 7): 0 success (a graceful stop too), 1 a job failed,
2 invalid input, usage, or refused. Exceptions become messages and exit codes
here and nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from hotfolder import __version__
from hotfolder.config import BACKEND_MODULES, FORMATS, Config, load_config
from hotfolder.errors import HotfolderError, UsageError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, help="the hotfolder root (default: ~/Movies/Hotfolder; env HOTFOLDER_ROOT)")
    p.add_argument("--config", type=Path, help="config.toml to read (default: the user config file)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotfolder", description="Drop a prompt file into a folder, get a video with sound."
    )
    parser.add_argument("--version", action="version", version=f"hotfolder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon in the foreground (what launchd starts)")
    _common(p)
    p.add_argument("--backend", choices=["auto", *BACKEND_MODULES], help="backend for jobs that say auto")
    p.add_argument("--model", help="model for jobs that name none (a name from the model table, or a folder)")
    p.add_argument("--once", action="store_true", help="process what is in the inbox, then exit")
    p.add_argument("--poll", action="store_true", help="poll the inbox (network or sync volumes)")
    p.add_argument("-v", "--verbose", action="store_true")

    p = sub.add_parser("submit", help="put a job into the inbox atomically")
    _common(p)
    p.add_argument("inputs", nargs="+", metavar="PROMPT|FILE|-", help="prompt text, job files, or - for stdin")
    p.add_argument("--format", choices=[*FORMATS, "custom"])
    p.add_argument("--mode", choices=["preview", "production"])
    p.add_argument("--duration", type=float, metavar="S")
    p.add_argument("--seed", help='an integer, or "random"')
    p.add_argument("--model")
    p.add_argument("--priority", type=int)
    p.add_argument("--name", help="base name of the result files")
    p.add_argument("--image", type=Path, metavar="F", help="image-to-video: the video starts from this image")
    p.add_argument("--strength", type=float, metavar="X", help="with --image: how closely to follow it (0 < X <= 1)")
    p.add_argument("--audio", type=Path, metavar="F", help="a voice-over (wav, mp3, m4a, aiff, flac) that replaces "
                   "the generated sound, fitted to the video's length")
    p.add_argument("--tts", metavar="TEXT", help="narrate TEXT over the video (macOS say, else espeak-ng)")
    p.add_argument("--narrate", action="store_true", help="narrate the prompt itself (like --tts with the prompt)")
    p.add_argument("--wait", action="store_true", help="wait for the result; print the .mp4 path")
    p.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up after S seconds")

    p = sub.add_parser("validate", help="check job files without submitting them")
    _common(p)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--preset", help="check as if dropped into inbox/PRESET/")

    p = sub.add_parser("status", help="is the daemon up; queue, running job, recent results")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable")

    p = sub.add_parser("cancel", help="stop a queued or running job (it ends in failed/ as cancelled)")
    _common(p)
    p.add_argument("job", help="a job id, or the job file's name as dropped")

    p = sub.add_parser("retry", help="move a failed job back into the inbox")
    _common(p)
    p.add_argument("job", help="a folder name in failed/, a job id, or the job file's name")

    p = sub.add_parser("cache", help="the result cache: stats, prune (evict to the size cap), clear")
    _common(p)
    p.add_argument("action", choices=["stats", "prune", "clear"])
    p.add_argument("--json", action="store_true", help="machine-readable (stats)")

    p = sub.add_parser("agent", help="run the daemon at login: launchd agent (macOS), systemd user unit (Linux)")
    _common(p)
    p.add_argument("action", choices=["install", "uninstall", "status", "restart"])
    p.add_argument("--quick-action", action="store_true",
                   help="install: also add the Finder Quick Action 'Make video with hotfolder' (macOS)")
    p.add_argument("--i-granted-full-disk-access", dest="full_disk_access", action="store_true",
                   help="install: accept a root in Desktop/Documents/Downloads/iCloud (macOS privacy)")

    p = sub.add_parser("config", help="the config file: init (a documented default), show (values and origins), path")
    _common(p)
    p.add_argument("action", choices=["init", "show", "path"])
    p.add_argument("--force", action="store_true", help="init: replace an existing file (kept as .bak)")
    p.add_argument("--json", action="store_true", help="show: machine-readable")

    p = sub.add_parser("doctor", help="check python, packages, backend, weights, ffmpeg, disk, folders, agent")
    _common(p)

    p = sub.add_parser("models", help="the model table (list) and downloading weights (pull NAME)")
    _common(p)
    p.add_argument("action", choices=["list", "pull"])
    p.add_argument("name", nargs="?", help="pull: the model to download (see `hotfolder models list`)")
    p.add_argument("--backend", choices=["auto", *BACKEND_MODULES], help="the backend whose weights to list or pull")

    p = sub.add_parser("demo", help="end to end on the built-in tiny model, offline, in a fresh temporary root")
    p.add_argument("--keep-going", action="store_true", help=argparse.SUPPRESS)
    return parser


def _config(args: argparse.Namespace, **flags: object) -> Config:
    return load_config(getattr(args, "config", None), root=getattr(args, "root", None), **flags)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _dispatch(args)
    except HotfolderError as e:
        print(f"hotfolder: {e}", file=sys.stderr)
        if e.hint:
            print(f"hotfolder: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from hotfolder import log

    if args.command == "run":
        from hotfolder.daemon.daemon import Daemon

        config = _config(args, backend=args.backend, model=args.model, polling=True if args.poll else None)
        if config.model_info(config.model) is None:
            raise UsageError(f"model {config.model!r} is not in the model table ({', '.join(config.models)}) "
                             "and is not a folder of weights.")
        log.setup(config.log_dir, verbose=args.verbose)
        return Daemon(config, once=args.once).run()
    if args.command == "submit":
        from hotfolder.commands.submit import submit

        config = _config(args)
        return submit(config, _submit_request(args))
    if args.command == "validate":
        from hotfolder.commands.submit import validate

        return validate(_config(args), args.files, preset=args.preset)
    if args.command == "status":
        from hotfolder.commands.status import show_status

        return show_status(_config(args), as_json=args.json)
    if args.command in ("cancel", "retry"):
        from hotfolder.commands import control
        config = _config(args)
        return control.cancel(config, args.job) if args.command == "cancel" else control.retry(config, args.job)
    if args.command == "cache":
        return _cache_command(_config(args), args.action, as_json=args.json)
    if args.command == "agent":
        from hotfolder.commands import agent
        return agent.main(_config(args), args.action, config_file=args.config, quick_action=args.quick_action,
                          fda_confirmed=args.full_disk_access)
    if args.command == "config":
        from hotfolder.commands import configfile
        return configfile.command(args.action, config_file=args.config, root=args.root, force=args.force,
                                  as_json=args.json)
    if args.command == "doctor":
        from hotfolder.commands.doctor import run_doctor

        return run_doctor(_config(args))
    if args.command == "models":
        from hotfolder.commands import models
        return models.command(_config(args, backend=args.backend), args.action, args.name)
    if args.command == "demo":
        from hotfolder.commands.demo import run_demo

        return run_demo()
    raise UsageError(f"unknown command {args.command}")


def _submit_request(args: argparse.Namespace):
    """`hotfolder submit`'s arguments as a SubmitRequest; standard input is read here, once, if an input is `-`."""
    from hotfolder.commands.submit import SubmitRequest

    return SubmitRequest(
        inputs=tuple(args.inputs), format=args.format, mode=args.mode, duration=args.duration, seed=args.seed,
        model=args.model, priority=args.priority, name=args.name, image=args.image, strength=args.strength,
        audio=args.audio, tts=args.tts, narrate=args.narrate, wait=args.wait, timeout=args.timeout,
        stdin_text=sys.stdin.read() if "-" in args.inputs else None,
    )


def _cache_command(config: Config, action: str, *, as_json: bool) -> int:
    import dataclasses
    import json

    from hotfolder.cache import ResultCache

    cache = ResultCache(config.cache_dir, config.cache_max_bytes)
    if action == "prune":
        r = cache.prune()
        print(f"pruned {config.cache_dir}: evicted {r.evicted} entries ({_size(r.freed_bytes)}), "
              f"removed {r.stale_temps} abandoned writes")
    elif action == "clear":
        print(f"cleared {config.cache_dir}: removed {cache.clear()} entries")
    else:
        st = cache.stats()
        if as_json:
            print(json.dumps({"dir": str(config.cache_dir), **dataclasses.asdict(st)}, indent=2))
        else:
            print(f"cache {config.cache_dir}: {st.entries} entries, {_size(st.bytes)} of {_size(st.max_bytes)}; "
                  f"{st.hits} hits, {st.misses} misses (hit rate {st.hit_rate:.0%}); "
                  f"{st.evictions} evicted, {st.dropped} corrupt entries dropped")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


if __name__ == "__main__":
    sys.exit(main())
