"""Bad input: every case of the corpus in ``cases.py`` (57 broken files, recipes and arguments) exits 2 with one
short ``error:`` line naming the file/row/key, what was found and what was expected, and no traceback;
``--debug`` shows the traceback; a UTF-8 BOM is accepted; skip mode counts bad rows by reason into the
manifest; rows longer than ``max_length`` are counted as truncated in the manifest."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import cases  # noqa: E402

from align_kit.cli import main  # noqa: E402
from align_kit.errors import AlignKitError  # noqa: E402


def materialise(case: cases.Case, d: Path) -> list[str]:
    for name, body in case.files.items():
        if name.endswith(".yaml"):
            body = body.decode().format(d=d).encode()
        (d / name).write_bytes(body)
    return [a.format(d=d) for a in case.argv]


def error_line(stderr: str) -> str:
    """The ``error: ...`` line (progress bars may share the line without a newline)."""
    found = [x[x.index("error: "):] for x in stderr.splitlines() if "error: " in x]
    assert len(found) == 1, stderr
    return found[0]


def test_the_corpus_is_large_and_distinct():
    ids = [c.id for c in cases.ALL]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert all(len(c.expect) >= 1 for c in cases.ALL)


@pytest.mark.parametrize("case", cases.ALL, ids=[c.id for c in cases.ALL])
def test_bad_input_gives_a_short_error_and_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ALIGN_KIT_NOPE", raising=False)
    argv = materialise(case, tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = error_line(captured.err).replace(str(tmp_path), "{d}")
    assert "Traceback" not in captured.err
    missing = [s for s in case.expect if s not in line]
    assert not missing, f"{line!r} lacks {missing}"
    assert len(line) < 400  # short: one line, not a dump


@pytest.mark.parametrize("case_id", ["gbk_chinese", "preference_missing_rejected"])
def test_debug_flag_raises_with_the_traceback(case_id, tmp_path):
    case = next(c for c in cases.ALL if c.id == case_id)
    with pytest.raises(AlignKitError):
        main(["--debug", *materialise(case, tmp_path)])


ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "align_kit", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=300)


@pytest.mark.parametrize("case_id", ["gzip_truncated", "recipe_file_missing"])
def test_real_cli_process_prints_one_line_and_exits_2(case_id, tmp_path):
    case = next(c for c in cases.ALL if c.id == case_id)
    argv = materialise(case, tmp_path)
    plain = cli(argv, tmp_path)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert all(s in error_line(plain.stderr).replace(str(tmp_path), "{d}") for s in case.expect)
    debug = cli(["--debug", *argv], tmp_path)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "align_kit.errors" in debug.stderr


@pytest.mark.parametrize("argv,usage", [
    (["trian", "r.yaml"], "invalid choice: 'trian'"),
    (["train"], "the following arguments are required: recipe"),
    (["data", "inspect", "r.yaml", "--row", "three"], "argument --row: invalid int value: 'three'"),
    (["data", "convert", "x.jsonl", "--skip-bad-row", "--nonsense"], "unrecognized arguments: --nonsense"),
])
def test_wrong_cli_arguments_exit_2_with_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert usage in err and err.startswith("usage: align-kit") and "Traceback" not in err


@pytest.mark.parametrize("name,body", [
    ("bom.jsonl", b"\xef\xbb\xbf" + cases.jl(cases.A, cases.A, cases.A)),
    ("bom.json", b"\xef\xbb\xbf" + json.dumps([cases.A] * 3).encode()),
    ("bom.csv", b"\xef\xbb\xbfinstruction,input,output\nAdd 1 and 2.,,3\nAdd 2 and 2.,,4\nAdd 3 and 2.,,5\n"),
])
def test_utf8_bom_is_accepted(name, body, tmp_path, capsys):
    (tmp_path / name).write_bytes(body)
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(tmp_path / name), "--format", "alpaca", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    first = "Add 1 and 2." if name.endswith("csv") else cases.A["instruction"]
    assert len(rows) == 3 and rows[0]["messages"][0] == {"role": "user", "content": first}  # no BOM left in the text
    assert "kept 3, rejected 0" in capsys.readouterr().out


def test_skip_mode_on_the_cli_counts_by_reason(tmp_path, capsys):
    good = cases.A
    rows = [good, {**good, "output": None}, good, {**good, "output": 7}, {"instruction": "x"}, good]
    (tmp_path / "mixed.jsonl").write_bytes(cases.jl(*rows))
    assert main(["data", "convert", str(tmp_path / "mixed.jsonl"), "--format", "alpaca", "--skip-bad-rows"]) == 0
    out = capsys.readouterr().out
    assert "kept 3, rejected 3 (a non-empty string: 2, a string: 1)" in out
    assert "row 4: field 'output': expected a string, found number 7" in out


def test_skip_mode_counts_broken_lines_and_reads_on(tmp_path, capsys):
    """A jsonl line that is not JSON (or not an object) is one bad row in skip mode: counted, the rest kept."""
    good = json.dumps(cases.A).encode()
    body = b"\n".join([good, b'{"instruction": "cut off', good, b"[1, 2]", good]) + b"\n"
    (tmp_path / "broken.jsonl").write_bytes(body)
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(tmp_path / "broken.jsonl"), "--format", "alpaca", "--skip-bad-rows",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept 3, rejected 2 (one complete JSON object per line: 1, a JSON object: 1)" in printed
    assert "row 2" in printed and len(out.read_text().splitlines()) == 3
    # without skip mode the same file stops at line 2, naming it
    assert main(["data", "convert", str(tmp_path / "broken.jsonl"), "--format", "alpaca"]) == 2
    assert "row 2" in capsys.readouterr().err


def test_skip_mode_and_truncation_reach_the_run_manifest(tmp_path, caplog):
    """A real SFT run with ``on_bad_row: skip``: counts by reason are logged and written to manifest.json,
    and rows far longer than max_length are counted there too (dropped: their replies cannot fit)."""
    import yaml

    long_answer = " ".join(["forty two"] * 200)  # ~800 tokens against max_length 64
    rows = ([{"instruction": f"Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(12)]
            + [{"instruction": "Say it long.", "input": "", "output": long_answer}] * 2
            + [{"instruction": "x", "input": "", "output": None}, {"instruction": "", "input": "", "output": "1"},
               {"instruction": "x", "input": "", "output": 3}])
    (tmp_path / "d.jsonl").write_bytes(cases.jl(*rows))
    recipe = {"stage": "sft", "output_dir": str(tmp_path / "run"), "model": {"name_or_path": "builtin:tiny-llama"},
              "data": {"train": [{"path": str(tmp_path / "d.jsonl"), "format": "alpaca"}], "eval_fraction": 0,
                       "on_bad_row": "skip"},
              "trainer": {"max_steps": 1, "save_strategy": "no", "max_length": 64, "per_device_train_batch_size": 2,
                          "packing": False}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with caplog.at_level(logging.WARNING, logger="align_kit"):
        assert main(["train", str(tmp_path / "r.yaml")]) == 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "kept 14, rejected 3 (a non-empty string: 2, a string: 1)" in logged
    assert ("train: 2 of 14 rows are longer than max_length=64: 0 truncated from the prompt side (last reply "
            "kept whole), 2 dropped (last reply does not fit in max_length: 2)") in logged
    extra = json.loads((tmp_path / "run" / "manifest.json").read_text())["extra"]
    (report,) = extra["skipped_rows"]
    assert report["kept"] == 14 and report["rejected"] == 3
    assert report["reasons"] == {"a non-empty string": 2, "a string": 1}
    assert any("row 17: field 'output': expected a string, found number 3" in e for e in report["examples"])
    assert extra["truncated_rows"] == 0 and extra["long_rows"]["train"]["dropped"] == {
        "last reply does not fit in max_length": 2}  # their ~800-token replies cannot fit in 64 tokens
