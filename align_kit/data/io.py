r"""Read records from local files with errors that name file, row and what was wrong.

Supported: ``.json`` (a list of objects), ``.jsonl`` / ``.jsonl.gz``, ``.csv`` / ``.tsv``
(header row unless ``columns`` is given), ``.parquet``, and ``.txt`` (see :func:`read_text_documents`).
Rows are numbered from 1 in messages (for JSONL the line number, for JSON the list index + 1). JSON and
JSON Lines are told apart by content (:func:`sniff_json`), so JSON Lines named ``.json`` reads as such.

JSON Lines are split on ``"\n"`` alone (a ``"\r"`` before it is dropped): JSON allows U+2028, U+2029 and
U+0085 unescaped inside strings, and Python's ``str.splitlines`` would cut a row there. :func:`write_jsonl`
writes those characters (and lone surrogates, which UTF-8 cannot encode) as ``\uXXXX`` escapes, so any
line-based tool reads align_kit's output back row for row.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from align_kit.errors import DataError, SkipReport

SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".csv", ".tsv", ".parquet", ".txt", ".txt.gz")


def file_kind(path: str | Path) -> str:
    """The reader a path needs.

    >>> file_kind("a/b.jsonl.gz"), file_kind("x.TSV"), file_kind("d.json")
    ('jsonl', 'tsv', 'json')
    """
    name = str(path).lower()
    for suffix, kind in ((".jsonl.gz", "jsonl"), (".json.gz", "json"), (".jsonl", "jsonl"), (".json", "json"),
                         (".csv", "csv"), (".tsv", "tsv"), (".parquet", "parquet"), (".txt.gz", "txt"), (".txt", "txt")):
        if name.endswith(suffix):
            return kind
    raise DataError(str(path), None, None, f"suffix of '{Path(path).name}'", f"one of {', '.join(SUFFIXES)}")


def sniff_json(text: str, kind: str) -> str:
    """``json`` or ``jsonl`` by content, whatever the suffix says: a first line that is a complete JSON value with
    more lines after it is JSON Lines; a document opening with ``[`` over several lines, or one line holding a
    list of objects, is one JSON list. Anything else keeps ``kind`` (its reader reports what is wrong).

    >>> sniff_json('{"a": 1}\\n{"a": 2}\\n', "json"), sniff_json('[\\n{"a": 1}]', "jsonl"), sniff_json('[1, 2]', "jsonl")
    ('jsonl', 'json', 'jsonl')
    """
    body = text.lstrip()
    if not body.startswith(("[", "{")):
        return kind
    first, _, rest = body.partition("\n")
    try:
        value = json.loads(first)
    except json.JSONDecodeError:
        return "json" if body.startswith("[") else kind  # a document over several lines (or a broken line)
    if rest.strip():
        return "jsonl"
    return "json" if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) else kind


# Characters some line splitters treat as line ends, and lone surrogates (not encodable as UTF-8).
_UNSAFE_IN_LINE = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def jsonl_line(row) -> str:
    r"""One JSON Lines row (with its ``"\n"``): UTF-8 text kept readable, line separators and lone
    surrogates escaped.

    >>> jsonl_line({"t": "a\u2028b\x85c\ud800 é"})
    '{"t": "a\\u2028b\\u0085c\\ud800 é"}\n'
    """
    text = json.dumps(row, ensure_ascii=False, default=str)
    return _UNSAFE_IN_LINE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def write_jsonl(path: str | Path, rows: Iterable, mode: int | None = None) -> int:
    """Write rows as JSON Lines atomically (a temp file renamed over ``path``); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(jsonl_line(row))
            n += 1
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    return n


def write_text(path: str | Path, text: str) -> Path:
    r"""Replace ``path``'s content with ``text`` (UTF-8) atomically: written to a temp file beside it, then renamed
    over it. A reader, in this process or another, sees the old file or the new one, never a truncated one
    (``Path.write_text`` truncates first: a report read while it is rewritten can come back empty or cut).
    The temp name carries the process and thread, so two writers never share one.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_text(folder / "r.md", "one\n").read_text(), sorted(p.name for p in folder.iterdir())
    ('one\n', ['r.md'])
    """
    import threading

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def split_lines(text: str) -> list[str]:
    r"""Lines split on ``"\n"`` only (a trailing ``"\r"`` dropped); U+2028 and friends stay inside a line.

    >>> split_lines('{"a": "x\u2028y"}\r\n{"b": 1}\n')
    ['{"a": "x\u2028y"}', '{"b": 1}']
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _read_text(path: Path) -> str:
    """Whole file as UTF-8 text; gzip by suffix; clear errors for truncated gzip and non-UTF-8 bytes."""
    if not path.exists():
        raise DataError(str(path), None, None, "no such file", "an existing data file")
    if path.is_dir():
        raise DataError(str(path), None, None, "a directory", "a data file (name the file inside it)")
    raw: bytes
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(str(path), None, None, f"a damaged gzip stream ({exc})", "a complete gzip file") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark is harmless: drop it rather than fail on row 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(str(path), line, None, f"bytes that are not UTF-8 at offset {exc.start}",
                        "UTF-8 text" + _encoding_hint(raw)) from None


def _encoding_hint(raw: bytes) -> str:
    """What a non-UTF-8 file probably is. Single bytes above 0x7F between ASCII characters are a one-byte
    code page (Latin-1/Windows-1252); runs of two or more that decode as GB18030 are Chinese text.

    >>> _encoding_hint("café au lait".encode("latin-1"))[:30]
    ' (it looks like Latin-1/Window'
    >>> _encoding_hint("中文文本".encode("gbk"))[:26]
    ' (it looks like GBK/GB1803'
    """
    runs = [len(m.group()) for m in re.finditer(rb"[\x80-\xff]+", raw)]
    if runs and max(runs) == 1:
        return " (it looks like Latin-1/Windows-1252: re-save it as UTF-8, e.g. iconv -f CP1252 -t UTF-8)"
    try:
        raw.decode("gb18030")
    except UnicodeDecodeError:
        return ""
    return " (it looks like GBK/GB18030: re-save it as UTF-8, e.g. iconv -f GB18030 -t UTF-8)"


def read_records(path: str | Path, columns: list[str] | None = None,
                 skip_report: SkipReport | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(row_number, record)`` from a json/jsonl/csv/tsv/parquet file.

    ``columns`` names the fields of a header-less csv/tsv (e.g. FLAN's ``question, answer, rationale``).
    Each record must be a JSON object; anything else is a :class:`DataError` naming the row. In skip mode
    (``skip_report`` given) a broken line of a jsonl/csv/tsv file is counted there and reading goes on; a
    .json file is one document, so invalid JSON there still stops.
    """

    def bad(err: DataError) -> None:
        if skip_report is None:
            raise err
        skip_report.add(err)

    path = Path(path)
    kind = file_kind(path)
    if kind == "parquet":
        yield from _read_parquet(path)
        return
    text = _read_text(path)
    if kind in ("json", "jsonl"):
        kind = sniff_json(text, kind)
    if kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(str(path), exc.lineno, None, f"invalid JSON ({exc.msg}, column {exc.colno})",
                            "a JSON list of objects (for one object per line use .jsonl)") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None) if len(data) == 1 else None
        if not isinstance(data, list):
            raise DataError(str(path), None, None, "a JSON value that is not a list", "a JSON list of objects")
        for i, rec in enumerate(data, start=1):
            if not isinstance(rec, dict):
                raise DataError(str(path), i, None, f"a {type(rec).__name__}", "a JSON object")
            yield i, rec
    elif kind == "jsonl":
        for i, line in enumerate(split_lines(text), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                bad(DataError(str(path), i, None, f"invalid JSON ({exc.msg}, column {exc.colno})",
                              "one complete JSON object per line"))
                continue
            if not isinstance(rec, dict):
                bad(DataError(str(path), i, None, f"a JSON {type(rec).__name__}", "a JSON object"))
                continue
            yield i, rec
    elif kind in ("csv", "tsv"):
        reader = csv.reader(io.StringIO(text), delimiter="\t" if kind == "tsv" else ",")
        header = columns
        for i, cells in enumerate(reader, start=1):
            if header is None:
                header = cells
                continue
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                bad(DataError(str(path), i, None, f"{len(cells)} cells", f"{len(header)} cells ({', '.join(header)})"))
                continue
            yield i, dict(zip(header, cells))
    else:
        raise DataError(str(path), None, None, "a plain-text file", "json, jsonl, csv, tsv or parquet records")


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise DataError(str(path), None, None, "no such file", "an existing data file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DataError(str(path), None, None, f"an unreadable parquet file ({exc})", "a valid parquet file") from None
    yield from enumerate(table.to_pylist(), start=1)


def read_text_documents(path: str | Path, split: str = "line") -> Iterator[tuple[int, str]]:
    """Yield ``(row_number, document)`` from a text file.

    ``split="line"``: one document per non-empty line; ``split="blank"``: documents separated by blank lines
    (row number = first line of the document).
    """
    text = _read_text(Path(path))
    if split == "line":
        for i, line in enumerate(split_lines(text), start=1):
            if line.strip():
                yield i, line
    elif split == "blank":
        buf: list[str] = []
        start = 1
        for i, line in enumerate(split_lines(text) + [""], start=1):
            if line.strip():
                if not buf:
                    start = i
                buf.append(line)
            elif buf:
                yield start, "\n".join(buf)
                buf = []
    else:
        raise DataError(str(path), None, "split", repr(split), "'line' or 'blank'")
