"""The broken-input corpus: each case is files written by the test, a command line, and what the error must
say (substrings naming the file/row/key, what was found and what was expected). ``{d}`` in an argument or a
file body is the case's folder. All must exit 2 with one ``error:`` line and no traceback."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: list[str]  # substrings of the error line, in any order
    files: dict[str, bytes] = field(default_factory=dict)


def jl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows).encode()


A = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
PREF = {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"}
HH = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}


def conv(path: str, fmt: str = "auto") -> list[str]:
    return ["data", "convert", "{d}/" + path, "--format", fmt]


def pref(path: str, fmt: str = "auto") -> list[str]:
    return ["data", "convert-preference", "{d}/" + path, "--format", fmt]


def msgs(*pairs) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


_GOOD_GZ = gzip.compress(jl(A, A, A) * 50)

DATA_CASES = [
    # ---- files that cannot be read
    Case("jsonl_malformed_line", conv("bad.jsonl", "alpaca"), ["bad.jsonl: row 2", "invalid JSON", "expected one complete JSON object per line"],
         {"bad.jsonl": jl(A, '{"instruction": "x", "output": 5', A)}),
    Case("jsonl_truncated_last_line", conv("cut.jsonl", "alpaca"), ["cut.jsonl: row 3", "invalid JSON"],
         {"cut.jsonl": jl(A, A) + b'{"instruction": "Add 1 and'}),
    Case("json_truncated", conv("cut.json"), ["cut.json", "invalid JSON"],
         {"cut.json": json.dumps([A, A]).encode()[:-20]}),
    Case("json_not_a_list", conv("obj.json"), ["obj.json", "found a JSON value that is not a list",
                                               "expected a JSON list of objects"], {"obj.json": json.dumps(A).encode()}),
    Case("json_list_of_strings", conv("s.json"), ["s.json: row 2", "expected a JSON object", "found a str"],
         {"s.json": json.dumps([A, "just text"]).encode()}),
    Case("jsonl_row_is_a_list", conv("l.jsonl"), ["l.jsonl: row 1", "expected a JSON object", "found a JSON list"],
         {"l.jsonl": jl([1, 2])}),
    Case("gzip_truncated", conv("t.jsonl.gz"), ["t.jsonl.gz", "a damaged gzip stream", "expected a complete gzip file"],
         {"t.jsonl.gz": _GOOD_GZ[: len(_GOOD_GZ) // 2]}),
    Case("gzip_suffix_not_gzip", conv("p.jsonl.gz"), ["p.jsonl.gz", "a damaged gzip stream"], {"p.jsonl.gz": jl(A)}),
    Case("gbk_chinese", conv("zh.jsonl"), ["zh.jsonl: row 1", "not UTF-8", "GB18030", "iconv"],
         {"zh.jsonl": jl({"instruction": "把这句话翻译成英文", "input": "", "output": "你好"}).decode().encode("gbk")}),
    Case("unknown_suffix", conv("data.xlsx"), ["data.xlsx", "suffix of 'data.xlsx'", "one of .json"],
         {"data.xlsx": b"PK\x03\x04"}),
    Case("missing_file", conv("nowhere.jsonl"), ["nowhere.jsonl", "no such file", "an existing data file"]),
    Case("csv_ragged_row", conv("r.csv", "alpaca"), ["r.csv: row 3", "found 4 cells", "3 cells (instruction, input, output)"],
         {"r.csv": b"instruction,input,output\nAdd 1 and 2.,,3\nAdd,2,3,4\n"}),
    # ---- missing, misspelt and mistyped columns
    Case("alpaca_missing_output", conv("m.jsonl", "alpaca"), ["m.jsonl: row 2: field 'output'", "found missing"],
         {"m.jsonl": jl(A, {"instruction": "Add 1 and 1.", "input": ""})}),
    Case("alpaca_misspelt_column", conv("ms.jsonl"), ["ms.jsonl: row 1: field 'output'", "the row has 'outptu'", "columns: {outptu: output}"],
         {"ms.jsonl": jl({"instruction": "Add 1 and 1.", "input": "", "outptu": "2"})}),
    Case("alpaca_null_output", conv("n.jsonl", "alpaca"), ["n.jsonl: row 1: field 'output'", "found null"],
         {"n.jsonl": jl({"instruction": "Add 1 and 1.", "input": "", "output": None})}),
    Case("alpaca_number_output", conv("num.jsonl", "alpaca"), ["num.jsonl: row 1: field 'output'",
                                                               "expected a string", "found number 2"],
         {"num.jsonl": jl({"instruction": "Add 1 and 1.", "input": "", "output": 2})}),
    Case("alpaca_empty_instruction", conv("e.jsonl", "alpaca"), ["e.jsonl: row 1: field 'instruction'",
                                                                 "found an empty string"],
         {"e.jsonl": jl({"instruction": "  ", "input": "", "output": "2"})}),
    Case("alpaca_history_not_pairs", conv("h.jsonl", "alpaca"), ["h.jsonl: row 1: field 'history", "pair"],
         {"h.jsonl": jl({**A, "history": "earlier chat"})}),
    Case("flan_missing_targets", conv("f.jsonl", "flan"), ["f.jsonl: row 1: field 'targets'", "found missing"],
         {"f.jsonl": jl({"inputs": "Translate: hi"})}),
    Case("unknown_format", conv("ok.jsonl", "alpacca"), ["format 'alpacca'", "alpaca"], {"ok.jsonl": jl(A)}),
    # ---- conversations
    Case("messages_empty", conv("c.jsonl", "messages"), ["c.jsonl: row 1: field 'messages'", "an empty"],
         {"c.jsonl": jl({"messages": []})}),
    Case("messages_not_a_list", conv("c2.jsonl", "messages"), ["c2.jsonl: row 1: field 'messages'",
                                                               "string 'hello'"], {"c2.jsonl": jl({"messages": "hello"})}),
    Case("messages_unknown_role", conv("c3.jsonl", "messages"), ["c3.jsonl: row 1: field 'messages[1].role'",
                                                                 "system, user or assistant", "'bot'"],
         {"c3.jsonl": jl(msgs(("user", "hi"), ("bot", "hello")))}),
    Case("messages_null_content", conv("c4.jsonl", "messages"), ["c4.jsonl: row 1: field 'messages[1].content'",
                                                                 "found null"],
         {"c4.jsonl": jl({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]})}),
    Case("messages_two_users_in_a_row", conv("c5.jsonl", "messages"), ["c5.jsonl: row 1: field 'messages[1].role'",
                                                                       "alternate"],
         {"c5.jsonl": jl(msgs(("user", "hi"), ("user", "anyone?"), ("assistant", "yes")))}),
    Case("messages_assistant_first", conv("c6.jsonl", "messages"), ["c6.jsonl: row 1: field 'messages[0].role'",
                                                                    "expected user"],
         {"c6.jsonl": jl(msgs(("assistant", "hello"), ("user", "hi")))}),
    Case("messages_ends_with_user", conv("c7.jsonl", "messages"), ["c7.jsonl: row 1: field 'messages'",
                                                                   "ending with a user turn"],
         {"c7.jsonl": jl(msgs(("user", "hi"), ("assistant", "hello"), ("user", "bye")))}),
    Case("sharegpt_unknown_speaker", conv("g.jsonl", "sharegpt"), ["g.jsonl: row 1", "from", "robot"],
         {"g.jsonl": jl({"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]})}),
    Case("sharegpt_empty", conv("g2.jsonl", "sharegpt"), ["g2.jsonl: row 1", "empty"],
         {"g2.jsonl": jl({"conversations": []})}),
    # ---- preference data
    Case("hh_no_assistant_turn", pref("hh.jsonl", "hh_rlhf"), ["hh.jsonl: row 2: field 'chosen'", "ending with an assistant turn", "'hi there'"],
         {"hh.jsonl": jl(HH, {"chosen": "\n\nHuman: hi there", "rejected": "\n\nHuman: hi there"})}),
    Case("hh_prompts_differ", pref("hh2.jsonl", "hh_rlhf"), ["hh2.jsonl: row 1", "prompt"],
         {"hh2.jsonl": jl({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: bye\n\nAssistant: b"})}),
    Case("preference_missing_rejected", pref("p.jsonl", "preference"), ["p.jsonl: row 1: field 'rejected'", "found missing (the row has chosen, prompt)"],
         {"p.jsonl": jl({"prompt": "Add 2 and 3.", "chosen": "5"})}),
    Case("preference_null_chosen", pref("p2.jsonl", "preference"), ["p2.jsonl: row 2: field 'chosen'", "null"],
         {"p2.jsonl": jl(PREF, {**PREF, "chosen": None})}),
    Case("preference_unknown_columns", pref("p3.jsonl"), ["p3.jsonl: row 1", "columns ['answer', 'question']"],
         {"p3.jsonl": jl({"question": "Add 2 and 3.", "answer": "5"})}),
]

RECIPE = ("stage: sft\noutput_dir: {d}/run\nmodel: {{name_or_path: builtin:tiny-llama}}\n"
          "data: {{train: [{{path: {d}/ok.jsonl}}]}}\n")


def recipe_case(cid: str, extra: str, expect: list[str], base: str = RECIPE, args=()) -> Case:
    extra = extra.replace("{", "{{").replace("}", "}}")  # recipe files are formatted with the case folder
    return Case(cid, ["train", "{d}/r.yaml", *args], expect, {"r.yaml": (base + extra).encode(), "ok.jsonl": jl(A)})


RECIPE_CASES = [
    recipe_case("recipe_unknown_top_key", "trainr: {learning_rate: 1.0e-4}\n",
                ["r.yaml", "unknown key 'trainr'", "did you mean 'trainer'"]),
    recipe_case("recipe_unknown_trainer_key", "trainer: {learning_rat: 1.0e-4}\n",
                ["trainer.learning_rat", "not a field of trl.SFTConfig", "learning_rate"]),
    recipe_case("recipe_unknown_model_key", "", ["model: unknown key 'name'", "name_or_path"],
                base=RECIPE.replace("name_or_path:", "name:")),
    recipe_case("recipe_lr_is_text", "trainer: {learning_rate: fast}\n",
                ["trainer.learning_rate", "expected", "'fast'"]),
    recipe_case("recipe_peft_rank_text", "peft: {r: sixteen}\n", ["peft.r: expected an integer", "'sixteen'"]),
    recipe_case("recipe_bool_as_text", "model: {name_or_path: builtin:tiny-llama, trust_remote_code: yes}\n",
                ["model.trust_remote_code: expected true or false", "'yes'"], base=RECIPE.split("model:")[0]
                + "data: {{train: [{{path: {d}/ok.jsonl}}]}}\n"),
    recipe_case("recipe_negative_lr", "trainer: {learning_rate: -1.0e-4}\n",
                ["trainer.learning_rate: expected a positive number, found -0.0001"]),
    recipe_case("recipe_zero_max_steps", "trainer: {max_steps: 0}\n", ["trainer.max_steps", "found 0"]),
    recipe_case("recipe_missing_model", "", ["model: required key is missing"],
                base="stage: sft\ndata: {{train: [{{path: {d}/ok.jsonl}}]}}\n"),
    recipe_case("recipe_missing_stage", "", ["stage: required key is missing", "sft"],
                base="model: {{name_or_path: builtin:tiny-llama}}\n"),
    recipe_case("recipe_unknown_stage", "", ["sfft", "sft"], base=RECIPE.replace("stage: sft", "stage: sfft")),
    recipe_case("recipe_bad_on_bad_row", "", ["data.on_bad_row: expected one of error, skip", "'ignore'"],
                base=RECIPE.replace("data: {{train", "data: {{on_bad_row: ignore, train")),
    recipe_case("recipe_reserved_output_dir", "trainer: {output_dir: elsewhere}\n",
                ["trainer.output_dir: use the top-level output_dir"]),
    recipe_case("recipe_other_stage_block", "dpo: {reference: copy}\n",
                ["block 'dpo:' belongs to stage 'dpo'", "stage is 'sft'"]),
    recipe_case("recipe_unset_env_var", "", ["environment variable ALIGN_KIT_NOPE is not set"],
                base=RECIPE.replace("output_dir: {d}/run", "output_dir: ${{ALIGN_KIT_NOPE}}/run")),
    recipe_case("recipe_invalid_yaml", "trainer: {learning_rate: 1e-4\n", ["r.yaml: invalid YAML"]),
    recipe_case("recipe_not_a_mapping", "", ["r.yaml: expected a mapping", "found list"], base="- stage: sft\n"),
    recipe_case("recipe_quantized_full_finetune", "quantization: {bits: 4}\n", ["quantization.bits=4 with full "
                                                                                "fine-tuning"]),
    recipe_case("recipe_fp16_on_cpu", "trainer: {fp16: true}\n", ["trainer.fp16=true needs a CUDA GPU"]),
    recipe_case("recipe_bad_override", "", ["override 'trainer.learning_rate'", "dotted.key=value"],
                args=("trainer.learning_rate",)),
    Case("recipe_file_missing", ["train", "{d}/nope.yaml"], ["nope.yaml: recipe file not found"]),
]

# Validation that needs the files the recipe names (run with the real stage, stopping before any training).
RUN_CASES = [
    recipe_case("recipe_missing_dataset_path", "", ["missing.jsonl", "no such file", "an existing data file"],
                base=RECIPE.replace("ok.jsonl", "missing.jsonl")),
    recipe_case("recipe_missing_model_folder", "", ["no_model_here"],
                base=RECIPE.replace("builtin:tiny-llama", "{d}/no_model_here")),
]

ALL = DATA_CASES + RECIPE_CASES + RUN_CASES
