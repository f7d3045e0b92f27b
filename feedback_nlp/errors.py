"""Errors with stable codes, so a user (or a scheduler) can look a failure up.

`InputError` is the user's data or options being wrong (exit code 2); `FeedbackError` is anything
else the tool refuses to do (exit code 1). Messages say what was found, what was expected and how
to fix it, naming file, row and field where there is one.
"""

from __future__ import annotations

from contextlib import contextmanager
from enum import Enum


class FeedbackError(Exception):
    """A failure the CLI reports as a message, not a traceback (exit code 1)."""

    exit_code = 1

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"[{code}] {message}")

    def __reduce__(self) -> tuple:
        # Pickled by a worker process (workers.py): without this, unpickling calls __init__ with
        # the one formatted argument and the main process would report a dead worker instead.
        return type(self), (self.code, self.message)


class InputError(FeedbackError):
    """Bad input files, columns or options (exit code 2)."""

    exit_code = 2


class MissingDataError(FeedbackError):
    """Data the command is built on is not on this machine (exit code 3): the benchmark sets a
    training recipe reads at run time, which are never copied into the repository."""

    exit_code = 3


@contextmanager
def sigterm_raises(code: str, message: str):
    """Inside: SIGTERM (systemd stop, a scheduler's timeout) raises FeedbackError(code) instead of
    killing the process, so the clean-up (temporary output, worker processes) still runs."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise FeedbackError(code, message)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def where(path: object, row: int | None = None, field: str | None = None) -> str:
    """Locate a problem as `file, row N, field 'x'` for messages."""
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts)


class Reason(str, Enum):
    """Why a row went to quarantine: stable codes written into quarantine.csv."""

    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    DUPLICATE_ID = "duplicate_id"
    NO_CONTENT_AFTER_CLEANING = "no_content_after_cleaning"
    BAD_VALUE = "bad_value"
    PARTITION_FAILED = "partition_failed"  # the Dask engine: a partition's steps raised on its data
