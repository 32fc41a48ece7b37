"""lm-evaluation-harness as a backend: offline local tasks, the cross-check with align_kit's verifier metric,
contamination figures per benchmark, and one clear error per bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'align-kit[eval]')")

from align_kit import harness  # noqa: E402
from align_kit.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [  # long enough to be indexed by the 13-word decontamination rule
    "Which river flows through the old town of the valley where the three bridges were built in 1820?",
    "How many stone steps lead from the harbour wall up to the lighthouse on the northern cliff of the island?",
    "What colour were the shutters of the bakery that stood on the corner of the market square last spring?",
]


def local_task_folder(tmp_path: Path, rows: list[dict], name: str = "village_quiz") -> Path:
    """A user's own task: a YAML over a local jsonl of prompt rows, scored by the exact verifier."""
    folder = tmp_path / "tasks"
    folder.mkdir(exist_ok=True)
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(f"""task: {name}
custom_dataset: !function align_kit.tasks.local_prompts
dataset_kwargs: {{data_file: {data.as_posix()}, format: prompts}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
process_results: !function align_kit.tasks.exact
metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}]
generation_kwargs: {{until: [], do_sample: false, max_gen_toks: 4}}
metadata: {{version: 1}}
""", encoding="utf-8")
    return folder


def _quiz_rows() -> list[dict]:
    return [{"prompt": q, "answer": a} for q, a in zip(QUESTIONS, ["the Aare", "212", "blue"])]


@pytest.fixture(scope="module")
def trained():
    """The builtin model after 40 steps on 'Contains z?' conversations: it answers some right, some wrong."""
    from helpers import quickstart_lm

    return quickstart_lm(320, keep=lambda r: r["messages"][0]["content"].startswith("Contains"))


def test_harness_accuracy_equals_align_kit_verifier_metric(trained):
    """The cross-check: the harness (HFLM, chat template, local task) and align_kit's own generation and
    verifier metric answer the same 24 held-out rows identically, so their accuracies are equal."""
    from align_kit import evaluation
    from align_kit.tasks import prompt_documents

    model, tok = trained
    scores = harness.evaluate_model(model, tok, harness.HarnessArgs(tasks=["quickstart_tasks"], limit=24),
                                    with_responses=True)["quickstart_tasks"]
    docs = prompt_documents("${ALIGN_KIT_PACKAGE}/quickstart/sft_test.jsonl", "messages")[:24]
    prompts = [[{"role": "user", "content": d["question"]}] for d in docs]
    ours = evaluation.task_accuracy(model, tok, prompts, "align_kit.quickstart.tasks:verify", max_new_tokens=8)
    assert scores["documents"] == 24
    assert [r.strip() for r in scores["responses"]] == [r.strip() for r in ours["responses"]]
    assert scores["acc"] == pytest.approx(ours["accuracy"])
    assert 0 < scores["acc"] < 1  # some right, some wrong: equality is not 0 == 0


def test_flan_answer_extraction_matches_the_answer_is_verifier(shared, monkeypatch):
    """FLAN CoT tasks: the harness's score of given responses is the answer_is verifier's, row by row."""
    from lm_eval.api.model import LM

    from align_kit.ppo.rewards import VERIFIERS
    from align_kit.tasks import prompt_documents

    monkeypatch.setenv("ALIGN_KIT_SHARED", str(shared))
    docs = prompt_documents(f"{shared}/data/flan/qasc_train.tsv", "flan_cot", 200)[:12]
    # right, wrong, and right but phrased without "answer is" (which the verifier rejects)
    replies = {d["question"]: [f"Because. So the answer is {d['answer']}.", "So the answer is (Z).",
                               d["answer"]][i % 3] for i, d in enumerate(docs)}

    class Canned(LM):
        def generate_until(self, requests, disable_tqdm=False):
            return [next(v for q, v in replies.items() if q in r.args[0]) for r in requests]

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = harness.load_tasks(harness.HarnessArgs(tasks=["flan_cot_qasc"]))
    result = lm_eval.simple_evaluate(model=Canned(), tasks=list(tasks.values()), limit=12, bootstrap_iters=0,
                                     task_manager=TaskManager(include_defaults=False))
    expected = sum(VERIFIERS["answer_is"](replies[d["question"]], d["answer"]) for d in docs) / len(docs)
    assert result["results"]["flan_cot_qasc"]["acc,none"] == pytest.approx(expected) == pytest.approx(4 / 12)


