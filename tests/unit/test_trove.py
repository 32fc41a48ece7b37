"""`align-kit data run PIPELINE.yaml`: align_kit's steps on datatrove, against the in-memory pipeline."""

from __future__ import annotations

import gzip
import json

import pytest
import yaml

pytest.importorskip("datatrove")

from helpers import PROSE  # noqa: E402

from align_kit.cli import main  # noqa: E402
from align_kit.commands.datawork import read_documents  # noqa: E402
from align_kit.data.pipeline import (  # noqa: E402
    Decontaminate,
    ExactDedup,
    MinHashDedup,
    PIIScrubber,
    QualityFilter,
    run_pipeline,
)
from align_kit.data.trove.run import read_kept, run_spec  # noqa: E402
from align_kit.data.trove.spec import parse_spec  # noqa: E402
from align_kit.errors import ConfigError, DataError  # noqa: E402

QUESTION = "Which gas do plants absorb from the air to make their food during photosynthesis?"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(folder):
    out = []
    for p in sorted(folder.glob("*.jsonl")):
        out += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    return out


def _corpus(tmp_path):
    """Two files: unique prose (varied so MinHash sees distinct documents), exact and near copies across
    files, a short document, PII, a contaminated document."""
    base = [PROSE + " ".join(f"word{i}x{j}" for j in range(40)) + f" Call 415-555-01{i:02d}." for i in range(31)]
    near = base[3].replace("word3x10 word3x11", "changed text", 1)
    a = [{"id": f"a{i}", "text": t} for i, t in enumerate(base[:20])] + [{"id": "a_short", "text": "too short"}]
    b = [{"id": f"b{i}", "text": t} for i, t in enumerate(base[20:30])]
    b += [{"id": "b_exact", "text": base[5].upper()}, {"id": "b_near", "text": near},
          {"id": "b_leak", "text": base[30] + " " + QUESTION}]
    (tmp_path / "in").mkdir()
    _jsonl(tmp_path / "in" / "a.jsonl", a)
    _jsonl(tmp_path / "in" / "b.jsonl", b)
    (tmp_path / "eval.txt").write_text(QUESTION + "\n")
    return [str(tmp_path / "in" / "a.jsonl"), str(tmp_path / "in" / "b.jsonl")]


def _spec(tmp_path, files, out="out", steps=None, **top):
    steps = steps or ["quality", "pii", "exact_dedup", "minhash_dedup",
                      {"decontaminate": {"eval": [{"path": str(tmp_path / "eval.txt")}]}}]
    return parse_spec({"input": {"paths": files}, "output": {"folder": str(tmp_path / out)}, "steps": steps,
                       **top})


def test_same_kept_and_dropped_documents_as_the_in_memory_pipeline(tmp_path):
    files = _corpus(tmp_path)
    mem = run_pipeline(read_documents(files), [QualityFilter(), PIIScrubber(), ExactDedup(), MinHashDedup(),
                                               Decontaminate({"eval.txt": [QUESTION]})])
    report = run_spec(_spec(tmp_path, files, tasks=2, workers=1))
    kept = read_kept(tmp_path / "out")
    assert sorted((d["id"], d["text"]) for d in kept) == sorted((d["id"], d["text"]) for d in mem.kept)
    dropped = _rows(tmp_path / "out" / "dropped")
    fields = ("id", "step", "reason", "duplicate_of")
    assert sorted(tuple(d.get(k) for k in fields) for d in dropped) == sorted(
        tuple(d.get(k) for k in fields) for d in mem.dropped)
    assert {d["id"]: d["reason"] for d in dropped} == {
        "a_short": "too_short", "b_exact": "exact_duplicate", "b_near": "near_duplicate", "b_leak": "contaminated"}
    assert report["counts"] == dict(mem.counts)
    assert report["steps"]["pii"]["replacements"] == mem.steps["pii"]["replacements"] == {"phone": 33}
    card = yaml.safe_load((tmp_path / "out" / "README.md").read_text().split("---\n")[1])
    assert card["statistics"]["input"]["documents"] == 34 and card["statistics"]["output"]["documents"] == 30


