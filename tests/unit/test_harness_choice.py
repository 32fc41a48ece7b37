"""Multiple-choice (log-likelihood) harness tasks: lm-eval's per-document acc and acc_norm against each
choice's log-likelihood computed directly with the model, negative controls, the CLI, contamination, and the
bad-input errors of ``align_kit.tasks.local_choices``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'align-kit[eval]')")

from align_kit import harness  # noqa: E402
from align_kit.errors import ConfigError, DataError  # noqa: E402
from align_kit.tasks import TASK_DIR, choice_documents  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART_TEST = "${ALIGN_KIT_PACKAGE}/quickstart/sft_test.jsonl"
QUESTIONS = [  # long enough for the 13-word decontamination rule
    "Did the ferry that crossed the northern lake each morning carry more than forty passengers last summer?",
    "Was the stone bridge over the mill stream rebuilt after the great flood that struck the valley in 1911?",
    "Could the old clock on the town hall tower be heard from the orchards beyond the eastern ridge at noon?",
]


@pytest.fixture(scope="module")
def trained():
    """The builtin model after 40 steps on quickstart conversations of both kinds: some choices right, some
    wrong (acc 0.375 on the first 24 held-out rows when written)."""
    from helpers import quickstart_lm

    return quickstart_lm(640)


def reference_loglikelihoods(model, tok, context: str, choices: list[str], delimiter: str) -> list[float]:
    """Each choice's summed log-probability given the context, with one plain forward per sequence (no
    batching, padding or caching). The continuation is what the harness scores: the context's trailing
    whitespace (a chat template's "\\n\\n" after the assistant header) moves into it, then the target delimiter
    and the choice; context + continuation is encoded once and split after the context's own tokens (a
    SentencePiece piece may start with the delimiter's space: "▁y")."""
    stripped = context.rstrip()
    moved = context[len(stripped):]
    # a chat-templated context carries its BOS as text; a plain one gets the tokenizer's special tokens
    special = {"add_special_tokens": False} if tok.bos_token and stripped.startswith(tok.bos_token) else {}
    ctx_ids = tok(stripped, **special).input_ids
    out = []
    for choice in choices:
        ids = tok(stripped + moved + delimiter + choice, **special).input_ids
        assert ids[:len(ctx_ids)] == ctx_ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        out.append(sum(logp[p - 1, ids[p]].item() for p in range(len(ctx_ids), len(ids))))
    return out


def first_max(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # numpy's argmax: the first of equal maxima


def contexts(tok, docs: list[dict], chat: bool) -> list[str]:
    if chat:
        return [tok.apply_chat_template([{"role": "user", "content": d["question"]}], tokenize=False,
                                        add_generation_prompt=True) for d in docs]
    return [d["question"] for d in docs]


def check_against_reference(model, tok, task: str, docs: list[dict], chat: bool) -> dict:
    """Score ``task`` through align_kit's harness path and assert, document by document, that the harness's
    log-likelihoods, acc and acc_norm are the direct computation's."""
    scores = harness.evaluate_model(model, tok, harness.HarnessArgs(tasks=[task], limit=len(docs),
                                                                    chat_template=chat),
                                    with_responses=True)[task]
    delimiter = "" if chat else " "  # the harness drops its " " target delimiter under a chat template
    ours = [reference_loglikelihoods(model, tok, ctx, d["choices"], delimiter)
            for ctx, d in zip(contexts(tok, docs, chat), docs)]
    assert scores["documents"] == len(docs)
    for theirs, mine in zip(scores["responses"], ours, strict=True):
        assert theirs == pytest.approx(mine, abs=1e-4)
    acc = [float(first_max(ll) == d["label"]) for ll, d in zip(ours, docs)]
    # acc_norm: each log-likelihood divided by the choice's length in characters (the delimiter and the moved
    # whitespace are scored but not counted), lm-eval 0.4's definition
    acc_norm = [float(first_max([v / len(c) for v, c in zip(ll, d["choices"])]) == d["label"])
                for ll, d in zip(ours, docs)]
    assert scores["per_document"]["acc"] == acc
    assert scores["per_document"]["acc_norm"] == acc_norm
    assert scores["acc"] == pytest.approx(sum(acc) / len(acc))
    assert scores["acc_norm"] == pytest.approx(sum(acc_norm) / len(acc_norm))
    return {"scores": scores, "reference": ours, "acc": acc}


@pytest.mark.parametrize("chat", [True, False], ids=["chat_template", "plain"])
def test_quickstart_choice_equals_a_direct_loglikelihood_computation(trained, chat):
    """24 held-out quickstart rows (yes/no and 4-way lengths) on a trained tiny model, with the chat template
    (no delimiter, the header's "\\n\\n" moved into the continuation) and without it (" " delimiter)."""
    model, tok = trained
    docs = choice_documents(QUICKSTART_TEST, "messages")[:24]
    assert {len(d["choices"]) for d in docs} == {2, 4}
    out = check_against_reference(model, tok, "quickstart_choice", docs, chat)
    assert 0 < out["scores"]["acc"] < 1  # some right, some wrong: equality is not 0 == 0


def test_a_wrong_target_index_moves_accuracy_as_expected(trained, tmp_path):
    """Negative control: the same task with every label moved one choice on (an include folder's YAML over the
    shipped one). Per document acc becomes "the argmax is the next choice": on the yes/no rows exactly
    1 - acc, and the log-likelihoods themselves do not change."""
    model, tok = trained
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "shifted.yaml").write_text(f"""include: {(TASK_DIR / 'quickstart_choice.yaml').as_posix()}
task: quickstart_choice_shifted
doc_to_target: "{{{{(label + 1) % (choices | length)}}}}"
""", encoding="utf-8")
    docs = choice_documents(QUICKSTART_TEST, "messages")[:24]
    args = harness.HarnessArgs(tasks=["quickstart_choice", "quickstart_choice_shifted"], include=[str(folder)],
                               limit=24)
    both = harness.evaluate_model(model, tok, args, with_responses=True)
    right, shifted = both["quickstart_choice"], both["quickstart_choice_shifted"]
    assert shifted["responses"] == right["responses"]
    preds = [first_max(ll) for ll in right["responses"]]
    assert shifted["per_document"]["acc"] == [float(p == (d["label"] + 1) % len(d["choices"]))
                                             for p, d in zip(preds, docs)]
    two_way = [i for i, d in enumerate(docs) if len(d["choices"]) == 2]
    assert [shifted["per_document"]["acc"][i] for i in two_way] == [1 - right["per_document"]["acc"][i]
                                                                  for i in two_way]
    assert shifted["acc"] != right["acc"]


@pytest.fixture(scope="module")
def stories(shared):
    """stories260K: a real pretrained Llama with a SentencePiece tokenizer (no chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shared / "models" / "stories260K"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_flan_choice_on_a_sentencepiece_model_equals_the_direct_computation(stories, shared, monkeypatch):
    """FLAN StrategyQA as a yes/no choice on stories260K without a chat template: the continuation is the
    " " delimiter and the choice, tokenised "▁y es" after the question; the reference agrees document by
    document. Negative control: without the delimiter ("?yes" is "y es", other tokens) every log-likelihood
    differs."""
    monkeypatch.setenv("ALIGN_KIT_SHARED", str(shared))
    model, tok = stories
    docs = choice_documents(f"{shared}/data/flan/strategyqa_train.tsv", "flan_cot", 200, ["no", "yes"])[:12]
    out = check_against_reference(model, tok, "flan_choice_strategyqa", docs, chat=False)
    assert tok.convert_ids_to_tokens(tok(docs[0]["question"] + " yes").input_ids[-2:]) == ["▁y", "es"]
    glued = [reference_loglikelihoods(model, tok, d["question"], d["choices"], "") for d in docs]
    assert all(abs(a - b) > 1e-3 for ll, other in zip(out["reference"], glued) for a, b in zip(ll, other))
    assert 0 < out["scores"]["acc"] < 1


def test_cli_eval_reports_acc_and_acc_norm(trained, tmp_path):
    """`align-kit eval MODEL --harness quickstart_choice` on a saved model: both metrics in the JSON."""
    from align_kit.cli import main

    model, tok = trained
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "scores.json"
    assert main(["eval", str(tmp_path / "m"), "--harness", "quickstart_choice", "--limit", "24",
                 "--out", str(out)]) == 0
    scores = json.loads(out.read_text())["scores"]["quickstart_choice"]
    direct = harness.evaluate_model(model, tok, harness.HarnessArgs(tasks=["quickstart_choice"], limit=24))
    assert scores == pytest.approx(direct["quickstart_choice"]) and set(scores) == {"acc", "acc_norm", "documents"}


def test_contamination_of_a_choice_task_rises_with_a_planted_question(tmp_path):
    """The overlap figure reads a multiple-choice task's test documents (its questions) as it does a generated
    one's: two training rows quoting test questions are counted."""
    data = tmp_path / "quiz.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in zip(QUESTIONS, ["no", "yes", "no"])))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "quiz_choice.yaml").write_text(f"""include: {(TASK_DIR / 'quickstart_choice.yaml').as_posix()}
task: quiz_choice
dataset_kwargs: {{data_file: {data.as_posix()}, format: prompts, choices: ["no", "yes"]}}
""", encoding="utf-8")
    docs = harness.task_documents(harness.load_tasks(harness.HarnessArgs(tasks=["quiz_choice"], include=[str(folder)])))
    assert docs == {"quiz_choice": QUESTIONS}
    rows = [{"messages": [{"role": "user", "content": f"Length: {'ab' * i}"}, {"role": "assistant", "content": "2"}]}
            for i in range(1, 21)]
    planted = rows + [{"text": f"Quiz. {QUESTIONS[0]}"}, {"text": QUESTIONS[2].lower()}]
    assert harness.contamination(rows, docs)["quiz_choice"]["contaminated_rows"] == 0
    dirty = harness.contamination(planted, docs)["quiz_choice"]
    assert dirty["contaminated_rows"] == 2 and dirty["test_documents_hit"] == 2 and dirty["training_rows"] == 22


# ---- bad input: one clear error each ------------------------------------------------------------------------


def test_an_answer_outside_the_choices_names_its_row(tmp_path):
    data = tmp_path / "quiz.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Is {n} even?", "answer": a}) + "\n"
                            for n, a in [(2, "yes"), (3, "no"), (5, "maybe")]))
    with pytest.raises(DataError, match=rf"{re.escape(str(data))}: row 3: field 'answer': expected one of the task's choices "
                                        r"\['no', 'yes'\], found string 'maybe'"):
        choice_documents(str(data), "prompts", None, ["no", "yes"])
    # the last 2 rows of 3 are the test rows: the row number is still the file's
    with pytest.raises(DataError, match="row 3: field 'answer'"):
        choice_documents(str(data), "prompts", 2, ["no", "yes"])


def test_a_bare_yes_no_in_the_yaml_is_one_config_error(tmp_path):
    """PyYAML reads `choices: [no, yes]` as two booleans: refused at recipe load, saying to quote them."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "bare.yaml").write_text(f"""include: {(TASK_DIR / 'quickstart_choice.yaml').as_posix()}
task: bare_choice
custom_dataset: !function align_kit.tasks.local_choices
dataset_kwargs:
  data_file: {QUICKSTART_TEST}
  format: messages
  choices: [no, yes]
""", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"task 'bare_choice': dataset_kwargs.choices: expected 'quickstart' or a "
                                          r"list of at least two quoted strings .* found \[False, True\]$"):
        harness.check_tasks(harness.HarnessArgs(tasks=["bare_choice"], include=[str(folder)]))


def test_a_quickstart_choice_set_on_other_prompts_is_one_error(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "Contains z? lazy", "answer": "yes"}) + "\n"
                    + json.dumps({"prompt": "Capital of France?", "answer": "Paris"}) + "\n")
    with pytest.raises(DataError, match=r"row 2: field 'question': expected a quickstart prompt"):
        choice_documents(str(data), "prompts")


def test_flan_choice_without_its_data_says_where_to_put_it(tmp_path, monkeypatch):
    """The FLAN choice tasks read ${ALIGN_KIT_SHARED:-../shared}: pointed elsewhere, one error at load."""
    monkeypatch.setenv("ALIGN_KIT_SHARED", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=rf"task 'flan_choice': data file {re.escape(str(tmp_path))}/nowhere/"
                                          r"data/flan/creak_train.tsv is missing .* set the environment variable"):
        harness.check_tasks(harness.HarnessArgs(tasks=["flan_choice"]))
