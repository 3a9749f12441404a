"""Error types shared by every layer."""

from __future__ import annotations

import os


class MedAnalysisError(Exception):
    """Base class of every error MedAnalysis raises on purpose."""


class InputError(MedAnalysisError, ValueError):
    """Bad input: the message is one line naming the file (or parameter) and the problem.

    The CLI maps it to exit code 2 and prints it without a traceback.
    """

    def __init__(self, subject: "str | os.PathLike | None", problem: str):
        self.subject = None if subject is None else os.fspath(subject)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.subject}: {self.problem}" if self.subject else self.problem)


class OperationCancelled(MedAnalysisError):
    """Raised when the user cancels a long operation; nothing was written."""
