"""User-facing errors.

Every error a user can cause (bad recipe, bad data row, bad CLI argument) is an
:class:`AlignKitError`. The CLI prints its message on one line and exits non-zero
without a traceback (``--debug`` shows it). Messages name *where* (file, row, key),
*what was found* and *what was expected*.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


def closest(word: str, options) -> str | None:
    """Closest valid option for an error message (None when nothing is close).

    >>> closest("lama", ["llama", "qwen"])
    'llama'
    >>> closest("zzz", ["llama", "qwen"]) is None
    True
    """
    import difflib

    hits = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return hits[0] if hits else None


def did_you_mean(word: str, options) -> str:
    """The " (did you mean 'x'?)" part of an error message, or "" when no option is close.

    >>> did_you_mean("sfft", ["sft", "dpo"])
    " (did you mean 'sft'?)"
    >>> did_you_mean("xyz", ["sft", "dpo"])
    ''
    """
    hint = closest(word, options)
    return f" (did you mean '{hint}'?)" if hint else ""


class AlignKitError(Exception):
    """Base class of errors caused by user input; shown without a traceback."""


class ConfigError(AlignKitError):
    """A recipe or command-line override is invalid."""


class DataError(AlignKitError):
    """A data row is malformed.

    >>> str(DataError("a.jsonl", 3, "output", "null", "a non-empty string"))
    "a.jsonl: row 3: field 'output': expected a non-empty string, found null"
    """

    def __init__(self, source: str, row: int | None, field: str | None, found: str, expected: str):
        self.source, self.row, self.field = str(source), row, field
        self.found, self.expected = found, expected
        self.reason = expected  # short key used when counting skipped rows
        where = self.source
        if row is not None:
            where += f": row {row}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: expected {expected}, found {found}")


def describe(value: object, limit: int = 40) -> str:
    """Short, safe description of a found value for error messages.

    >>> describe(None), describe(3), describe("x" * 50)[:12]
    ('null', 'number 3', "string 'xxxx")
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        if not value.strip():
            return "an empty string"
        text = value if len(value) <= limit else value[:limit] + "..."
        return f"string {text!r}"
    if isinstance(value, list):
        return f"a list of {len(value)} items" if value else "an empty list"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:6]}"
    return type(value).__name__


@dataclass
class SkipReport:
    """Counts of rows dropped in skip mode, by reason; never a silent skip.

    >>> r = SkipReport("a.json"); r.add(DataError("a.json", 1, "output", "null", "a string")); r.kept += 2
    >>> r.summary()
    'a.json: kept 2, rejected 1 (a string: 1)'
    """

    source: str
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, err: DataError) -> None:
        self.reasons[err.reason] += 1
        if len(self.examples) < 20:
            self.examples.append(str(err))

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        detail = ", ".join(f"{k}: {v}" for k, v in self.reasons.most_common())
        return f"{self.source}: kept {self.kept}, rejected {self.rejected}" + (f" ({detail})" if detail else "")

    def to_dict(self) -> dict:
        return {"source": self.source, "kept": self.kept, "rejected": self.rejected,
                "reasons": dict(self.reasons), "examples": self.examples}


def convert_rows(records, convert, *, skip: bool = False, report: SkipReport | None = None):
    """Yield ``convert(row, record)`` for each ``(row, record)``: a ``DataError`` is raised, or in skip mode
    counted in ``report`` by reason; kept rows are counted too.

    >>> def half(row, value):
    ...     if value % 2:
    ...         raise DataError("f.jsonl", row, "n", str(value), "an even number")
    ...     return value // 2
    >>> r = SkipReport("f.jsonl"); list(convert_rows([(1, 4), (2, 5)], half, skip=True, report=r)), r.summary()
    ([2], 'f.jsonl: kept 1, rejected 1 (an even number: 1)')
    """
    for row, record in records:
        try:
            out = convert(row, record)
        except DataError as err:
            if not skip:
                raise
            if report is not None:
                report.add(err)
            continue
        if report is not None:
            report.kept += 1
        yield out
