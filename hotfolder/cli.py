"""The `hotfolder` command: parse arguments, build a Config, call one function.

Exit codes (SPEC section 7): 0 success (a graceful stop too), 1 a job failed,
2 invalid input, usage, or refused. Exceptions become messages and exit codes
here and nowhere else.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from hotfolder import __version__
from hotfolder.config import BACKEND_MODULES, FORMATS, Config, load_config
from hotfolder.errors import HotfolderError, UsageError


GLOBAL_OPTIONS = ("--root", "--config")


def _common(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    """--root and --config: accepted before the command and after it (`hotfolder --root X status`,
    `hotfolder status --root X`); given in both places, the one after the command wins."""
    g = p.add_argument_group("global options (before or after the command)")
    default = None if top else argparse.SUPPRESS
    g.add_argument("--root", type=Path, default=default, metavar="DIR",
                   help="the hotfolder root (default: ~/Movies/Hotfolder on macOS, ~/Videos/Hotfolder on Linux; "
                        "env HOTFOLDER_ROOT; `hotfolder config path` shows the one in use)")
    g.add_argument("--config", type=Path, default=default, metavar="FILE",
                   help="config.toml to read (default: the user config file)")


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
        return value
    return parse


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `hotfolder` parser, and each command's own parser (for its help and its flags)."""
    parser = argparse.ArgumentParser(
        prog="hotfolder", description="Drop a prompt file into a folder, get a video with sound.",
        epilog="`hotfolder COMMAND --help` lists a command's own flags.",
    )
    parser.add_argument("--version", action="version", version=f"hotfolder {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, help: str, *, common: bool = True, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=kw.pop("description", help), **kw)
        if common:
            _common(p)
        commands[name] = p
        return p

    p = command("run", "run the daemon in the foreground (what launchd and systemd start)")
    p.add_argument("--backend", choices=["auto", *BACKEND_MODULES], help="backend for jobs that say auto")
    p.add_argument("--model", help="model for jobs that name none (a name from the model table, or a folder)")
    p.add_argument("--once", action="store_true", help="process what is in the inbox, then exit")
    p.add_argument("--poll", action="store_true", help="poll the inbox (network or sync volumes)")
    p.add_argument("-v", "--verbose", action="store_true")

    p = command("submit", "put jobs into the inbox atomically (checked first with the daemon's rules)",
                description="Check each job with the daemon's own rules, then move it into the inbox in one step "
                            "(never over another job). An input is prompt text, a job file (.toml, .txt), a job "
                            "folder, or - for a prompt on standard input. A prompt that begins with - goes after "
                            "--: hotfolder submit -- \"-a prompt\".")
    p.add_argument("inputs", nargs="*", metavar="PROMPT|FILE|FOLDER|-",
                   help="prompt text, job files, job folders, or - for standard input")
    p.add_argument("-p", "--prompt", action="append", default=[], metavar="TEXT",
                   help="TEXT is a prompt, never a path (repeatable)")
    p.add_argument("--preset", metavar="NAME",
                   help="apply the preset NAME (drops the job into inbox/NAME/); by default a file or folder "
                        "in a folder named after a preset gets that preset")
    p.add_argument("--format", choices=[*FORMATS, "custom"])
    p.add_argument("--mode", choices=["preview", "production"])
    p.add_argument("--duration", type=_positive(float), metavar="S", help="seconds")
    p.add_argument("--fps", type=_positive(float), metavar="N", help="frames per second (1 to 60)")
    p.add_argument("--width", type=_positive(int), metavar="PX", help="with --height: the size (overrides the format)")
    p.add_argument("--height", type=_positive(int), metavar="PX")
    p.add_argument("--steps", type=_positive(int), metavar="N", help="denoising steps (1 to 200)")
    p.add_argument("--negative-prompt", metavar="TEXT", help="what the video should not show")
    p.add_argument("--guidance", metavar="X", help=argparse.SUPPRESS)  # refused with a message: not a job key
    p.add_argument("--seed", help='an integer, or "random"')
    p.add_argument("--model")
    p.add_argument("--priority", type=int)
    p.add_argument("--name", help="base name of the job and its result files")
    p.add_argument("--image", type=Path, metavar="F", help="image-to-video: the video starts from this image")
    p.add_argument("--strength", type=float, metavar="X", help="with --image: how closely to follow it (0 < X <= 1)")
    p.add_argument("--audio", type=Path, metavar="F", help="a voice-over (wav, mp3, m4a, aiff, flac) that replaces "
                   "the generated sound, fitted to the video's length")
    p.add_argument("--tts", metavar="TEXT", help="narrate TEXT over the video (macOS say, else espeak-ng)")
    p.add_argument("--narrate", action="store_true", help="narrate the prompt itself (like --tts with the prompt)")
    p.add_argument("--wait", action="store_true",
                   help="follow the job (progress on stderr) and print the .mp4 path last on stdout")
    p.add_argument("--timeout", type=_positive(float), metavar="S", help="with --wait: give up after S seconds")

    p = command("validate", "check job files or job folders without submitting them")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE|FOLDER")
    p.add_argument("--preset", help="check as if dropped into inbox/PRESET/ (default: the folder name, when it "
                                    "names a preset)")

    p = command("status", "the root in use, whether the daemon is up, the queue, the running job, recent results")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=_positive(float), default=1.0, metavar="S", help="with --watch (default 1)")

    p = command("cancel", "stop a queued or running job (it ends in failed/ as cancelled)")
    p.add_argument("job", help="a job id, or the job file's name as dropped")

    p = command("retry", "move failed jobs back into the inbox")
    p.add_argument("job", nargs="?", help="a folder name in failed/, a job id, or the job file's name")
    p.add_argument("--all", action="store_true", help="every job in failed/")

    p = command("cache", "the result cache: stats, prune (evict to the size cap), clear")
    p.add_argument("action", choices=["stats", "prune", "clear"])
    p.add_argument("--json", action="store_true", help="machine-readable (stats)")

    p = command("agent", "run the daemon at login: launchd agent (macOS), systemd user unit (Linux)")
    p.add_argument("action", choices=["install", "uninstall", "status", "restart"])
    p.add_argument("--quick-action", action="store_true",
                   help="install: also add the Finder Quick Action 'Make video with hotfolder' (macOS)")
    p.add_argument("--i-granted-full-disk-access", dest="full_disk_access", action="store_true",
                   help="install: accept a root in Desktop/Documents/Downloads/iCloud (macOS privacy)")

    p = command("config", "the config file: init (a documented default), show (values and origins), path "
                          "(the file and the root in use)")
    p.add_argument("action", choices=["init", "show", "path"])
    p.add_argument("--force", action="store_true", help="init: replace an existing file (kept as .bak)")
    p.add_argument("--json", action="store_true", help="show: machine-readable")

    command("doctor", "check python, packages, backend, weights, ffmpeg, disk, folders, agent")

    p = command("gallery", "rewrite the outbox's index.html now and print its path")
    p.add_argument("--open", action="store_true", help="open the page in the web browser")

    p = command("models", "the model table (list) and downloading weights (pull NAME)")
    p.add_argument("action", choices=["list", "pull"])
    p.add_argument("name", nargs="?", help="pull: the model to download (see `hotfolder models list`)")
    p.add_argument("--backend", choices=["auto", *BACKEND_MODULES], help="the backend whose weights to list or pull")

    p = command("demo", "end to end on the built-in tiny model, offline, in a fresh temporary root", common=False)
    p.add_argument("--keep-going", action="store_true", help=argparse.SUPPRESS)
    return parser, commands


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Global options before the command, the command, then its own arguments in any order (options
    and inputs may mix: `submit a.toml --format tiktok b.toml`); `--` ends the options."""
    parser, commands = build_parser()
    argv = list(argv)
    head: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in GLOBAL_OPTIONS and i + 1 < len(argv):
            head += argv[i:i + 2]
            i += 2
        elif argv[i].startswith(tuple(f"{o}=" for o in GLOBAL_OPTIONS)):
            head += argv[i].split("=", 1)
            i += 1
        else:
            break
    if i >= len(argv) or argv[i] not in commands:
        return parser.parse_args(argv)  # --help, --version, no command, an unknown one: argparse says so
    top = parser.parse_args(head)
    args = commands[argv[i]].parse_intermixed_args(argv[i + 1:])
    args.command = argv[i]
    for name in ("root", "config"):
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(top, name))
    return args


def _config(args: argparse.Namespace, **flags: object) -> Config:
    from hotfolder.job.spec import check_config

    config = load_config(getattr(args, "config", None), root=getattr(args, "root", None), **flags)
    check_config(config)  # [defaults] and presets with the job rules: a mistake stops every command at start
    return config


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.command is None:
            build_parser()[0].print_help()
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
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader went away (`hotfolder config show | head -1`): stop quietly, as `cat` and `ls` do.

    What is still buffered for stdout can never be written: point stdout at /dev/null so that
    the flush at exit does not fail again with a traceback.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE: what a shell reports for a command the closed pipe stopped


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

        if args.guidance is not None:
            raise UsageError("--guidance: a job's guidance is not a job key yet; each model uses its own "
                             "(`hotfolder config show` lists it under [models]). Change it there, in the config "
                             "file's [models.NAME] table, for every job of that model.")
        if (args.width is None) != (args.height is None):
            raise UsageError("give --width and --height together (or neither, for the format's size).")
        config = _config(args)
        return submit(config, _submit_request(args))
    if args.command == "validate":
        from hotfolder.commands.submit import validate

        return validate(_config(args), args.files, preset=args.preset)
    if args.command == "status":
        from hotfolder.commands.status import show_status, watch

        if args.watch:
            if args.json:
                raise UsageError("--watch and --json do not go together; poll `hotfolder status --json` instead.")
            return watch(_config(args), interval=args.interval)
        return show_status(_config(args), as_json=args.json)
    if args.command == "cancel":
        from hotfolder.commands import control

        return control.cancel(_config(args), args.job)
    if args.command == "retry":
        from hotfolder.commands import control

        if args.all == (args.job is not None):
            raise UsageError("retry needs a job (a folder name in failed/, a job id or the file's name), "
                             "or --all for every failed job.")
        config = _config(args)
        return control.retry_all(config) if args.all else control.retry(config, args.job)
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
    if args.command == "gallery":
        from hotfolder.commands import gallery

        return gallery.command(_config(args), open_page=args.open)
    if args.command == "models":
        from hotfolder.commands import models
        return models.command(_config(args, backend=args.backend), args.action, args.name)
    if args.command == "demo":
        from hotfolder.commands.demo import run_demo

        if args.root is not None or args.config is not None:
            raise UsageError("demo makes its own fresh root under the system's temporary folder and reads no "
                             "config file: run it without --root and --config.")
        return run_demo()
    raise UsageError(f"unknown command {args.command}")


def _submit_request(args: argparse.Namespace):
    """`hotfolder submit`'s arguments as a SubmitRequest; standard input is read here, once, if an input is `-`."""
    from hotfolder.commands.submit import SubmitRequest

    return SubmitRequest(
        inputs=tuple(args.inputs), prompts=tuple(args.prompt), preset=args.preset, format=args.format,
        mode=args.mode, duration=args.duration, seed=args.seed, model=args.model, priority=args.priority,
        negative_prompt=args.negative_prompt, steps=args.steps, fps=args.fps, width=args.width, height=args.height,
        name=args.name, image=args.image, strength=args.strength, audio=args.audio, tts=args.tts,
        narrate=args.narrate, wait=args.wait, timeout=args.timeout,
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
