"""Reader, filters, PII formatter, writers and per-task reports as datatrove pipeline steps.

Each filter wraps align_kit's own function (:func:`~align_kit.data.clean.quality_verdict`,
:class:`~align_kit.data.decontam.ContaminationIndex`, :func:`~align_kit.data.pii.scrub_pii`): the rules live
in one place and both engines apply them. A dropped document goes to the step's exclusion writer as
``{"id", "text", "step", "reason", "detail"}``, the same rows ``dropped.jsonl`` holds in the in-memory path.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

from align_kit.data.clean import QualityThresholds, detect_language, quality_verdict, words
from align_kit.data.decontam import ContaminationIndex, DecontamConfig
from align_kit.data.pii import PLACEHOLDERS, scrub_pii
from align_kit.errors import DataError, describe


class TaskDataError(DataError):
    """A :class:`DataError` that survives pickling, so a worker process's error reaches the command intact."""

    def __reduce__(self):
        return TaskDataError, (self.source, self.row, self.field, self.found, self.expected)


def _open(path: str):
    import fsspec

    return fsspec.open(path, "rb", compression="infer")


def _decoded_lines(path: str) -> Iterator[tuple[int, str | None, bytes]]:
    """``(line number, text or None when not UTF-8, raw bytes)`` of a (possibly compressed, remote) file."""
    with _open(path) as f:
        for i, raw in enumerate(f, start=1):
            raw = raw.rstrip(b"\r\n")
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield i, raw.decode("utf-8"), raw
            except UnicodeDecodeError:
                yield i, None, raw


