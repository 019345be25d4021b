"""The two errors of evaluation: a behaviour-test or held-out file that is refused, and a server
that did not answer as expected."""

from __future__ import annotations

from plasticity.http.client import ClientError

EvalHTTPError = ClientError  # the name evaluation's callers catch


class BehaviourFileError(ValueError):
    """A behaviour test file (or one test object) that cannot be used; names the file and line."""

    def __init__(self, message: str, source: str | None = None, line: int | None = None):
        self.source, self.line, self.detail = source, line, message
        where = ""
        if source is not None and line is not None:
            where = f"{source}, line {line}: "
        elif source is not None:
            where = f"{source}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)
