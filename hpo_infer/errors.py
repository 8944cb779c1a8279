"""The errors a user can cause or meet, as plain exceptions. The CLI turns each into one line
on stderr and an exit code (:data:`hpo_infer.cli.EXIT`); the library never exits or prints."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The one line of an error a message quotes: its first line, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class HpoInferError(Exception):
    """Base of every error hpo-infer reports as one line, without a traceback."""


class InputError(HpoInferError):
    """Bad input: a spec, flag or file that cannot be used. Nothing was written or measured.

    The message names where the problem is (``file: key: problem``) so the user can fix it
    without reading a traceback.
    """

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where, self.problem = where, problem


class StorageError(HpoInferError):
    """The study storage cannot be reached or used (after retries)."""


class AgentError(HpoInferError):
    """An agent broke for a reason that is neither bad input nor the storage."""


class EngineError(HpoInferError):
    """The installed engine cannot be asked (its check timed out or broke)."""