class DocumentReader(PipelineStep):
    """jsonl / parquet / plain-text files (local paths or fsspec URLs) -> ``Document(id, text)``.

    Task ``rank`` reads ``files[rank::world_size]``. A document's id is its ``id_field`` or
    ``<file name>:<row>`` (row = line number; for text files with ``split="blank"`` the document's first
    line), as ``align-kit data clean`` names them. A bad row (invalid JSON, not an object, text missing or
    not a string, bytes that are not UTF-8) raises an error naming file and line; with ``skip`` it is
    written to ``rejected`` with its reason and counted instead. Unlike datatrove's own readers, which log
    such rows and go on, nothing is lost without a trace.
    """

    type = "📖 - READER"
    name = "align_kit reader"

    def __init__(self, files: list[tuple[str, str]], text_field: str = "text", id_field: str = "id",
                 split: str = "line", skip: bool = False, rejected=None):
        """``files``: ``(path, kind)`` with kind ``jsonl``, ``parquet`` or ``text``."""
        super().__init__()
        self.files, self.text_field, self.id_field = [tuple(f) for f in files], text_field, id_field
        self.split, self.skip, self.rejected = split, skip, rejected

    def _bad(self, path: str, row: int, field: str | None, found: str, expected: str, reason: str,
             text: str, writer, rank: int) -> None:
        err = TaskDataError(path, row, field, found, expected)
        if not self.skip:
            raise err
        self.stat_update(f"rejected_{reason}")
        if writer is not None:
            doc = Document(text=text, id=f"{posixpath.basename(path)}:{row}",
                           metadata={"step": "read", "detail": str(err), "filter_reason": reason})
            writer.write(doc, rank)

    def _jsonl(self, path: str, writer, rank: int) -> Iterator[Document]:
        name = posixpath.basename(path)
        for row, line, raw in _decoded_lines(path):
            if line is None:
                self._bad(path, row, None, "bytes that are not UTF-8", "UTF-8 text", "not_utf8",
                          raw.decode("utf-8", "replace"), writer, rank)
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                self._bad(path, row, None, f"invalid JSON ({exc.msg}, column {exc.colno})",
                          "one complete JSON object per line", "invalid_json", line, writer, rank)
                continue
            if not isinstance(rec, dict):
                self._bad(path, row, None, f"a JSON {type(rec).__name__}", "a JSON object", "not_an_object",
                          line, writer, rank)
                continue
            doc = self._record(path, name, row, rec, line, writer, rank)
            if doc is not None:
                yield doc

    def _record(self, path, name, row, rec, raw, writer, rank) -> Document | None:
        text = rec.get(self.text_field)
        if not isinstance(text, str):
            self._bad(path, row, self.text_field, describe(text), "a string (set input.text_field)",
                      "missing_text", raw, writer, rank)
            return None
        doc_id = rec.get(self.id_field)
        return Document(text=text, id=str(doc_id) if doc_id is not None else f"{name}:{row}")

    def _parquet(self, path: str, writer, rank: int) -> Iterator[Document]:
        import pyarrow.parquet as pq

        name, row = posixpath.basename(path), 0
        try:
            with _open(path) as f:
                # record batches: a shard never has to fit in memory
                for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                    for rec in batch.to_pylist():
                        row += 1
                        doc = self._record(path, name, row, rec, json.dumps(rec, default=str), writer, rank)
                        if doc is not None:
                            yield doc
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise TaskDataError(path, row + 1 if row else None, None, f"an unreadable parquet file ({exc})",
                                "a valid parquet file") from None

    def _text(self, path: str, writer, rank: int) -> Iterator[Document]:
        name, buf, start = posixpath.basename(path), [], 1
        for row, line, raw in _decoded_lines(path):
            if line is None:
                self._bad(path, row, None, "bytes that are not UTF-8", "UTF-8 text", "not_utf8",
                          raw.decode("utf-8", "replace"), writer, rank)
                continue
            if self.split == "line":
                if line.strip():
                    yield Document(text=line, id=f"{name}:{row}")
            elif line.strip():
                start = row if not buf else start
                buf.append(line)
            elif buf:
                yield Document(text="\n".join(buf), id=f"{name}:{start}")
                buf = []
        if buf:
            yield Document(text="\n".join(buf), id=f"{name}:{start}")

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        readers = {"jsonl": self._jsonl, "parquet": self._parquet, "text": self._text}
        writer = self.rejected
        with writer if writer is not None else _Null() as w:
            for index in range(rank, len(self.files), world_size):
                path, kind = self.files[index]
                self.stat_update("input_files")
                try:
                    docs = readers[kind](path, w, rank)
                    for doc in docs:
                        self.stat_update("documents")
                        doc.metadata["file_index"] = index  # input order, for dedup's "first copy"
                        yield doc
                except FileNotFoundError:
                    raise TaskDataError(path, None, None, "no such file", "an existing data file") from None
                except PermissionError as exc:
                    raise TaskDataError(path, None, None, f"an unreadable file ({exc.strerror})",
                                        "a readable data file") from None
                except (EOFError, OSError) as exc:  # truncated gzip, unreadable remote object
                    raise TaskDataError(path, None, None, f"an unreadable file ({exc})",
                                        "a complete data file") from None


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class RankFileReader(PipelineStep):
    """Reads back exactly the file task ``rank`` wrote in an earlier stage (``{rank:05d}.jsonl``), so a
    document's index in it is the one the dedup signatures recorded; a missing file is an empty shard."""

    type = "📖 - READER"
    name = "align_kit stage input"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import fsspec

        path = posixpath.join(self.folder, f"{rank:05d}.jsonl")
        fs, local = fsspec.core.url_to_fs(path)
        if not fs.exists(local):
            return
        with fs.open(local, "rb") as f:
            for line in f:
                rec = json.loads(line)
                yield Document(text=rec["text"], id=rec["id"])


def _kept_row(self, doc: Document) -> dict:
    return {"id": doc.id, "text": doc.text}


def _dropped_row(self, doc: Document) -> dict:
    meta = doc.metadata
    row = {"id": doc.id, "text": doc.text, "step": meta.get("step", ""), "reason": meta.get("filter_reason", ""),
           "detail": meta.get("detail", "")}
    if "duplicate_of" in meta:
        row["duplicate_of"] = meta["duplicate_of"]
    return row


def kept_writer(folder: str, fmt: str = "jsonl"):
    """One shard per task: ``{rank:05d}.jsonl`` or ``.parquet`` with ``{"id", "text"}``."""
    if fmt == "parquet":
        return ParquetWriter(folder, output_filename="${rank}.parquet", adapter=_kept_row)
    return JsonlWriter(folder, output_filename="${rank}.jsonl", compression=None, adapter=_kept_row)


