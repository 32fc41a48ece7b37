"""`align-kit data clean|dedup|decontaminate|stats` and the Python pipeline they run."""

from __future__ import annotations

import json

import yaml
from helpers import PROSE

from align_kit.cli import main
from align_kit.data.clean import quality_verdict
from align_kit.data.pipeline import (
    Decontaminate,
    ExactDedup,
    MinHashDedup,
    PIIScrubber,
    QualityFilter,
    run_pipeline,
)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _card(path):
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_clean_command_filters_scrubs_and_writes_a_card(tmp_path, capsys):
    src = _jsonl(tmp_path / "in.jsonl", [
        {"text": PROSE + " Mail me at jo@example.com."},
        {"text": "too short"},
        {"text": "我们在日常生活中可以采取很多方法来减少用水，例如使用节水装置和收集雨水。电话13812345678"},
    ])
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "out")]) == 0
    kept, dropped = _read(tmp_path / "out" / "kept.jsonl"), _read(tmp_path / "out" / "dropped.jsonl")
    assert [d["id"] for d in kept] == ["in.jsonl:1", "in.jsonl:3"]
    assert kept[0]["text"].endswith("Mail me at <EMAIL>.") and kept[1]["text"].endswith("电话<PHONE>")
    assert [(d["id"], d["reason"], d["step"]) for d in dropped] == [("in.jsonl:2", "too_short", "quality")]
    card = _card(tmp_path / "out" / "README.md")
    assert card["statistics"]["input"]["documents"] == 3
    assert card["statistics"]["output"]["languages"] == {"en": 1, "zh": 1}
    assert card["dropped_by_reason"] == {"too_short": 1}
    assert card["steps"]["pii"]["replacements"] == {"email": 1, "phone": 1}
    out = capsys.readouterr().out
    assert "kept 2 of 3 (too_short: 1)" in out


def test_dedup_command_on_text_files(tmp_path, capsys):
    base = " ".join(f"token{i}" for i in range(120))
    near = base.replace("token60 ", "changed ")
    (tmp_path / "a.txt").write_text(f"{base}\n{near}\n{base.upper()}\nsomething else entirely\n")
    assert main(["data", "dedup", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o")]) == 0
    dropped = {d["id"]: d for d in _read(tmp_path / "o" / "dropped.jsonl")}
    assert dropped["a.txt:3"]["reason"] == "exact_duplicate" and dropped["a.txt:3"]["duplicate_of"] == "a.txt:1"
    assert dropped["a.txt:2"]["reason"] == "near_duplicate" and dropped["a.txt:2"]["duplicate_of"] == "a.txt:1"
    assert "midpoint 0.549" in capsys.readouterr().out


def test_decontaminate_command_reports_every_hit(tmp_path):
    question = "Which gas do plants absorb from the air to make their food during photosynthesis?"
    (tmp_path / "eval.txt").write_text(question + "\n")
    docs = [{"id": "d1", "text": PROSE + question}, {"id": "d2", "text": PROSE}]
    src = _jsonl(tmp_path / "train.jsonl", docs)
    out = tmp_path / "o"
    assert main(["data", "decontaminate", str(src), "--eval", str(tmp_path / "eval.txt"), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [(h["doc_id"], h["eval_set"], h["eval_index"]) for h in report["contamination_hits"]] == [
        ("d1", "eval.txt", 0)]
    assert [d["id"] for d in _read(out / "dropped.jsonl")] == ["d1"]
    assert main(["data", "decontaminate", str(src), "--eval", str(tmp_path / "eval.txt"), "--out",
                 str(tmp_path / "o2"), "--report-only"]) == 0
    assert len(_read(tmp_path / "o2" / "kept.jsonl")) == 2


def test_stats_on_parquet_and_blank_separated_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["hello world", "你好世界"]}), tmp_path / "x.parquet")
    (tmp_path / "y.txt").write_text("para one\nstill one\n\npara two\n")
    assert main(["data", "stats", str(tmp_path / "x.parquet"), "--text-field", "content",
                 "--out", str(tmp_path / "s1")]) == 0
    assert _card(tmp_path / "s1" / "README.md")["statistics"]["input"] == {
        "documents": 2, "characters": 15, "words": 6, "languages": {"en": 1, "zh": 1}}
    assert main(["data", "stats", str(tmp_path / "y.txt"), "--split", "blank", "--out", str(tmp_path / "s2")]) == 0
    assert [d["text"] for d in _read(tmp_path / "s2" / "kept.jsonl")] == ["para one\nstill one", "para two"]


def test_bad_input_and_options_exit_2_with_a_message(tmp_path, capsys):
    src = _jsonl(tmp_path / "in.jsonl", [{"text": "ok"}, {"body": "no text field"}])
    assert main(["data", "stats", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl: row 2: field 'text'" in err and "--text-field" in err
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "o"), "--set", "min_word=3"]) == 2
    assert "did you mean min_words?" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "o"), "--pii", "email,ssn"]) == 2


