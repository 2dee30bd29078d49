"""Text to speech for `[audio] tts`: macOS `say`, else espeak-ng (or espeak), else a clear error.

The engines are found on PATH through an injectable `which`, so tests can take
them away. They run from an argument list, never a shell, and the text reaches
them through a file: a narration that starts with "-" or holds quotes is only
ever read as words, never as options or commands.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hotfolder.errors import HotfolderError

Which = Callable[[str], "str | None"]

TIMEOUT_S = 300.0  # a long narration on a slow machine still takes seconds
ENGINES = ("say", "espeak-ng", "espeak")  # in order of preference: say sounds best, ships with macOS
INSTALL_HINT = (
    "Install espeak-ng (Debian/Ubuntu: sudo apt-get install espeak-ng; Fedora: sudo dnf install espeak-ng; "
    "Homebrew: brew install espeak-ng); on macOS the built-in `say` is used. Or remove tts from [audio]."
)


class NarrationUnavailable(HotfolderError):
    """No speech engine on this machine: retrying will not help, installing one will."""

    kind = "narration_unavailable"
    retryable = False  # permanent until a speech engine is installed

    def __init__(self, message: str, hint: str | None = INSTALL_HINT):
        super().__init__(message)
        self.hint = hint


class NarrationFailed(HotfolderError):
    """The speech engine ran and failed (retryable like any other generation failure)."""

    kind = "narration"


@dataclass(frozen=True)
class Engine:
    name: str  # "say" | "espeak-ng" | "espeak"
    path: str

    def command(self, text_file: Path, out: Path) -> list[str]:
        """The argument list that reads `text_file` and writes speech to `out`."""
        if self.name == "say":
            return [self.path, "-f", str(text_file), "-o", str(out)]  # AIFF
        return [self.path, "-f", str(text_file), "-w", str(out)]  # WAV

    @property
    def suffix(self) -> str:
        return ".aiff" if self.name == "say" else ".wav"


def find_engine(which: Which = shutil.which) -> Engine:
    """The first speech engine on PATH; NarrationUnavailable naming what to install when there is none."""
    for name in ENGINES:
        path = which(name)
        if path:
            return Engine(name, path)
    raise NarrationUnavailable(
        "narration ([audio] tts) needs a text-to-speech program, and none of "
        f"{', '.join(ENGINES)} is installed on this machine."
    )


def synthesize(text: str, out_dir: Path, *, which: Which = shutil.which, timeout: float = TIMEOUT_S) -> Path:
    """Speak `text` into an audio file in `out_dir` and return its path (AIFF from say, WAV from espeak)."""
    engine = find_engine(which)
    out_dir = Path(out_dir)
    out = out_dir / f"narration{engine.suffix}"
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", dir=out_dir, delete=False) as f:
        f.write(text)
        text_file = Path(f.name)
    try:
        proc = subprocess.run(engine.command(text_file, out), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise NarrationFailed(f"{engine.name} did not finish speaking within {timeout:g} s") from None
    except OSError as e:
        raise NarrationFailed(f"{engine.name} ({engine.path}) could not be started: {e}") from e
    finally:
        text_file.unlink(missing_ok=True)
    if proc.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        said = proc.stderr.decode("utf-8", "replace").strip()[-500:]
        raise NarrationFailed(f"{engine.name} failed to speak the narration (exit {proc.returncode})"
                              + (f": {said}" if said else ""))  # fmt: skip
    return out
