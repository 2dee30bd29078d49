"""`hotfolder config init|show|path`: the documented default file and the origin of every value."""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from pathlib import Path

import pytest

from hotfolder.commands import configfile
from hotfolder.cli import main
from hotfolder.config import CONFIG_KEYS, Config, load_config
from hotfolder.errors import UsageError

SETTING = re.compile(r"^#(?=[\w\[])")  # "#key = value" or "#[table]": a commented-out setting, not prose


def _uncomment(text: str) -> str:
    return "\n".join(SETTING.sub("", line) for line in text.splitlines()) + "\n"


def test_init_writes_a_file_that_changes_nothing_until_edited(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert configfile.init(path) == 0
    from_file = load_config(path, env={})
    plain = Config(root=from_file.root)
    for key in ("settle_seconds", "rescan_seconds", "backend", "model", "max_prompt_bytes", "max_attempts",
                "cache_max_bytes", "polling", "notifications", "cache_dir", "log_dir", "state_dir"):
        assert getattr(from_file, key) == getattr(plain, key), key
    assert dict(from_file.job_defaults) == dict(plain.job_defaults)


def test_every_config_key_is_documented_with_its_real_default(tmp_path: Path) -> None:
    text = configfile.default_text()
    for key in CONFIG_KEYS:
        assert re.search(rf"^#?\[?{key}\b", text, re.M), f"{key} is not in the default config"
    # Uncommenting every setting gives a valid config whose values are the built-in defaults.
    path = tmp_path / "all.toml"
    path.write_text(_uncomment(text))
    data = tomllib.loads(path.read_text())
    assert set(data) == set(CONFIG_KEYS)
    config = load_config(path, env={})
    plain = Config(root=config.root)
    for key in ("settle_seconds", "rescan_seconds", "backend", "model", "max_prompt_bytes", "max_attempts",
                "cache_max_bytes", "polling", "notifications", "cache_dir", "log_dir", "state_dir", "root"):
        assert getattr(config, key) == getattr(plain, key), key
    # (config.py moves `backend` out of [defaults] onto Config.backend once a [defaults] table exists)
    assert {k: v for k, v in config.job_defaults.items() if k != "backend"} == \
        {k: v for k, v in plain.job_defaults.items() if k != "backend"}
    assert config.presets["longform"] == {"mode": "production", "duration": 10.0}  # the documented example
    assert config.models["my-ltx"].diffusers_repo == "your-name/your-ltx2-finetune"


def test_init_never_overwrites_without_force_and_keeps_a_backup(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c" / "config.toml"
    assert main(["config", "init", "--config", str(path), "--root", str(tmp_path / "r")]) == 0
    assert tomllib.loads(path.read_text())["root"] == str(tmp_path / "r")  # --root is written as a real setting
    path.write_text('settle_seconds = 3.0\n')
    assert main(["config", "init", "--config", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert path.read_text() == 'settle_seconds = 3.0\n'
    assert main(["config", "init", "--config", str(path), "--force"]) == 0
    assert (path.parent / "config.toml.bak").read_text() == 'settle_seconds = 3.0\n'


def test_path_prints_the_file_even_before_it_exists(tmp_path: Path, capsys) -> None:
    assert main(["config", "path", "--config", str(tmp_path / "x.toml")]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(tmp_path / "x.toml") and "config init" in out.err


def test_show_gives_every_value_its_origin(tmp_path: Path, capsys, monkeypatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text('settle_seconds = 4.0\nroot = "/from/file"\n[defaults]\nduration = 8.0\nmodel = "ltx-video"\n'
                    '[presets.longform]\nmode = "production"\n[models.ltx-2]\nsize_gb = 50.0\n')
    monkeypatch.setenv("HOTFOLDER_ROOT", str(tmp_path / "from-env"))
    assert main(["config", "show", "--json", "--config", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    s = info["settings"]
    assert s["root"] == {"value": str(tmp_path / "from-env"), "origin": "env HOTFOLDER_ROOT"}
    assert s["settle_seconds"] == {"value": 4.0, "origin": f"config file {path}"}
    assert s["rescan_seconds"] == {"value": 5.0, "origin": "default"}
    assert s["model"]["value"] == "ltx-video" and s["model"]["origin"] == f"config file {path} [defaults]"
    assert info["defaults"]["duration"] == {"value": 8.0, "origin": f"config file {path} [defaults]"}
    assert info["defaults"]["fps"]["origin"] == "default"
    assert info["presets"]["longform"]["origin"] == f"config file {path}"
    assert info["presets"]["tiktok"]["origin"] == "built in"
    assert info["models"]["ltx-2"]["origin"] == f"built in, changed in config file {path}"
    assert info["models"]["ltx-2"]["value"]["size_gb"] == 50.0

    assert main(["config", "show", "--config", str(path), "--root", str(tmp_path / "flag")]) == 0
    text = capsys.readouterr().out
    assert re.search(rf'^root = "{re.escape(str(tmp_path / "flag"))}"\s+# flag --root$', text, re.M)
    assert re.search(r"^settle_seconds = 4\.0\s+# config file ", text, re.M)
    assert re.search(r'^tiktok = \{ format = "tiktok" \}\s+# built in$', text, re.M)


def test_show_names_the_key_when_the_file_is_wrong(tmp_path: Path, capsys) -> None:
    path = tmp_path / "config.toml"
    path.write_text("settle_secnds = 2\n")
    assert main(["config", "show", "--config", str(path)]) == 2
    assert "settle_secnds" in capsys.readouterr().err
    assert main(["config", "path", "--config", str(path)]) == 0  # path and init still work on a broken file


def test_a_key_added_to_config_py_later_still_appears_at_the_top_level(monkeypatch) -> None:
    documented = configfile._documented

    def without_polling(*args):  # as if `polling` were new in config.py and not yet written up here
        return documented(*args).replace("#polling = false\n", "")

    monkeypatch.setattr(configfile, "_documented", without_polling)
    text = configfile.default_text()
    assert "# Other settings" in text
    data = tomllib.loads(_uncomment(text))
    assert data["polling"] is False  # top level, not inside the last table


def test_every_plain_config_key_is_a_config_field_and_loads_with_its_type(tmp_path: Path) -> None:
    """load_config copies plain keys onto Config by name: each must be a field, numbers become floats."""
    import dataclasses

    from hotfolder.config import CONFIG_KEYS, PATH_KEYS, TABLE_KEYS, Config, load_config

    fields = {f.name for f in dataclasses.fields(Config)}
    plain = [k for k in CONFIG_KEYS if k not in TABLE_KEYS and k != "root"]
    assert set(plain) <= fields
    cfg = tmp_path / "c.toml"
    cfg.write_text('settle_seconds = 2\nmax_attempts = 3\npolling = true\ncache_dir = "~/x"\n')
    c = load_config(cfg, root=tmp_path, env={})
    assert c.settle_seconds == 2.0 and isinstance(c.settle_seconds, float)
    assert c.max_attempts == 3 and c.polling is True and c.cache_dir == Path("~/x").expanduser()
    assert set(PATH_KEYS) <= fields


# --- the config file is checked like a job file (issues 11.9, 12.12) ------------------------------

def _refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError) as info:
        load_config(path, root=tmp_path, env={})
    message = str(info.value)
    assert message.startswith(f"config file {path}:"), message
    return message


@pytest.mark.parametrize("text, expected", [
    ("settle_secnds = 2\n", "key 'settle_secnds' is not a setting; did you mean 'settle_seconds'?"),
    ("duration = 8.0\n", "key 'duration' is a job key: put it under [defaults]"),
    ("[output]\ngif = false\n", "key 'output' is a job key: put it under [defaults]"),
    ("frobnicate = 1\n", "the settings are attachment_wait_seconds, backend, cache_dir"),
    ("settle_seconds = nan\n", "settle_seconds = nan is not allowed: give seconds, 0 or more"),
    ("settle_seconds = -1\n", "settle_seconds = -1 is not allowed: give seconds, 0 or more"),
    ("settle_seconds = \"2\"\n", 'settle_seconds = "2" is not allowed: give seconds, 0 or more, not text'),
    ("rescan_seconds = 0\n", "rescan_seconds = 0 is not allowed: give seconds greater than 0"),
    ("rescan_seconds = inf\n", "rescan_seconds = inf is not allowed"),
    ("max_attempts = 0\n", "max_attempts = 0 is not allowed: give a whole number, 1 or more"),
    ("max_attempts = 2.5\n", "max_attempts = 2.5 is not allowed: give a whole number, 1 or more"),
    ("cache_max_bytes = -1\n", "cache_max_bytes = -1 is not allowed: give a whole number of bytes, 0 or more"),
    ("max_prompt_bytes = 0\n", "max_prompt_bytes = 0 is not allowed: give a whole number of bytes greater than 0"),
    ("max_attachment_bytes = 0\n", "max_attachment_bytes = 0 is not allowed"),
    ("attachment_wait_seconds = -5\n", "attachment_wait_seconds = -5 is not allowed: give seconds, 0 or more"),
    ("retry_backoff_seconds = nan\n", "retry_backoff_seconds = nan is not allowed"),
    ("idle_unload_minutes = -1\n", "idle_unload_minutes = -1 is not allowed: give minutes, 0 or more"),
    ("mlx_memory_limit_gb = 0\n", "mlx_memory_limit_gb = 0 is not allowed: give GiB (2**30 bytes) greater than 0"),
    ("polling = \"yes\"\n", 'polling = "yes" is not allowed: give true or false (without quotes), not text'),
    ("backend = \"cuda\"\n", 'backend = "cuda" is not allowed: give "auto", "diffusers" or "mlx"'),
    ("cache_dir = \"\"\n", 'cache_dir = "" is not allowed: give a folder'),
    ("defaults = 3\n", "defaults = 3 is not allowed: write it as a table, a line [defaults]"),
    ("[presets]\nlongform = 3\n", "presets.longform = 3 is not allowed: write it as a table, a line"
                                  " [presets.longform]"),
    ("[presets.\"../x\"]\nmode = \"production\"\n", 'a preset\'s name is its inbox folder\'s (inbox/NAME/)'),
    ("[models.my-ltx]\ndiffuser_repo = \"me/x\"\n", "key 'models.my-ltx.diffuser_repo' is not a model key; "
                                                  "did you mean 'diffusers_repo'?"),
    ("[models.my-ltx]\nvram = 3\n", "the model keys are family, diffusers_repo, mlx_repo"),
    ("[models.my-ltx]\nfamily = \"ltx3\"\ndiffusers_repo = \"me/x\"\n",
     'models.my-ltx.family = "ltx3" is not allowed: give "ltx2" or "ltx"'),
    ("[models.ltx-2]\nmax_duration = -3\n", "models.ltx-2.max_duration = -3 is not allowed: give seconds greater"),
    ("[models.my-ltx]\nfamily = \"ltx2\"\n", "[models.my-ltx] names no weights: give diffusers_repo, mlx_repo or"
                                            " local_path"),
    ("settle_seconds = 2 x\n", "the TOML is not valid at line 1, column 20"),
    ("a = " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
])
def test_a_mistake_in_the_config_file_names_the_key_the_value_and_what_is_allowed(
        tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _refused(tmp_path, text)


def test_every_mistake_is_listed_at_once(tmp_path: Path) -> None:
    message = _refused(tmp_path, "settle_seconds = -1\nrescan_seconds = 0\n")
    assert "settle_seconds = -1" in message and "rescan_seconds = 0" in message


def test_a_config_file_that_is_a_pipe_is_refused_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    os.mkfifo(path)
    with pytest.raises(UsageError) as info:
        load_config(path, root=tmp_path, env={})
    assert "the file is a named pipe (FIFO), not a plain file" in str(info.value)


def test_a_linked_config_file_is_fine(tmp_path: Path) -> None:
    """Unlike the inbox, the config file may be a link (dotfiles kept in a repository)."""
    real = tmp_path / "dotfiles" / "hotfolder.toml"
    real.parent.mkdir()
    real.write_text("settle_seconds = 2.5\n")
    (tmp_path / "config.toml").symlink_to(real)
    assert load_config(tmp_path / "config.toml", root=tmp_path, env={}).settle_seconds == 2.5


def test_valid_edge_values_load(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("settle_seconds = 0\ncache_max_bytes = 0\nattachment_wait_seconds = 0\nmax_attempts = 1\n"
                    "idle_unload_minutes = 0\nmlx_cache_limit_gb = 0\n[models.mine]\nlocal_path = \"/w\"\n")
    config = load_config(path, root=tmp_path, env={})
    assert (config.settle_seconds, config.cache_max_bytes, config.max_attempts) == (0.0, 0, 1)
    assert math.isclose(config.attachment_wait_seconds, 0.0) and config.models["mine"].local_path == "/w"


@pytest.mark.parametrize("text, expected", [
    ("[defaults]\nduration = -1\n", "duration = -1 is not allowed: give seconds greater than 0"),
    ("[defaults]\nduraton = 8\n", "key 'duraton' is not a job key; did you mean 'duration'?"),
    ("[defaults]\nformat = \"tiktock\"\n", "did you mean 'tiktok'?"),
    ("[defaults.output]\ngif = \"no\"\n", 'output.gif = "no" is not allowed: give true or false'),
    ("[presets.longform]\nmode = \"slow\"\n", 'mode = "slow" is not allowed: give "preview" or "production"'),
    ("[defaults]\nmodel = \"ltx3\"\n", 'model = "ltx3" is not a known model'),
    ("[defaults]\nfps = 24\nsettle_seconds = 2\n", "key 'settle_seconds' is a setting, not a job key: put it "
                                                  "at the top of the config file, above the first [table] line"),
])
def test_the_job_keys_of_the_config_file_are_checked_with_the_job_rules(
        tmp_path: Path, text: str, expected: str) -> None:
    from hotfolder.job.spec import check_config

    path = tmp_path / "config.toml"
    path.write_text(text)
    config = load_config(path, root=tmp_path, env={})
    with pytest.raises(UsageError) as info:
        check_config(config)
    message = str(info.value)
    assert message.startswith(f"config file {path}:") and expected in message, message
    assert "the config's" in message or "preset 'longform'" in message


def test_the_documented_default_file_passes_the_job_rules(tmp_path: Path) -> None:
    from hotfolder.job.spec import check_config

    path = tmp_path / "all.toml"
    path.write_text(_uncomment(configfile.default_text()))
    check_config(load_config(path, env={}))


def test_validate_and_run_refuse_a_bad_config_at_start(root) -> None:
    root.write_config(rescan_seconds=0, settle_seconds=float("nan"))
    (root.inbox / "lake.toml").write_text('prompt = "A lake"\n')
    for args in (("validate", str(root.inbox / "lake.toml")), ("run", "--once")):
        out = root.cli(*args, fake=True, timeout=60)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "rescan_seconds = 0 is not allowed: give seconds greater than 0" in out.stderr
        assert "settle_seconds = nan is not allowed" in out.stderr
        assert "Traceback" not in out.stderr
    assert (root.inbox / "lake.toml").is_file() and root.failures() == []
