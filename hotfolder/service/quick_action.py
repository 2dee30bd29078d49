"""The Finder Quick Action (macOS): right-click files > Quick Actions > "Make video with hotfolder".

An Automator workflow bundle in ~/Library/Services whose Run Shell Script hands
the selected files to `hotfolder submit`.
"""

from __future__ import annotations

import os
import plistlib
import secrets
import shlex
import shutil
from pathlib import Path
from typing import Callable

from hotfolder.config import Config
from hotfolder.service.host import QUICK_ACTION_TITLE, Host, template

PBS = "/System/Library/CoreServices/pbs"  # refreshes the Services menu after a Quick Action changes
BUNDLE_ID = "com.hotfolder.quick-action"


def quick_action_command(config: Config, host: Host, config_file: Path | None = None) -> str:
    """The Run Shell Script body (POSIX sh): the selected files arrive only as "$@", never in the script text.

    A prompt or job file (or a job folder) becomes a job as it is. An image asks (a dialog) for the prompt
    of a video that starts from it, and goes in as `--image`: "Make video from this prompt / with this image".
    The typed prompt goes in as `--prompt=TEXT`: text, never a path or an option, whatever it begins with.
    """
    args = [str(host.python), "-m", "hotfolder", "submit", "--root", str(config.root)]
    if config_file is not None:
        args += ["--config", str(Path(config_file).absolute())]
    ask = ("osascript -e 'on run argv' -e 'text returned of (display dialog (\"Describe the video that starts "
           "from \" & item 1 of argv) default answer \"\" with title \"hotfolder\")' -e 'end run'")
    return (
        "# hotfolder Quick Action: hands the files selected in Finder to the hot folder.\n"
        "# Written by `hotfolder agent install --quick-action`.\n"
        f"submit() {{ {shlex.join(args)} \"$@\"; }}\n"
        "status=0\n"
        'for f in "$@"; do\n'
        '  name=${f##*/}\n'
        '  case "$(printf %s "$name" | tr "[:upper:]" "[:lower:]")" in\n'
        "    *.png|*.jpg|*.jpeg|*.webp)\n"
        f'      prompt=$({ask} "$name") || continue\n'
        '      [ -n "$prompt" ] || continue\n'
        '      submit --image "$f" --name="${name%.*}" --prompt="$prompt" || status=1 ;;\n'
        '    *) submit "$f" || status=1 ;;\n'
        "  esac\n"
        "done\n"
        "exit $status\n"
    )


def render_quick_action(config: Config, host: Host, config_file: Path | None = None) -> dict[str, bytes]:
    """The bundle's files, relative to the .workflow folder."""
    info = template("quick-action/Info.plist", {"@MENU_TITLE@": QUICK_ACTION_TITLE})
    wflow = template("quick-action/document.wflow", {"@COMMAND@": quick_action_command(config, host, config_file)})
    return {
        "Contents/Info.plist": plistlib.dumps(info, sort_keys=False),
        "Contents/document.wflow": plistlib.dumps(wflow, sort_keys=False),
    }


def install_quick_action(config: Config, host: Host, *, config_file: Path | None = None,
                         say: Callable[[str], None] = print) -> Path:
    """Write the Finder Quick Action bundle to ~/Library/Services (replacing an older one of ours)."""
    bundle = host.quick_action_path
    files = render_quick_action(config, host, config_file)
    tmp = bundle.with_name(f".{bundle.name}.{secrets.token_hex(4)}")
    for rel, data in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    if bundle.exists():
        shutil.rmtree(bundle)
    os.rename(tmp, bundle)
    if host.platform == "darwin":
        host.run([PBS, "-flush"])  # best effort: the menu also refreshes at the next login
    say(f"Quick Action installed: right-click a prompt file in Finder > Quick Actions > {QUICK_ACTION_TITLE}")
    return bundle


def remove_quick_action(host: Host, *, say: Callable[[str], None] = print) -> bool:
    """Delete our Quick Action bundle (never one someone else put under the same name); whether it was there."""
    bundle = host.quick_action_path
    if not (bundle / "Contents" / "Info.plist").is_file():
        return False
    info = plistlib.loads((bundle / "Contents" / "Info.plist").read_bytes())
    if info.get("CFBundleIdentifier") != BUNDLE_ID:
        return False
    shutil.rmtree(bundle)
    host.run([PBS, "-flush"])
    say(f"removed the Quick Action {bundle}")
    return True
