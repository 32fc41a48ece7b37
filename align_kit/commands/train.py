"""``align-kit train RECIPE [key=value ...]``, ``align-kit data convert`` and ``align-kit data inspect``."""

from __future__ import annotations

import argparse
from pathlib import Path

from align_kit.errors import ConfigError, SkipReport


def register(sub, data_sub) -> None:
    p = sub.add_parser("train", help="run one stage from a recipe")
    p.add_argument("recipe", help="recipe YAML file")
    # REMAINDER: argparse cannot mix a '*' positional with an option between its values, so --check and
    # --resume-anyway are picked out of the overrides by hand (they may come anywhere: before, between or after).
    p.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="dotted overrides, e.g. trainer.learning_rate=1e-4 peft.r=16")
    p.add_argument("--check", action="store_true", help="validate the recipe and exit (any position)")
    p.add_argument("--resume-anyway", action="store_true",
                   help="continue the run in output_dir although its settings changed (recorded in the manifest)")
    p.set_defaults(func=cmd_train, parser=p)

    pl = sub.add_parser("pipeline", help="run a pipeline of stages (finished stages are reused)")
    pl.add_argument("pipeline", help="pipeline YAML file")
    pl.add_argument("--output-dir", help="override the pipeline's output_dir")
    pl.add_argument("--set", action="append", default=[], metavar="STAGE:key=value",
                    help="override a stage's recipe key, e.g. --set sft:trainer.num_train_epochs=1")
    pl.add_argument("--only", action="append", help="run only these stages (others must be finished)")
    pl.add_argument("--resume-anyway", action="store_true",
                    help="continue stages whose settings changed since they ran (recorded in their manifests)")
    pl.set_defaults(func=cmd_pipeline)

    q = sub.add_parser("quickstart", help="run the offline quickstart pipeline: SFT, reward, DPO, PPO on CPU")
    q.add_argument("--output-dir", default="runs/quickstart")
    q.add_argument("--set", action="append", default=[], metavar="STAGE:key=value")
    q.add_argument("--seed", type=int, default=0,
                   help="draw the task data from this seed and add it to every stage's seed (0: the shipped data)")
    q.set_defaults(func=cmd_quickstart)

    c = data_sub.add_parser("convert", help="convert instruction data to the messages schema")
    c.add_argument("input", help="json, jsonl(.gz), csv, tsv or parquet file")
    c.add_argument("--format", default="auto", help="alpaca, flan, flan_cot, sharegpt, messages or auto")
    c.add_argument("--out", help="write converted rows as jsonl here")
    c.add_argument("--skip-bad-rows", action="store_true", help="drop bad rows and count them by reason")
    c.add_argument("--columns", action="append", metavar="SOURCE=TARGET",
                   help="rename columns first, like a recipe's columns: (e.g. --columns outptu=output,q=instruction)")
    c.set_defaults(func=cmd_convert)

    i = data_sub.add_parser("inspect", help="show one templated example (an SFT conversation, or a preference "
                            "pair's prompt, chosen and rejected) with its trained tokens marked")
    i.add_argument("recipe")
    i.add_argument("overrides", nargs="*")
    i.add_argument("--row", type=int, default=1, help="which training row (from 1)")
    i.add_argument("--ids", action="store_true", help="also list token ids with their trained flag")
    i.set_defaults(func=cmd_inspect)


def cmd_train(args) -> int:
    from align_kit.config import load_recipe
    from align_kit.stages import run_stage

    if {"-h", "--help"} & set(args.overrides):
        args.parser.print_help()
        return 0
    flags = ("--check", "--resume-anyway")
    overrides = [o for o in args.overrides if o not in flags]
    check = args.check or "--check" in args.overrides
    resume_anyway = args.resume_anyway or "--resume-anyway" in args.overrides
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        raise ConfigError(f"train: unknown option {unknown[0]} (options: {', '.join(flags)}); overrides are key=value")
    recipe = load_recipe(args.recipe, [*overrides, *(["resume_anyway=true"] if resume_anyway else [])])
    if check:
        from align_kit.identity import check as check_identity

        check_identity(recipe)  # a folder holding another run would stop the real run: --check says so too
        print(f"{args.recipe}: valid {recipe.stage} recipe")
        return 0
    out = run_stage(recipe)
    print(f"done: {out}")
    return 0


