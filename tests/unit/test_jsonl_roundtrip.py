r"""JSON Lines are read and written by "\n" only: every writer in align_kit round-trips hostile strings
(U+2028, U+2029, U+0085 inside strings, NUL, lone surrogates, a 330,000-character line) through align_kit's own reader,
row for row, with the right row numbers."""

from __future__ import annotations

import json

import pytest

from align_kit.cli import main
from align_kit.data.io import jsonl_line, read_records, read_text_documents, split_lines, write_jsonl
from align_kit.errors import DataError, SkipReport

WORDS = ("the and of to in that it is was for on are with as his they be at one have this from by hot word but "
         "what some we can out other were all there when up use your how said an each she which do their time if "
         "will way about many then them write would like so these her long make thing see him two has look more "
         "day could go come did number sound no most people my over know water than call first who may down side "
         "been now find").split()


def _prose(seed: int, n: int) -> str:
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


HOSTILE = ["line\u2028separator", "para\u2029separator", "next\x85line", "nul\x00byte", "lone \ud83d surrogate",
           "crlf\r\ninside", "tab\tand \\u2028 literal"]


def _texts() -> list[str]:
    """Documents long enough to pass the quality filter, each carrying one hostile string, plus a 1 MB one."""
    texts = [f"{_prose(i, 60)} {h} {_prose(100 + i, 40)}" for i, h in enumerate(HOSTILE)]
    return [*texts, _prose(99, 80_000) + " \u2028 end."]  # a line of about 330,000 characters


