"""The few exceptions that cross module boundaries, and what each means for a job.

Each error says itself whether another attempt could help (`retryable`): the
daemon reads that, not a chain of excepts. `JobInvalid` is permanent,
`BackendError` is retryable, `WeightsMissing` is permanent with an action for the
person, `Interrupted` means "stop now, the job is not at fault". An exception
that is not ours (a bug, an OOM in a library) counts as retryable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job file, said so a person can fix it."""

    message: str
    key: str | None = None
    value: Any = None
    line: int | None = None
    column: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["value"] is not None and not isinstance(d["value"], (str, int, float, bool)):
            d["value"] = repr(d["value"])
        return d


class HotfolderError(Exception):
    """Base class: `exit_code` is what the CLI returns for it."""

    exit_code = 1
    kind = "error"
    hint: str | None = None
    retryable = True  # whether another attempt at the same job could succeed

    def __init__(self, message: str = "", hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint  # what the person should do next (error.txt's "What to do")


def retryable(e: BaseException) -> bool:
    """Whether the daemon should try a job again after `e` (errors not of ours: yes)."""
    return bool(getattr(e, "retryable", True))


class JobInvalid(HotfolderError):
    """The job file cannot be run as written. Never retried."""

    exit_code = 2
    kind = "invalid"
    retryable = False

    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        unique: dict[str, Problem] = {}  # each message once: a top-level mistake recurs in every [[jobs]] entry
        for p in problems:
            unique.setdefault(p.message, p)
        self.problems = list(unique.values())
        super().__init__(self.describe())

    def describe(self) -> str:
        lines = [f"{self.file}: {p.message}" for p in self.problems]
        return "\n".join(lines)


class UsageError(HotfolderError):
    """A command was called wrongly, or refused (exit 2)."""

    exit_code = 2
    kind = "usage"


class BackendError(HotfolderError):
    """Generation failed in a way that may succeed on another attempt."""

    kind = "backend"


class WeightsMissing(HotfolderError):
    """The model's weights are not on this machine: retrying will not help."""

    kind = "weights_missing"
    retryable = False


class Interrupted(HotfolderError):
    """Raised from a step callback to stop generation at once (stop or cancel)."""

    kind = "interrupted"
    retryable = False
