"""Error types shared by every stage. The CLI turns `CandgenError` into one clear line and exit code 2."""

from __future__ import annotations


class CandgenError(Exception):
    """Base of every error a user can cause (bad input, bad arguments, missing artifacts)."""

    exit_code = 2


class DataError(CandgenError):
    """Bad dataset input: names the file, row, column, the bad value and what was expected.

    >>> str(DataError("interactions.csv", "timestamp", "unix seconds or ISO-8601", row=3, value="x"))
    "interactions.csv, row 3, column 'timestamp': got 'x', expected unix seconds or ISO-8601"
    """

    def __init__(
        self,
        file: str,
        column: str | None,
        expected: str,
        *,
        row: int | None = None,
        value: object = None,
        count: int | None = None,
    ) -> None:
        self.file, self.column, self.expected, self.row, self.value, self.count = (
            file, column, expected, row, value, count,
        )
        where = [file]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        msg = ", ".join(where) + ": "
        if value is not None or row is not None:
            msg += f"got {value!r}, expected {expected}"
        else:
            msg += expected
        if count is not None and count > 1:
            msg += f" ({count} rows like this)"
        super().__init__(msg)


class ArtifactError(CandgenError):
    """Artifacts directory missing, incomplete or written by an incompatible version."""


class UnknownIdError(CandgenError, KeyError):
    """An item or user id that the catalog does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown id"
