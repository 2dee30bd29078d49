"""macOS privacy (TCC): which roots a background agent may not see, and how to grant it Full Disk Access."""

from __future__ import annotations

import os
from pathlib import Path

from hotfolder.config import Config
from hotfolder.errors import UsageError
from hotfolder.service.host import Host, real_binary


def protected_location(root: Path, home: Path) -> str | None:
    """Which privacy-protected place `root` lies in (macOS gates listing and reading there), or None."""
    places = [
        (home / "Desktop", "your Desktop folder"),
        (home / "Documents", "your Documents folder"),
        (home / "Downloads", "your Downloads folder"),
        (home / "Library" / "Mobile Documents", "iCloud Drive"),
        (home / "Library" / "CloudStorage", "a cloud storage folder (Dropbox, OneDrive, Google Drive, ...)"),
        (Path("/Volumes"), "a removable or network volume"),
    ]
    real_root = Path(os.path.realpath(root))
    for place, what in places:
        for candidate in {place, Path(os.path.realpath(place))}:
            if real_root == candidate or candidate in real_root.parents:
                return what
    return None


def full_disk_access_hint(python: Path) -> str:
    """Where to grant Full Disk Access, naming the exact binaries."""
    real = real_binary(python)
    names = [str(real)]
    app = _framework_app(real)
    if app is not None:
        names.append(str(app))
    listed = " and ".join(names)
    return (
        f"Open System Settings > Privacy & Security > Full Disk Access, click +, press Cmd-Shift-G, "
        f"paste {listed}, and switch it on (the agent runs {python}, which is a link to it)."
    )


def _framework_app(real: Path) -> Path | None:
    """python.org and Homebrew framework builds re-exec into Python.app: that binary needs access too."""
    parts = real.parts
    if "Python.framework" in parts and "Versions" in parts:
        version_dir = Path(*parts[: parts.index("Versions") + 2])
        app = version_dir / "Resources" / "Python.app" / "Contents" / "MacOS" / "Python"
        if app.exists():
            return app
    return None


def check_root_allowed(config: Config, host: Host, *, fda_confirmed: bool) -> None:
    """Refuse a root macOS will hide from the agent, unless the person says they granted access."""
    if host.platform != "darwin" or fda_confirmed:
        return
    where = protected_location(config.root, host.home)
    if where is None:
        return
    raise UsageError(
        f"the root {config.root} is inside {where}, which macOS hides from background agents "
        f"unless their Python has Full Disk Access. {full_disk_access_hint(host.python)} "
        "Then run this again with --i-granted-full-disk-access. "
        "Or keep the default root ~/Movies/Hotfolder, which needs no permission."
    )
