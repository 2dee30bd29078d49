"""`hotfolder config init|show|path`: the documented default file and the origin of every value."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path


from hotfolder.commands import configfile
from hotfolder.cli import main
from hotfolder.config import CONFIG_KEYS, Config, load_config

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
