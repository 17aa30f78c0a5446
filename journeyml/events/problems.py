"""Problems found in an event log, and the errors that carry them.

A check never stops at the first problem: every problem of an input is collected and raised
together in one :class:`EventLogError`, so the user fixes their file in one round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

EXAMPLE_WIDTH = 60


class Severity(StrEnum):
    """An error rejects the input; a warning is reported and the input is still loaded."""

    ERROR = "error"
    WARNING = "warning"


def shorten(value: object, width: int = EXAMPLE_WIDTH) -> str:
    """A value as shown in a report: control characters escaped, long values truncated."""
    text = "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in str(value)
    )
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class Example:
    """One offending row: where it is and the offending value.

    Attributes:
        file: the input file.
        row: 1-based data row number in that file (the header is not a row).
        line: the line number in a CSV file (the header is line 1), when it is known exactly.
        value: the offending value, already shortened for display.
    """

    file: str | None = None
    row: int | None = None
    line: int | None = None
    value: str | None = None

    def location(self) -> str:
        """``file line 4`` / ``file row 3`` / ``file``."""
        parts = [self.file] if self.file else []
        if self.line is not None:
            parts.append(f"line {self.line}")
        elif self.row is not None:
            parts.append(f"row {self.row}")
        return " ".join(parts)

    def render(self) -> str:
        where = self.location()
        if self.value is None:
            return where
        return f"{where}: {self.value!r}" if where else repr(self.value)


@dataclass(frozen=True)
class Problem:
    """One rule broken by one or more rows (or by the file itself).

    Attributes:
        severity: error (rejects the input) or warning.
        column: the column concerned, or ``(file)`` / ``(row)`` for the file or whole rows.
        rule: a short stable name (``unparseable``, ``missing_column``, ...).
        message: what is wrong, in words the owner of the file understands.
        count: how many rows (or files) break the rule.
        examples: the first offending rows.
        table: ``events`` or ``customers``.
    """

    severity: Severity
    column: str
    rule: str
    message: str
    count: int = 1
    examples: tuple[Example, ...] = field(default_factory=tuple)
    table: str = "events"

    @property
    def where(self) -> str:
        """The column, prefixed by the table for the customers table."""
        return self.column if self.table == "events" else f"{self.table}.{self.column}"

    def render(self) -> str:
        head = f"[{self.severity}] {self.where} / {self.rule}: {self.message}"
        if self.count > 1 or self.examples:
            head += f" ({self.count:,} {'row' if self.count == 1 else 'rows'})"
        lines = [head] + [f"      {e.render()}" for e in self.examples]
        return "\n".join(lines)


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Errors first, then warnings; otherwise in the order found."""
    items = list(problems)
    return [p for p in items if p.severity is Severity.ERROR] + [
        p for p in items if p.severity is Severity.WARNING
    ]


class EventLogError(ValueError):
    """An event log (or customers table) breaks the contract; nothing was written.

    Attributes:
        source: the input that was checked.
        problems: every problem found, errors first (warnings found on the way are included).
    """

    def __init__(self, source: str, problems: Sequence[Problem]):
        self.source = source
        self.problems = sort_problems(problems)
        super().__init__(self.render())

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING]

    def headline(self) -> str:
        """``3 errors (and 1 warning); nothing was written``."""
        n, w = len(self.errors), len(self.warnings)
        text = f"{n} {'error' if n == 1 else 'errors'}"
        if w:
            text += f" (and {w} {'warning' if w == 1 else 'warnings'})"
        return text + "; nothing was written"

    def render(self) -> str:
        """The whole report as plain text, one block per problem."""
        head = f"{self.source}: {self.headline()}"
        return "\n".join([head, *(f"  {p.render()}" for p in self.problems)])


class LakeError(RuntimeError):
    """The output lake cannot be written as asked (exists without ``--mode``, not a lake, ...)."""
