"""Run the real `hotfolder` CLI with the test-only fake backend registered (used as a subprocess)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fake_backend  # noqa: E402

fake_backend.register()

import hotfolder.config as _config  # noqa: E402

_load_config = _config.load_config


def _fake_world(*args, **kwargs):
    """The fake daemon serves every job on the fake backend: every command of this runner judges jobs so
    (submit's weights check included: the fake backend needs no weights)."""
    if kwargs.get("backend") is None:
        kwargs["backend"] = "fake"
    return _load_config(*args, **kwargs)


_config.load_config = _fake_world

from hotfolder.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
