"""`hotfolder config init|show|path`: the config file a person edits, and where each value comes from.

`init` writes a documented config.toml whose settings are the built-in defaults,
commented out (`#key = value`), so the file documents everything but changes
nothing until a line is uncommented; the defaults are read from the code, so the
file cannot drift from them. `show` prints every value in effect with its origin:
default, the config file, HOTFOLDER_ROOT, or a flag.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Mapping

import tomli_w

from hotfolder import fsutil
from hotfolder.config import (BUILTIN_MODELS, BUILTIN_PRESETS, CONFIG_KEYS, JOB_DEFAULTS, Config,
                              default_config_file, default_root, load_config)
from hotfolder.errors import UsageError

TABLES = ("defaults", "presets", "models")
SCALARS = tuple(k for k in CONFIG_KEYS if k not in TABLES)  # follows config.py: a new key is shown at once


def _toml_value(value: Any) -> str:
    """A value as TOML writes it on one line (`1.0`, `"text"`, `true`, `{ a = 1 }`)."""
    if isinstance(value, Path):
        value = str(value)
    if value is None:
        return "(unset)"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else json.dumps(key)


def default_text(root: Path | None = None) -> str:
    """The documented config.toml `init` writes."""
    d = Config(root=root or default_root())
    home = str(Path.home())

    def path(p: Path) -> str:
        s = str(p)
        return "~" + s[len(home):] if s.startswith(home + os.sep) else s

    def setting(key: str, value: Any) -> str:
        return f"#{key} = {_toml_value(value)}"

    root_line = f"root = {_toml_value(path(d.root))}" if root else setting("root", path(d.root))
    defaults = "\n".join(setting(k, v) for k, v in JOB_DEFAULTS.items() if k not in ("backend",))
    text = _documented(d, setting, path, root_line, defaults)
    # A key added to config.py after this text was written still appears, with its default,
    # above the first table (below it, it would belong to that table).
    others = [k for k in SCALARS if not re.search(rf"^#?{k} =", text, re.M)]
    if others:
        lines = "".join(setting(k, getattr(d, k)) + "\n" if getattr(d, k) is not None
                        else f"# {k} is unset by default\n" for k in others)
        marker = "# Defaults for every job file"
        text = text.replace(marker, f"# Other settings (see the README):\n{lines}\n{marker}", 1)
    return text


def _documented(d: Config, setting: Any, path: Any, root_line: str, defaults: str) -> str:
    return f"""\
# hotfolder configuration.
#
# Every setting below shows its built-in default, commented out: remove the leading "#"
# of a line to change it. Precedence, lowest first: built-in defaults < this file <
# the HOTFOLDER_ROOT environment variable < command-line flags (--root, --backend, --model).
# `hotfolder config show` prints each value in effect and where it came from.
# After editing, restart the daemon: `hotfolder agent restart` (or stop and start `hotfolder run`).

# The hot folder: inbox/, processing/, outbox/, failed/ and status.json live here.
# On macOS keep it outside Desktop, Documents, Downloads and iCloud Drive: macOS hides those
# from background agents unless their Python has Full Disk Access (see docs/mac.md).
{root_line}

# A file is taken only after its size and modification time stayed the same this long (seconds).
# Raise it for slow network or sync folders (e.g. 5.0 for a Dropbox or Syncthing inbox).
{setting("settle_seconds", d.settle_seconds)}
# File events are only hints: the inbox is also rescanned this often (seconds).
{setting("rescan_seconds", d.rescan_seconds)}
# Poll the inbox instead of relying on file events: needed on network volumes (SMB, NFS)
# and for files that sync clients create without an event on this Mac. Same as `hotfolder run --poll`.
{setting("polling", d.polling)}

# The model and backend for jobs that name none: a name from [models] (see `hotfolder models list`)
# or a folder of weights; backend auto | mlx | diffusers.
{setting("model", d.model)}
{setting("backend", d.backend)}

# A failing generation (out of memory, a crash) is tried this many times in all, then goes to failed/.
{setting("max_attempts", d.max_attempts)}
# The first retry waits this many seconds; each later one waits 4 times longer (at most 5 minutes).
{setting("retry_backoff_seconds", getattr(d, "retry_backoff_seconds", 5.0))}
# Free the model's memory after this many minutes without a job (0: keep it loaded forever).
{setting("idle_unload_minutes", getattr(d, "idle_unload_minutes", 30.0))}
# The largest prompt or job file accepted, in bytes.
{setting("max_prompt_bytes", d.max_prompt_bytes)}
# The largest image or audio file a job may name, in bytes.
{setting("max_attachment_bytes", getattr(d, "max_attachment_bytes", 2 * 1024**3))}
# How long a loose job file waits for the files it names to arrive beside it (seconds).
# A sync client may deliver the job file before its image: raise it for slow syncs.
{setting("attachment_wait_seconds", getattr(d, "attachment_wait_seconds", 300.0))}

# A desktop notification when a job finishes or fails (macOS Notification Center, notify-send on Linux).
{setting("notifications", d.notifications)}

# Identical requests are served from this cache without touching the model; the least recently
# used entries are evicted above cache_max_bytes ({d.cache_max_bytes // 1024**3} GiB).
{setting("cache_max_bytes", d.cache_max_bytes)}
{setting("cache_dir", path(d.cache_dir))}
# The daemon's JSON-lines log, and its state.
{setting("log_dir", path(d.log_dir))}
{setting("state_dir", path(d.state_dir))}

# MLX backend (Apple Silicon). Keep the Gemma text encoder loaded between jobs; false loads it
# for each job: slower, but about 24 GB less memory (for Macs with 64 GB or less).
{setting("mlx_keep_text_encoder", getattr(d, "mlx_keep_text_encoder", True))}
# MLX memory and buffer-cache limits in GB. Unset by default (MLX decides); these values are examples.
#mlx_memory_limit_gb = 48.0
#mlx_cache_limit_gb = 8.0

