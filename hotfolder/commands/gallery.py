"""`hotfolder gallery [--open]`: rewrite the outbox's index.html now and print its path.

The daemon rewrites the page after every delivery and failure; this command is for a
root whose daemon is not running, or after results were moved or deleted by hand.
"""

from __future__ import annotations

import webbrowser
from typing import Callable

from hotfolder import gallery
from hotfolder.config import Config
from hotfolder.errors import HotfolderError, UsageError


def command(config: Config, *, open_page: bool = False, out: Callable[[str], object] = print,
            opener: Callable[[str], object] = webbrowser.open) -> int:
    """Write the page (and the status script beside it), print its path, open it in the browser if asked."""
    if not config.outbox.is_dir():
        raise UsageError(f"there is no outbox at {config.outbox}",
                         hint="give the hotfolder root with --root (the daemon makes its folders when it starts)")
    try:
        path = gallery.write(config)
    except OSError as e:
        raise HotfolderError(f"cannot write the gallery in {config.outbox}: {e}",
                             hint="check that the outbox is writable") from e
    out(str(path))
    if open_page:
        opener(path.as_uri())
    return 0
