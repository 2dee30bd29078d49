"""Run the real `hotfolder` CLI with the test-only fake backend registered (used as a subprocess)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fake_backend  # noqa: E402

fake_backend.register()

from hotfolder.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