# Refuse, before loading, a model whose memory estimate (`hotfolder models list`) exceeds this machine's
# memory; false loads it anyway (with swap, or where the estimate is too cautious): the system may then
# kill the daemon for memory, which the journal survives (the job is tried max_attempts times).
{setting("memory_check", getattr(d, "memory_check", True))}

# Where generation runs: "local" (this machine, one resident model) or "ray" (the GPUs of a Ray cluster,
# each keeping its own copy of the model; pip install 'hotfolder[ray]', see docs/cluster.md).
{setting("executor", getattr(d, "executor", "local"))}
# The Ray cluster: "auto" (started with `ray start` on this machine), "HOST:6379" or "ray://HOST:10001".
{setting("ray_address", getattr(d, "ray_address", "auto"))}
# Cluster workers, one job each at a time. Unset by default: one per GPU (or mlx resource) in the cluster,
# one per node on a cluster with neither; this value is an example.
#workers = 4

# Defaults for every job file (a job's own keys, and its inbox/<preset>/ folder, win).
#[defaults]
{defaults}

# Presets: a job dropped into inbox/<name>/ gets these keys. Built in: {", ".join(BUILTIN_PRESETS)}
# (each sets its format). Add your own, e.g. inbox/longform/:
#[presets.longform]
#mode = "production"
#duration = 10.0

# Models: the built-in table is {", ".join(BUILTIN_MODELS)}. Change an entry or add one, e.g.
# a fine-tune in the Hugging Face cache (download it with `hotfolder models pull my-ltx`):
#[models.my-ltx]
#family = "ltx2"
#diffusers_repo = "your-name/your-ltx2-finetune"
#size_gb = 42.0
"""


def init(config_file: Path | None, *, root: Path | None = None, force: bool = False) -> int:
    """Write the documented default config; an existing file is kept unless --force (then backed up)."""
    path = (config_file or default_config_file()).expanduser()
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; edit it, or run `hotfolder config init --force` to replace it "
                         f"(the old one is kept as {path.name}.bak).")
    text = default_text(root.expanduser().absolute() if root else None)
    tomllib.loads(text)  # never write a file load_config would reject
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".bak"))
    fsutil.write_atomic(path, text.encode("utf-8"))
    print(path)
    return 0


def show_path(config_file: Path | None, root: Path | None = None) -> int:
    """The config file's path (first line), then the root in use and where that came from."""
    path = (config_file or default_config_file()).expanduser()
    print(path)
    if not path.exists():
        print("(it does not exist yet: `hotfolder config init` writes a documented one)", file=sys.stderr)
    try:
        config = load_config(config_file, root=root)
        came = config.origins.get("root", f"the default on {_system()}")
        print(f"root: {config.root} ({came})")
    except UsageError as e:  # a broken file: the path is still worth knowing
        print(f"root: unknown, the config file cannot be read ({e})", file=sys.stderr)
    return 0


def _system() -> str:
    return {"darwin": "macOS", "linux": "Linux"}.get(sys.platform, sys.platform)


def origins(config: Config) -> dict[str, dict[str, Any]]:
    """Every value in effect and where it came from (as `load_config` recorded it), grouped:
    settings, defaults, presets, models."""
    path = (config.config_file or default_config_file()).expanduser()
    came = config.origins
    settings: dict[str, Any] = {}
    for key in SCALARS:
        value = getattr(config, key)
        settings[key] = {"value": str(value) if isinstance(value, Path) else value,
                         "origin": came.get(key, "default")}
    defaults = {k: {"value": v, "origin": came.get(f"defaults.{k}", "default")}
                for k, v in config.job_defaults.items()}
    presets = {k: {"value": dict(v), "origin": came.get(f"presets.{k}", "built in")}
               for k, v in config.presets.items()}
    models = {}
    for name, m in config.models.items():
        origin = came.get(f"models.{name}", "built in")
        shown = ("family", "diffusers_repo", "mlx_repo", "mlx_text_encoder_repo", "revision", "size_gb", "tiny",
                 "local_path")
        models[name] = {"value": {k: getattr(m, k) for k in shown if getattr(m, k) not in (None, False, 0.0)},
                        "origin": origin}
    return {"config_file": {"value": str(path), "origin": "exists" if path.is_file() else "not found"},
            "settings": settings, "defaults": defaults, "presets": presets, "models": models}


def show(config: Config, *, as_json: bool = False) -> int:
    """Print the configuration in effect, each value with its origin."""
    info = origins(config)
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    cf = info["config_file"]
    print(f"# config file: {cf['value']} ({cf['origin']})")
    rows: list[tuple[str, str]] = [(f"{k} = {_toml_value(v['value'])}", v["origin"])
                                   for k, v in info["settings"].items()]
    for table in ("defaults", "presets", "models"):
        rows.append(("", ""))
        rows.append((f"[{table}]", ""))
        for k, v in info[table].items():
            rows.append((f"{k} = {_toml_value(v['value'])}", v["origin"]))
    width = min(60, max(len(r[0]) for r in rows))
    for text, origin in rows:
        print(f"{text:<{width}}  # {origin}" if origin else text)
    return 0


def command(action: str, *, config_file: Path | None, root: Path | None, force: bool = False,
            as_json: bool = False) -> int:
    """`hotfolder config ACTION`: init and path work even when the current file is broken."""
    if action == "init":
        return init(config_file, root=root, force=force)
    if action == "path":
        return show_path(config_file, root)
    config = load_config(config_file, root=root)
    return show(config, as_json=as_json)