def test_full_pipeline_on_real_documents(shared, tmp_path):
    base = shared / "data" / "pretrain"
    wiki = [line for line in (base / "wiki_demo.txt").read_text().splitlines() if line.strip()][:5]
    c4 = [json.loads(line)["text"] for line in (base / "c4_demo.jsonl").read_text().splitlines()]
    c4 = [t for t in c4 if quality_verdict(t).keep][:80]
    zh = [line for line in (base / "chinese.txt").read_text().splitlines()[:300] if line.strip()]
    edited = c4[7].replace(" the ", " a ", 2)
    texts = wiki + c4 + zh + [t.upper() for t in c4[:5]] + [edited]  # 5 exact copies, one near copy
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    words = c4[30].split()
    question = " ".join(words[10:30])  # 20 words of a c4 document stand in for a leaked test item
    steps = [QualityFilter(), PIIScrubber(), ExactDedup(), MinHashDedup(), Decontaminate({"probe": [question]})]
    result = run_pipeline(docs, steps, tmp_path / "out")
    assert sum(result.counts.values()) == len(docs)
    by_id = {d["id"]: d for d in result.dropped}
    copies = range(len(docs) - 6, len(docs) - 1)
    assert [(by_id[f"d{i}"]["reason"], by_id[f"d{i}"]["duplicate_of"]) for i in copies] == [
        ("exact_duplicate", f"d{5 + k}") for k in range(5)]
    assert (by_id[f"d{len(docs) - 1}"]["reason"], by_id[f"d{len(docs) - 1}"]["duplicate_of"]) == (
        "near_duplicate", "d12")
    assert by_id["d35"]["reason"] == "contaminated" and by_id["d35"]["detail"].startswith("probe[0]: ")
    assert result.counts["contaminated"] == 1
    assert result.counts["kept"] / len(docs) > 0.6
    card = _card(tmp_path / "out" / "README.md")
    assert card["statistics"]["output"]["documents"] == result.counts["kept"] == len(_read(tmp_path / "out" / "kept.jsonl"))


def test_two_workers_give_the_same_result(tmp_path):
    texts = [PROSE + f" Call 415-555-01{i % 90:02d} about lot {i}." for i in range(150)]
    texts += texts[:10] + ["too short"] * 3
    docs = [{"id": str(i), "text": t} for i, t in enumerate(texts)]

    def run(workers):
        steps = [QualityFilter(), PIIScrubber(), ExactDedup(), MinHashDedup()]
        return run_pipeline(docs, steps, workers=workers)

    one, two = run(1), run(2)
    assert one.kept == two.kept and one.dropped == two.dropped and one.counts == two.counts
    assert one.steps["pii"]["replacements"] == two.steps["pii"]["replacements"] == {"phone": 160}
    assert one.counts["too_short"] == 3 and one.counts["exact_duplicate"] == 10