def _stage_overrides(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        stage, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            raise ConfigError(f"--set {item}: expected STAGE:dotted.key=value, e.g. sft:trainer.max_steps=10")
        out.setdefault(stage, []).append(kv)
    return out


def cmd_pipeline(args) -> int:
    from align_kit.pipeline import run_pipeline

    overrides = _stage_overrides(args.set)
    if args.resume_anyway:
        from align_kit.pipeline import load_pipeline

        for stage in load_pipeline(args.pipeline)[0].stages:
            overrides.setdefault(stage.name, []).append("resume_anyway=true")
    out = run_pipeline(args.pipeline, overrides, args.output_dir, args.only)
    print(f"done: {out} (report: {out / 'report.md'})")
    return 0


def cmd_quickstart(args) -> int:
    from align_kit.pipeline import run_pipeline

    path = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "pipeline.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: the quickstart runs from a clone of the repository "
                          "(pip install -e .), whose recipes/ it uses")
    overrides: dict[str, list[str]] = {}
    if args.seed:
        from align_kit.quickstart import seed_overrides

        if args.seed < 0:
            raise ConfigError(f"--seed {args.seed}: expected a seed >= 0")
        overrides = seed_overrides(path, args.seed, Path(args.output_dir) / "data")
    for stage, items in _stage_overrides(args.set).items():
        overrides.setdefault(stage, []).extend(items)
    out = run_pipeline(str(path), overrides, args.output_dir)
    print(f"done: {out} (report: {out / 'report.md'})")
    return 0


def cmd_convert(args) -> int:
    from align_kit.data.formats import convert_records, headerless_columns, parse_columns
    from align_kit.data.io import read_records

    cols = headerless_columns(args.input, args.format)
    report = SkipReport(args.input)
    records = read_records(args.input, columns=cols, skip_report=report if args.skip_bad_rows else None)
    rows = list(convert_records(records, args.format, args.input, skip=args.skip_bad_rows, report=report,
                                columns=parse_columns(args.columns)))
    return write_converted(rows, args.out, report)


def write_converted(rows: list[dict], out: str | None, report: SkipReport) -> int:
    """Write converted rows as jsonl (when ``out``) and print kept/rejected counts with example errors."""
    from align_kit.data.io import write_jsonl
    from align_kit.errors import DataError

    if not rows:  # an empty input (or one with every row rejected) is not a successful conversion
        raise DataError(report.source, None, None, f"no rows to convert ({report.summary()})",
                        "at least one convertible row")
    if out:
        write_jsonl(out, rows)
    print(report.summary())
    for example in report.examples[:5]:
        print(f"  {example}")
    return 0