def test_cli_runs_the_yaml_and_refuses_a_folder_from_another_pipeline(tmp_path, capsys):
    files = _corpus(tmp_path)
    raw = {"input": {"paths": files}, "output": {"folder": str(tmp_path / "o"), "format": "parquet"},
           "steps": ["quality", "exact_dedup"], "tasks": 2}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    assert main(["data", "run", str(tmp_path / "p.yaml")]) == 0
    assert "kept 32 of 34 (exact_duplicate: 1, too_short: 1)" in capsys.readouterr().out
    assert sorted((tmp_path / "o" / "kept").iterdir())[0].suffix == ".parquet" and len(read_kept(tmp_path / "o")) == 32
    assert main(["data", "run", str(tmp_path / "p.yaml")]) == 0  # same pipeline: resumes (nothing left)
    raw["steps"] = ["quality"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    assert main(["data", "run", str(tmp_path / "p.yaml")]) == 2
    assert "holds the output of a different pipeline (differs in: steps)" in capsys.readouterr().err
    assert main(["data", "run", str(tmp_path / "p.yaml"), "--check", "--set", "executor=ray"]) == 0
    assert "valid (1 steps, executor ray, tasks 2)" in capsys.readouterr().out
    assert main(["data", "run", str(tmp_path / "p.yaml"), "--set", "tasks=0"]) == 2
    assert "tasks: expected an integer >= 1, found 0" in capsys.readouterr().err


@pytest.mark.parametrize("raw, message", [
    ({"tasks": 0}, "tasks: expected an integer >= 1, found 0"),
    ({"executor": "k8s"}, "executor: expected one of local, slurm, ray, found 'k8s'"),
    ({"executor": "slurm"}, "slurm: expected a slurm section"),
    ({"wrkers": 2}, "unknown key 'wrkers' (did you mean 'workers'?)"),
    ({"steps": [{"minhash_dedup": {"bands": 0}}]}, "steps[0].minhash_dedup.bands: expected an integer >= 1, found 0"),
    ({"steps": [{"quality": {"max_duplicate_line_frac": 1.5}}]},
     "steps[0].quality.max_duplicate_line_frac: expected a number in [0, 1], found 1.5"),
    ({"steps": [{"pii": {"kinds": ["ssn"]}}]}, "steps[0].pii.kinds: expected kinds from email"),
    ({"steps": ["minhash_dedup", "exact_dedup"]}, "expected exact_dedup directly before minhash_dedup"),
    ({"steps": [{"tokenize": {"tokenizer": "t"}}, "quality"]}, "expected tokenize as the last step"),
    ({"steps": ["dedup"]}, "steps[0]: unknown step 'dedup' (did you mean 'exact_dedup'?)"),
])
def test_yaml_is_validated_before_anything_runs(tmp_path, raw, message):
    base = {"input": {"paths": ["x.jsonl"]}, "output": {"folder": str(tmp_path / "never")}, "steps": ["quality"]}
    with pytest.raises(ConfigError) as err:
        parse_spec({**base, **raw})
    assert message in str(err.value)
    assert not (tmp_path / "never").exists()


def _run_one(tmp_path, name, content: bytes, **inp):
    folder = tmp_path / name
    folder.mkdir()
    (folder / inp.pop("file", "data.jsonl")).write_bytes(content)
    spec = parse_spec({"input": {"paths": [str(folder)], **inp}, "output": {"folder": str(tmp_path / f"o_{name}")},
                       "steps": ["quality"], "tasks": 1})
    return spec


GOOD = (json.dumps({"text": PROSE}) + "\n").encode()


@pytest.mark.parametrize("content, file, message, reason", [
    (GOOD + b'{"text": "cut off\n', "data.jsonl", "data.jsonl: row 2: expected one complete JSON object per line, "
     "found invalid JSON", "invalid_json"),
    (GOOD + b'{"body": "x"}\n', "data.jsonl", "data.jsonl: row 2: field 'text': expected a string", "missing_text"),
    (GOOD + b'{"text": "caf\xe9"}\n', "data.jsonl", "data.jsonl: row 2: expected UTF-8 text, found bytes that are not "
     "UTF-8", "not_utf8"),
    (GOOD + b"[1, 2]\n", "data.jsonl", "data.jsonl: row 2: expected a JSON object, found a JSON list", "not_an_object"),
])
def test_bad_rows_name_file_and_line_or_are_counted_in_skip_mode(tmp_path, content, file, message, reason):
    with pytest.raises(DataError) as err:
        run_spec(_run_one(tmp_path, "strict", content, file=file))
    assert message in str(err.value)
    report = run_spec(_run_one(tmp_path, "skip", content, file=file, on_bad_row="skip"))
    assert report["counts"][reason] == 1 and report["counts"]["kept"] == 1  # the good row
    rejected = _rows(tmp_path / "o_skip" / "dropped")
    assert [(r["step"], r["reason"], r["id"]) for r in rejected if r["step"] == "read"] == [
        ("read", reason, f"{file}:2")]


def test_unreadable_shards_and_empty_folders_are_errors_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="data.jsonl.gz: expected a complete data file, found an unreadable file"):
        run_spec(_run_one(tmp_path, "gz", gzip.compress(GOOD * 50)[:-30], file="data.jsonl.gz"))
    with pytest.raises(DataError, match="data.parquet: expected a valid parquet file"):
        run_spec(_run_one(tmp_path, "pq", b"PAR1 not really parquet", file="data.parquet"))
    (tmp_path / "empty").mkdir()
    spec = parse_spec({"input": {"paths": [str(tmp_path / "empty")]}, "output": {"folder": str(tmp_path / "oe")},
                       "steps": ["quality"]})
    with pytest.raises(DataError, match="empty: expected at least one input file, found a folder with no"):
        run_spec(spec)