def test_contamination_rises_with_a_planted_test_document(tmp_path):
    """Training rows that quote a benchmark's test question are counted against that benchmark only."""
    from align_kit.config import recipe_from_dict
    from align_kit.harness_stage import training_rows

    include = str(local_task_folder(tmp_path, _quiz_rows()))
    args = harness.HarnessArgs(tasks=["village_quiz", "quickstart_tasks"], include=[include])
    docs = harness.task_documents(harness.load_tasks(args))
    base = (ROOT / "align_kit/quickstart/sft_train.jsonl").read_text().splitlines(keepends=True)[:200]
    planted = ["".join(json.dumps({"messages": [{"role": "user", "content": f"Quiz time. {q}"},
                                                {"role": "assistant", "content": "I know."}]}) + "\n")
               for q in QUESTIONS[:2]]

    def figures(lines: list[str]) -> dict:
        train = tmp_path / f"train_{len(lines)}.jsonl"
        train.write_text("".join(lines), encoding="utf-8")
        recipe = recipe_from_dict({"stage": "sft", "model": {"name_or_path": "builtin:tiny-llama"},
                                   "evaluation": {"harness": {"tasks": args.tasks, "include": [include]}},
                                   "data": {"train": [{"path": str(train), "format": "messages"}],
                                            "eval_fraction": 0}})
        return harness.contamination(training_rows(recipe), docs)

    clean = figures(base)
    dirty = figures(base[:100] + planted + base[100:])
    assert clean["village_quiz"]["contaminated_rows"] == 0 and clean["village_quiz"]["training_rows"] == 200
    assert dirty["village_quiz"]["contaminated_rows"] == 2 and dirty["village_quiz"]["training_rows"] == 202
    assert dirty["village_quiz"]["test_documents_hit"] == 2
    # the quickstart prompts ("Length: abcd") are shorter than the rule's 8 words: never indexed, never hit
    assert dirty["quickstart_tasks"]["contaminated_rows"] == 0 and dirty["quickstart_tasks"]["indexed_documents"] == 0


def test_decontaminate_step_reads_a_benchmarks_test_documents(tmp_path):
    """`data decontaminate --harness TASK` drops the training documents that quote the task's test set."""
    from align_kit.data.decontam import ContaminationIndex

    include = str(local_task_folder(tmp_path, _quiz_rows()))
    sets = harness.benchmark_documents(["village_quiz"], include=[include])
    index = ContaminationIndex(sets)
    assert index.items == 3
    assert [h.eval_index for h in index.hits("blog: " + QUESTIONS[2].upper())] == [2]
    assert index.hits("A bakery on the market square.") == []


# ---- bad input: one clear error each ------------------------------------------------------------------------


def test_unknown_task_name_is_one_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown task 'quickstart_taks' \(did you mean 'quickstart_tasks'\?\)"):
        harness.check_tasks(harness.HarnessArgs(tasks=["quickstart_taks"]))


def test_missing_local_data_stops_the_recipe_at_load(tmp_path, monkeypatch):
    """A task whose local file is missing fails when the recipe loads, before any training."""
    from align_kit.config import recipe_from_dict

    monkeypatch.setenv("ALIGN_KIT_GSM8K", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({"stage": "sft", "model": {"name_or_path": "builtin:tiny-llama"},
                          "data": {"train": [{"name": "quickstart-tasks"}]},
                          "evaluation": {"harness": {"tasks": ["gsm8k_local"]}}})
    message = str(err.value)
    assert "task 'gsm8k_local'" in message and f"{tmp_path / 'nowhere'}/test.jsonl is missing" in message
    assert "\n" not in message


def test_harness_not_installed_is_one_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    harness._harness_names.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"lm-evaluation-harness is not installed; pip install 'align-kit\[eval\]'"):
            harness.check_tasks(harness.HarnessArgs(tasks=["quickstart_tasks"]))
    finally:
        harness._harness_names.cache_clear()


def test_reward_recipe_refuses_benchmarks():
    from align_kit.config import recipe_from_dict

    with pytest.raises(ConfigError, match="a reward model scores responses and answers no benchmark"):
        recipe_from_dict({"stage": "reward", "model": {"name_or_path": "builtin:tiny-llama"},
                          "data": {"train": [{"name": "quickstart-preferences"}]},
                          "evaluation": {"harness": {"tasks": ["quickstart_tasks"]}}})


def test_cli_eval_harness(tmp_path, trained, capsys):
    """`align-kit eval MODEL --harness TASK` scores a saved model and writes the JSON."""
    from align_kit.cli import main

    model, tok = trained
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "scores.json"
    assert main(["eval", str(tmp_path / "m"), "--harness", "quickstart_tasks", "--limit", "8", "--out", str(out)]) == 0
    scores = json.loads(out.read_text())["scores"]["quickstart_tasks"]
    assert scores["documents"] == 8 and 0 <= scores["acc"] <= 1
    assert main(["eval", str(tmp_path / "m"), "--harness", "no_such_task"]) == 2
    assert "unknown task 'no_such_task'" in capsys.readouterr().err