def dropped_writer(folder: str, step: str):
    """Dropped documents of one step, one file per task: ``{step}_{rank:05d}.jsonl``."""
    return JsonlWriter(folder, output_filename=step + "_${rank}.jsonl", compression=None, adapter=_dropped_row)


class QualityStep(BaseFilter):
    """align_kit's Gopher/C4 rules (:func:`~align_kit.data.clean.quality_verdict`) with their reasons."""

    name = "align_kit quality"

    def __init__(self, thresholds: QualityThresholds | None = None, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.thresholds = thresholds or QualityThresholds()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        verdict = quality_verdict(doc.text, self.thresholds)
        if verdict.keep:
            return True
        doc.metadata.update(step="quality", detail=verdict.detail)
        return False, verdict.reason or ""


class DecontamStep(BaseFilter):
    """Records every evaluation item a document shares an n-gram with in ``{hits_folder}/{rank:05d}.jsonl``
    and, when ``drop``, drops the document with the first hit as detail (set, item, n-gram). The index (a
    dict of evaluation n-grams) is built once per task, on its first document."""

    name = "align_kit decontaminate"

    def __init__(self, eval_sets: dict[str, list[str]], config: DecontamConfig | None = None,
                 exclusion_writer=None, hits_folder: str | None = None, drop: bool = True):
        super().__init__(exclusion_writer)
        self.eval_sets, self.config = eval_sets, config or DecontamConfig()
        self.hits_folder, self.drop = hits_folder, drop
        self._index, self._hits = None, None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.hits_folder is None:
            yield from super().run(data, rank, world_size)
            return
        import fsspec

        with fsspec.open(posixpath.join(self.hits_folder, f"{rank:05d}.jsonl"), "w", auto_mkdir=True) as f:
            self._hits = f
            yield from super().run(data, rank, world_size)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._index is None:
            self._index = ContaminationIndex(self.eval_sets, self.config)
        hits = self._index.hits(doc.text, 0, doc.id)
        if not hits:
            return True
        self.stat_update("contamination_hits", value=len(hits))
        for h in hits if self._hits is not None else ():
            self._hits.write(json.dumps({"doc_id": doc.id, "eval_set": h.eval_set, "eval_index": h.eval_index,
                                         "ngram": h.ngram}, ensure_ascii=False) + "\n")
        if not self.drop:
            return True
        first = hits[0]
        doc.metadata.update(step="decontaminate", detail=f"{first.eval_set}[{first.eval_index}]: {first.ngram}")
        return False, "contaminated"


class PIIStep(BaseFormatter):
    """:func:`~align_kit.data.pii.scrub_pii` as a formatter; replacements are counted per kind."""

    name = "align_kit PII"

    def __init__(self, kinds: tuple[str, ...] = tuple(PLACEHOLDERS)):
        super().__init__()
        self.kinds = tuple(kinds)
        self.replacements: Counter = Counter()
        self.documents_changed = 0

    def format(self, text: str) -> str:
        new, counts = scrub_pii(text, self.kinds)
        if counts:
            self.replacements.update(counts)
            self.documents_changed += 1
        return new


class TaskReport(PipelineStep):
    """Passes documents through and, at the end of the task, writes ``{folder}/{rank:05d}.json``: corpus
    statistics of what passed (documents, characters, word units, languages) and the counters of ``steps``
    (PII replacements). Written last, so a killed task leaves no report and its re-run writes a whole one."""

    type = "📊 - STATS"
    name = "align_kit task report"

    def __init__(self, folder: str, pii: PIIStep | None = None):
        super().__init__()
        self.folder, self.pii = folder, pii

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import fsspec

        n = chars = units = 0
        langs: Counter = Counter()
        for doc in data or ():
            lang = detect_language(doc.text)
            n, chars, units = n + 1, chars + len(doc.text), units + len(words(doc.text, lang))
            langs[lang] += 1
            yield doc
        report = {"documents": n, "characters": chars, "words": units, "languages": dict(langs)}
        if self.pii is not None:
            report["pii"] = {"replacements": dict(self.pii.replacements),
                             "documents_changed": self.pii.documents_changed}
        with fsspec.open(posixpath.join(self.folder, f"{rank:05d}.json"), "w", auto_mkdir=True) as f:
            json.dump(report, f)