def test_shared_corpora_agree_with_the_in_memory_path(shared, tmp_path):
    """All four files of ../shared/data/pretrain (42,172 documents), two tasks: the same 5,984 kept documents
    with the same text, and every drop with the same reason and duplicate_of."""
    files = [str(shared / "data" / "pretrain" / f) for f in
             ("c4_demo.jsonl", "chinese.txt", "tinyshakespeare.txt", "wiki_demo.txt")]
    mem = run_pipeline(read_documents(files), [QualityFilter(), PIIScrubber(), ExactDedup(), MinHashDedup()])
    report = run_spec(_spec(tmp_path, files, steps=["quality", "pii", "exact_dedup", "minhash_dedup"], tasks=2,
                            workers=2))
    kept = read_kept(tmp_path / "out")
    assert len(kept) == len(mem.kept) == 5984
    assert sorted((d["id"], d["text"]) for d in kept) == sorted((d["id"], d["text"]) for d in mem.kept)
    fields = ("id", "reason", "duplicate_of")
    assert sorted(tuple(d.get(k) for k in fields) for d in _rows(tmp_path / "out" / "dropped")) == sorted(
        tuple(d.get(k) for k in fields) for d in mem.dropped)
    assert report["counts"] == dict(mem.counts)
    assert (report["counts"]["exact_duplicate"], report["counts"]["near_duplicate"]) == (16, 5)


def test_first_copy_is_the_first_in_input_order_whatever_task_reads_it(tmp_path):
    """Task 0 reads files 0 and 2, task 1 file 1: the originals in file 1 are still the ones kept."""
    base = [PROSE + " ".join(f"term{i}y{j}" for j in range(40)) for i in range(6)]
    parts = [[base[0], base[1]], [base[2], base[3]], [base[2].upper(), base[3].replace("term3y20", "other", 1),
                                                      base[4], base[5]]]
    files = [str(_jsonl(tmp_path / f"p{k}.jsonl", [{"id": f"p{k}_{i}", "text": t} for i, t in enumerate(rows)]))
             for k, rows in enumerate(parts)]
    mem = run_pipeline(read_documents(files), [ExactDedup(), MinHashDedup()])
    run_spec(_spec(tmp_path, files, steps=["exact_dedup", "minhash_dedup"], tasks=2))
    dropped = sorted((d["id"], d["reason"], d["duplicate_of"]) for d in _rows(tmp_path / "out" / "dropped"))
    assert dropped == sorted((d["id"], d["reason"], d["duplicate_of"]) for d in mem.dropped) == [
        ("p2_0", "exact_duplicate", "p1_0"), ("p2_1", "near_duplicate", "p1_1")]
    # verify: minhash (the stored signatures' estimate instead of re-read texts) finds the same pairs here
    run_spec(_spec(tmp_path, files, out="est", steps=["exact_dedup", {"minhash_dedup": {"verify": "minhash"}}],
                   tasks=2))
    assert sorted((d["id"], d["reason"], d["duplicate_of"]) for d in _rows(tmp_path / "est" / "dropped")) == dropped


def test_parquet_text_and_fsspec_url_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"content": [PROSE, "short"], "uid": ["u1", "u2"]}), tmp_path / "in" / "a.parquet")
    (tmp_path / "in" / "b.txt").write_text(f"{PROSE}\nline two\n\n{PROSE}\n")
    spec = parse_spec({"input": {"paths": [f"file://{tmp_path / 'in'}"], "text_field": "content", "id_field": "uid",
                                 "split": "blank"}, "output": {"folder": str(tmp_path / "o")}, "steps": ["quality"],
                       "tasks": 2})
    report = run_spec(spec)
    kept = {d["id"]: d["text"] for d in read_kept(tmp_path / "o")}
    assert kept == {"u1": PROSE, "b.txt:1": PROSE + "\nline two", "b.txt:4": PROSE}  # blank-separated documents
    assert report["counts"] == {"too_short": 1, "kept": 3}
    mem = run_pipeline(read_documents([str(tmp_path / "in" / "a.parquet")], text_field="content", id_field="uid"),
                       [QualityFilter()])
    assert [d["id"] for d in mem.kept] == ["u1"]


def test_decontamination_report_only_keeps_documents_and_lists_every_hit(tmp_path):
    files = _corpus(tmp_path)
    step = Decontaminate({"eval.txt": [QUESTION]}, drop=False)
    assert run_pipeline(read_documents(files), [step]).counts == {"kept": 34}
    report = run_spec(_spec(tmp_path, files, tasks=2, steps=[
        {"decontaminate": {"eval": [{"path": str(tmp_path / "eval.txt")}], "drop": False}}]))
    assert report["counts"] == {"kept": 34} and report["steps"]["decontaminate"] == {"hits": 1, "drop": False}
    assert [(h["doc_id"], h["eval_set"], h["eval_index"], h["ngram"]) for h in report["contamination_hits"]] == [
        (h["doc_id"], h["eval_set"], h["eval_index"], h["ngram"]) for h in step.hits] == [
        ("b_leak", "eval.txt", 0, " ".join(QUESTION.lower().split()[:13]))]  # the first shared 13-gram