def test_reader_splits_on_newline_only_and_numbers_rows(tmp_path):
    # the case: 3 valid lines with raw U+2028 / U+2029 / U+0085 inside strings, then a bad line
    path = tmp_path / "x.jsonl"
    path.write_text('{"t": "a\u2028b"}\n{"t": "c\u2029d"}\r\n{"t": "e\x85f"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.jsonl: row 4: expected one complete JSON object"):
        list(read_records(path))
    report = SkipReport("x")
    rows = list(read_records(path, skip_report=report))
    assert [(i, r["t"]) for i, r in rows] == [(1, "a\u2028b"), (2, "c\u2029d"), (3, "e\x85f")]
    assert report.rejected == 1
    txt = tmp_path / "d.txt"
    txt.write_text("one\u2028still one\ntwo\n", encoding="utf-8")
    assert list(read_text_documents(txt)) == [(1, "one\u2028still one"), (2, "two")]
    assert split_lines("a\r\nb") == ["a", "b"]


def test_write_jsonl_escapes_separators_and_round_trips(tmp_path):
    rows = [{"id": i, "text": t, "nested": [{"x": t}]} for i, t in enumerate(_texts())]
    path = tmp_path / "rows.jsonl"
    assert write_jsonl(path, rows) == len(rows)
    raw = path.read_bytes()
    assert raw.count(b"\n") == len(rows)  # one line per row, whatever a line splitter counts as a line end
    assert len(raw.decode("utf-8").splitlines()) == len(rows)  # even Python's splitlines
    assert [r for _, r in read_records(path)] == rows
    assert jsonl_line({"a": "\ud800"}) == '{"a": "\\ud800"}\n'


def _run(*argv) -> int:
    return main([str(a) for a in argv])


def test_data_commands_round_trip_their_own_outputs(tmp_path, capsys):
    texts = _texts()
    src = tmp_path / "docs.jsonl"
    write_jsonl(src, [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    assert _run("data", "clean", src, "--out", tmp_path / "clean", "--no-pii") == 0
    kept = [r for _, r in read_records(tmp_path / "clean" / "kept.jsonl")]
    dropped = [r for _, r in read_records(tmp_path / "clean" / "dropped.jsonl")]
    assert sorted(r["id"] for r in kept + dropped) == sorted(f"d{i}" for i in range(len(texts)))
    by_id = {r["id"]: r["text"] for r in kept + dropped}
    assert all(by_id[f"d{i}"] == t for i, t in enumerate(texts))  # every string kept exactly
    assert len(kept) >= len(HOSTILE)  # the hostile characters alone do not get a document dropped
    # the documented next step reads the tool's own output
    assert _run("data", "dedup", tmp_path / "clean" / "kept.jsonl", "--out", tmp_path / "dedup") == 0
    deduped = [r for _, r in read_records(tmp_path / "dedup" / "kept.jsonl")]
    near = [r for _, r in read_records(tmp_path / "dedup" / "dropped.jsonl")]
    assert len(deduped) + len(near) == len(kept) and {r["text"] for r in deduped} <= set(texts)
    evals = tmp_path / "eval.jsonl"
    write_jsonl(evals, [{"text": texts[0]}])
    assert _run("data", "decontaminate", tmp_path / "dedup" / "kept.jsonl", "--out", tmp_path / "decon",
                "--eval", f"{evals}::text") == 0
    clean = [r for _, r in read_records(tmp_path / "decon" / "kept.jsonl")]
    hit = [r for _, r in read_records(tmp_path / "decon" / "dropped.jsonl")]
    assert len(clean) + len(hit) == len(deduped) and texts[0] not in {r["text"] for r in clean}
    report = json.loads((tmp_path / "decon" / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]
    assert _run("data", "stats", tmp_path / "decon" / "kept.jsonl", "--out", tmp_path / "stats") == 0
    assert [r for _, r in read_records(tmp_path / "stats" / "kept.jsonl")] == clean


def test_convert_round_trips_and_refuses_an_empty_file(tmp_path, capsys):
    src = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": f"Say {t}", "input": "", "output": t} for t in _texts()]
    write_jsonl(src, rows)
    out = tmp_path / "messages.jsonl"
    assert _run("data", "convert", src, "--format", "alpaca", "--out", out) == 0
    back = [r for _, r in read_records(out)]
    assert [r["messages"][-1]["content"] for r in back] == [r["output"] for r in rows]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert _run("data", "convert", empty, "--out", tmp_path / "none.jsonl") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no rows to convert" in err[0] and not (tmp_path / "none.jsonl").exists()


def test_run_log_and_manifest_round_trip(tmp_path):
    from align_kit.config import recipe_from_dict
    from align_kit.manifest import read_manifest, write_manifest
    from align_kit.report import read_log_history
    from align_kit.rundir import RunInfo, finish_run

    recipe = recipe_from_dict({"stage": "sft", "output_dir": str(tmp_path / "run"),
                               "model": {"name_or_path": "builtin:tiny-llama"},
                               "data": {"train": [{"name": "quickstart-tasks"}]}})
    history = [{"step": i, "loss": 1.0 / (i + 1), "note": t[:200]} for i, t in enumerate(_texts())]
    info = RunInfo(recipe, tmp_path / "run")
    info.out.mkdir()
    finish_run(info, history, {"after": {"note": HOSTILE[0]}})
    assert read_log_history(info.out / "log_history.jsonl") == history
    assert [r for _, r in read_records(info.out / "log_history.jsonl")] == history
    assert read_manifest(info.out)["extra"]["evaluation"]["after"]["note"] == HOSTILE[0]
    write_manifest(tmp_path / "m", {"hostile": HOSTILE})
    assert read_manifest(tmp_path / "m")["recipe"]["hostile"] == HOSTILE


def test_a_directory_or_latin1_file_is_named_as_such(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match=r"dir\.jsonl: expected a data file \(name the file inside it\), found a directory"):
        list(read_records(tmp_path / "dir.jsonl"))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"text": "café crème brûlée"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="Latin-1/Windows-1252") as err:
        list(read_records(latin))
    assert "GBK" not in str(err.value)
    chinese = tmp_path / "gbk.jsonl"
    chinese.write_bytes('{"text": "中文的训练数据"}\n'.encode("gbk"))
    with pytest.raises(DataError, match="GBK/GB18030"):
        list(read_records(chinese))