def cmd_inspect(args) -> int:
    from align_kit.config import load_recipe
    from align_kit.data.sources import load_data
    from align_kit.data.tokenize import render_marked, tokenize_conversation
    from align_kit.families import get_template, stop_token_ids
    from align_kit.models import load_tokenizer

    # inputs=False: inspect reads the data and tokenizer itself, and shows a PPO recipe's prompts with the
    # builtin model too (a run needs the SFT stage's folder)
    recipe = load_recipe(args.recipe, args.overrides, inputs=False)
    if recipe.stage == "ppo":
        return _inspect_prompt(recipe, args)
    if recipe.stage not in ("sft", "dpo", "kto", "reward"):
        raise ConfigError(f"data inspect shows SFT conversations, preference pairs and RL prompts (sft, dpo, kto, "
                          f"reward, ppo recipes); {args.recipe} is a '{recipe.stage}' recipe")
    tokenizer = load_tokenizer(recipe.model)
    if recipe.stage != "sft":
        return _inspect_preference(args, recipe, tokenizer)
    rows = load_data(recipe.data, "instruction").train
    if not 1 <= args.row <= len(rows):
        raise ConfigError(f"--row {args.row}: expected 1..{len(rows)}")
    stops = stop_token_ids(tokenizer, get_template(tokenizer.align_kit_template))
    row = rows[args.row - 1]
    tok = tokenize_conversation(tokenizer, row["messages"], stops, tools=row.get("tools"))
    print(f"template: {tokenizer.align_kit_template}; trained tokens: {sum(tok.assistant_masks)} of "
          f"{len(tok.input_ids)}; [[...]] marks what the model learns")
    print(render_marked(tokenizer, tok))
    if args.ids:
        for tid, m in zip(tok.input_ids, tok.assistant_masks):
            print(f"{tid:>8} {'T' if m else '.'} {tokenizer.convert_ids_to_tokens(tid)!r}")
    return 0


def _inspect_preference(args, recipe, tokenizer) -> int:
    """A preference pair (dpo, reward) or a KTO row: the prompt as served, then each completion with the
    tokens the loss is computed on marked."""
    from align_kit.data.sources import load_data
    from align_kit.data.tokenize import completion_tokens, render_marked

    rows = load_data(recipe.data, "unpaired" if recipe.stage == "kto" else "preference").train
    if not 1 <= args.row <= len(rows):
        raise ConfigError(f"--row {args.row}: expected 1..{len(rows)}")
    row = rows[args.row - 1]
    print(f"template: {tokenizer.align_kit_template}; {recipe.stage} row {args.row}; [[...]] marks the completion "
          "tokens the loss is computed on")
    print("--- prompt (as served, with the generation prompt)")
    print(tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True))
    sides = [("completion", f"label {row['label']}")] if "label" in row else [("chosen", ""), ("rejected", "")]
    for side, note in sides:
        tok = completion_tokens(tokenizer, row["prompt"], row[side])
        print(f"--- {side}{' (' + note + ')' if note else ''}: {sum(tok.assistant_masks)} of {len(tok.input_ids)} "
              "tokens marked")
        print(render_marked(tokenizer, tok))
        if args.ids:
            for tid, m in zip(tok.input_ids, tok.assistant_masks):
                print(f"{tid:>8} {'T' if m else '.'} {tokenizer.convert_ids_to_tokens(tid)!r}")
    return 0


def _inspect_prompt(recipe, args) -> int:
    """An RL prompt as the policy sees it (chat template, generation prompt appended) and its reference fields."""
    import json

    from align_kit.data.sources import load_data
    from align_kit.models import load_tokenizer
    from align_kit.stages.ppo import checkpoint_dir, encode_prompts

    opts = recipe.options
    model = recipe.model
    if not model.name_or_path.startswith("builtin:"):
        import dataclasses

        model = dataclasses.replace(model, name_or_path=str(checkpoint_dir(model.name_or_path)))
    tokenizer = load_tokenizer(model)
    kind = {"conversations": "instruction", "preferences": "preference", "prompts": "prompt"}[opts.prompts_from]
    rows = load_data(recipe.data, kind).train
    if not 1 <= args.row <= len(rows):
        raise ConfigError(f"--row {args.row}: expected 1..{len(rows)}")
    refs: list[dict] = []
    ids, texts = encode_prompts([rows[args.row - 1]], tokenizer, opts.prompts_from, 10**9, refs)
    print(f"template: {tokenizer.align_kit_template}; prompt tokens: {len(ids[0])} "
          f"(max_prompt_length {opts.max_prompt_length}); the response is generated after the last line")
    print(tokenizer.decode(ids[0]))
    print(f"reference: {json.dumps(refs[0], ensure_ascii=False)}")
    if args.ids:
        for tid in ids[0]:
            print(f"{tid:>8} {tokenizer.convert_ids_to_tokens(tid)!r}")
    return 0