def test_standard_task_pointed_at_a_local_copy_of_its_data(tmp_path):
    """docs/benchmarks.md's recipe: a YAML that includes the harness's own gsm8k.yaml and swaps its Hub
    dataset for local files runs offline with the harness's own prompt, filters and metric."""
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    rows = [{"question": f"Tom has {a} apples and gets {b} more. How many now?",
             "answer": f"{a} + {b} = {a + b}\n#### {a + b}"} for a, b in [(3, 4), (10, 5), (7, 7), (1, 2)]]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    gsm8k = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    (folder / "gsm8k_offline.yaml").write_text(f"""include: {gsm8k.as_posix()}
task: gsm8k_offline
tag: []
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files: {{train: {(tmp_path / 'train.jsonl').as_posix()}, test: {(tmp_path / 'test.jsonl').as_posix()}}}
num_fewshot: 2
""", encoding="utf-8")
    answers = {r["question"]: r["answer"].split("#### ")[1] for r in rows}
    wrong = rows[1]["question"]

    class Canned(LM):  # right on three questions, wrong on one, in GSM8K's "#### N" form
        def generate_until(self, requests, disable_tqdm=False):
            out = []
            for r in requests:
                question = r.args[0].rsplit("Question: ", 1)[1].split("\n")[0]
                out.append(f"so #### {int(answers[question]) + (1 if question == wrong else 0)}")
            return out

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    args = harness.HarnessArgs(tasks=["gsm8k_offline"], include=[str(folder)])
    tasks = harness.load_tasks(args)  # found in the include folder: the harness's registry is not indexed
    result = lm_eval.simple_evaluate(model=Canned(), tasks=list(tasks.values()), bootstrap_iters=0,
                                     task_manager=TaskManager(include_defaults=False))
    assert harness._metrics(result["results"]["gsm8k_offline"])["exact_match/strict-match"] == pytest.approx(0.75)


def test_data_pipelines_take_a_benchmark_as_evaluation_set(shared, tmp_path, monkeypatch):
    """`data decontaminate --harness TASK` and the datatrove step's `eval: [{harness: TASK}]` index the task's
    test documents: a training document quoting a FLAN QASC test question goes, the others stay."""
    from align_kit.cli import main
    from align_kit.data.trove.run import _eval_sets
    from align_kit.data.trove.spec import parse_spec
    from align_kit.tasks import prompt_documents

    monkeypatch.setenv("ALIGN_KIT_SHARED", str(shared))
    question = prompt_documents(f"{shared}/data/flan/qasc_train.tsv", "flan_cot", 200)[5]["question"]
    first_row = prompt_documents(f"{shared}/data/flan/qasc_train.tsv", "flan_cot")[0]["question"]  # not a test row
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                           [f"Study notes. {question} Think.", first_row, "Plain prose about gardens."]))
    assert main(["data", "decontaminate", str(src), "--harness", "flan_cot_qasc", "--out", str(tmp_path / "o")]) == 0
    dropped = [json.loads(line) for line in (tmp_path / "o" / "dropped.jsonl").read_text().splitlines()]
    assert [d["id"] for d in dropped] == ["train.jsonl:1"]

    step = {"decontaminate": {"eval": [{"harness": "flan_cot_qasc"}]}}
    spec = parse_spec({"input": {"paths": [str(src)]}, "output": {"folder": str(tmp_path / "t")}, "steps": [step]})
    assert len(_eval_sets(spec.steps[0][1])["flan_cot_qasc"]) == 200
    bad = {"decontaminate": {"eval": [{"harness": "flan_cot_qasc", "path": str(src)}]}}
    with pytest.raises(ConfigError, match=r"eval\[0\]: give exactly one of path \(a file\) or harness"):
        parse_spec({"input": {"paths": [str(src)]}, "output": {"folder": str(tmp_path / "t2")}, "steps": [bad]})


def test_train_check_refuses_an_unknown_benchmark(tmp_path, capsys):
    """`align-kit train RECIPE --check`: exit 2 with one line, before any model loads."""
    from align_kit.cli import main

    recipe = tmp_path / "sft.yaml"
    recipe.write_text((ROOT / "recipes/tiny/sft.yaml").read_text() + "evaluation:\n  harness: {tasks: [flan_cot_crek]}\n")
    assert main(["train", str(recipe), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown task 'flan_cot_crek' (did you mean 'flan_cot_creak'?)" in err and len(err.splitlines()) == 1
