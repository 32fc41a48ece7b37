"""DPO from an SFT checkpoint: preference pairs -> TRL's DPOTrainer. KTO (``stages/kto.py``) shares this module's
options, reference handling, checks and training path (``build_trainer``, ``train_and_evaluate``).

DPO's sigmoid loss for a pair (Rafailov et al. 2023), with log-probs summed over the response tokens:
``-log sigmoid(beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))))``.
``trainer.loss_type`` picks any variant TRL's DPOTrainer implements (checked up front, see ``LOSS_TYPES``).
TRL 1.16's DPOTrainer has no reference-free loss; SimPO/ORPO live in ``trl.experimental`` and are not wired.

The reference model, ``dpo.reference``:
- ``copy``: a second frozen copy of the starting checkpoint in memory (works with full fine-tuning and LoRA);
- ``adapter``: LoRA only; the reference is the policy with its adapter disabled, so no second copy;
- ``precomputed``: reference log-probs computed once before training and cached in ``<output>/ref_cache/``,
  keyed by a hash of the training pairs and of the starting weights, so a re-run or resume reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trl import DPOConfig

from align_kit.errors import ConfigError
from align_kit.stages import common
from align_kit.stages.reward import use_finished_stage

log = logging.getLogger("align_kit")
TRAINER_CONFIG = DPOConfig
# Every loss DPOTrainer._compute_loss implements in TRL 1.16 (a test re-reads TRL's source to keep this true).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
REFERENCES = ("auto", "copy", "adapter", "precomputed")


@dataclass
class Options:
    reference: str = "auto"
    """copy | adapter | precomputed | auto (adapter with LoRA, else copy). See the module docstring."""
    verifier: str | None = None
    """module:function judging (prompt, response) -> bool; greedy accuracy on eval prompts before and after."""
    verifier_max_new_tokens: int = 16
    merge_lora: bool = True
    """Also save LoRA-merged weights in model/ (the adapter always goes to adapter/)."""
    logprob_token_tile: int = 512
    """Tokens per tile of TRL's chunked log-prob head where it runs without Triton (CPU); 0 keeps TRL's 4,096.
    See ``logprob_tiles``."""


OPTIONS = Options


def reference_mode(recipe) -> str:
    """The reference handling a recipe asks for, checked against its peft setting."""
    mode = recipe.options.reference
    if mode not in REFERENCES:
        raise ConfigError(f"{recipe.stage}.reference: unknown value {mode!r}; valid: {', '.join(REFERENCES)}")
    if mode == "auto":
        return "adapter" if recipe.peft is not None else "copy"
    if mode == "adapter" and recipe.peft is None:
        raise ConfigError(f"{recipe.stage}.reference: adapter needs a peft: block (the reference is the policy with "
                          "its LoRA adapter disabled); with full fine-tuning use copy or precomputed")
    return mode


def check_options(recipe, valid: tuple[str, ...]) -> None:
    """The checks DPO and KTO share; ``valid`` is the stage's loss names (TRL's DPO or KTO trainer)."""
    losses = recipe.trainer.get("loss_type", valid[0])
    for name in [losses] if isinstance(losses, str) else losses:
        if name not in valid:
            raise ConfigError(f"trainer.loss_type: unknown {recipe.stage.upper()} loss {name!r}; "
                              f"TRL {recipe.stage.upper()} has: {', '.join(valid)}")
    if recipe.trainer.get("precompute_ref_log_probs") is not None:
        raise ConfigError(f"trainer.precompute_ref_log_probs: set {recipe.stage}.reference: precomputed instead "
                          "(align_kit then caches the reference log-probs in the output folder)")
    if recipe.data is None:
        raise ConfigError(f"data: the {recipe.stage} stage needs preference data (data.train)")
    reference_mode(recipe)


def _check(recipe) -> None:
    check_options(recipe, LOSS_TYPES)


VALIDATORS = (_check,)


def trainer_extras(recipe) -> dict:
    """What the stage sets in the trainer config itself: TRL precomputes the reference log-probs for
    ``dpo.reference: precomputed``."""
    return {"precompute_ref_log_probs": reference_mode(recipe) == "precomputed"}


def data_hash(rows: list[dict], *extra: str) -> str:
    """Short stable hash of training rows and identifying strings (cache keys).

    >>> data_hash([{"a": 1}], "m") == data_hash([{"a": 1}], "m") != data_hash([{"a": 2}], "m")
    True
    """
    h = hashlib.sha256()
    for part in extra:
        h.update(part.encode())
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def cached_dataset(rows: list[dict], out: Path, key: str):
    """A Dataset backed by files in ``out/ref_cache/<key>``: TRL's precomputed reference log-probs are then
    written beside it (named by the dataset fingerprint + model hash) instead of a temporary folder, and a
    later run over the same data and model finds them."""
    from accelerate import PartialState
    from datasets import Dataset, load_from_disk

    folder = out / "ref_cache" / key
    with PartialState().main_process_first():  # under accelerate one process writes, the others then read
        if not (folder / "dataset_info.json").exists():
            tmp = folder.with_suffix(".tmp")
            Dataset.from_list(rows).save_to_disk(str(tmp))
            tmp.rename(folder)
        return load_from_disk(str(folder))


def _load_models(recipe, tokenizer, mode: str):
    """(policy, reference or None, peft config or None); LoRA is applied by TRL from the peft config so that
    the adapter-disabled policy is exactly the starting checkpoint."""
    from align_kit.models import load_model, lora_config

    quantized = recipe.quantization is not None
    policy = load_model(recipe.model, tokenizer, quant=recipe.quantization)
    peft_config = None
    if recipe.peft is not None:
        if quantized:
            from peft import prepare_model_for_kbit_training

            policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=False)
        peft_config = lora_config(recipe.peft, policy)
    ref = None
    if mode == "copy":
        ref = load_model(recipe.model, tokenizer, quant=recipe.quantization).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    return policy, ref, peft_config


@contextmanager
def logprob_tiles(tokens: int, device):
    """Run TRL's chunked log-prob head with ``tokens`` tokens per tile while the block runs (0: TRL's own).

    DPOTrainer and KTOTrainer patch policy and reference with this head so the [tokens x vocabulary] logits are
    never materialised whole. Without Triton (CPU) TRL folds each [4,096 x min(vocabulary, 32,768)] tile with torch
    ops that allocate several tile-sized float32 temporaries, 500 MiB each at a 32,000 vocabulary: most of the
    DPO stage's peak memory (benchmarks/RESULTS.md: the process peaked at 5.7 GB with TRL's tile, 2.2 GB with
    512-token tiles, at the same speed).
    Tokens are independent rows of the tile, so the log-probs do not change, only the order of the weight
    gradient's sums over tokens. On CUDA the Triton kernel folds tiles in place and is left alone.
    """
    from trl.kernels import chunked_logprob as kernel

    if not tokens or kernel._use_triton(device):
        yield
        return
    saved = kernel.TOKEN_CHUNK_SIZE
    kernel.TOKEN_CHUNK_SIZE = tokens
    try:
        yield
    finally:
        kernel.TOKEN_CHUNK_SIZE = saved


def build_trainer(recipe, trainer_cls, train_rows: list[dict], tokenizer, mode: str):
    """The configured TRL trainer for a recipe (policy, reference handling, cached data); not yet trained."""
    out = Path(recipe.output_dir)
    policy, ref, peft_config = _load_models(recipe, tokenizer, mode)
    if mode == "precomputed":
        key = data_hash(train_rows, recipe.stage, recipe.model.name_or_path, tokenizer.chat_template or "")
        train_ds = cached_dataset(train_rows, out, key)
    else:
        from datasets import Dataset

        train_ds = Dataset.from_list(train_rows)
    args = recipe.trainer_config()  # built by the loader with trainer_extras: precomputed reference or not
    return trainer_cls(model=policy, ref_model=ref, args=args, train_dataset=train_ds,
                       processing_class=tokenizer, peft_config=peft_config,
                       callbacks=common.stage_callbacks(recipe))


def train_and_evaluate(recipe, trainer_cls, train_rows: list[dict], eval_pairs: list[dict], data, tokenizer,
                       mode: str) -> Path:
    """Train ``train_rows`` with ``trainer_cls``; evaluate ``eval_pairs`` before and after; write the run folder."""
    from align_kit.evaluation import preference_eval
    from align_kit.evaluation.engine import evaluation_engine, stage_engine
    from align_kit.rundir import finish_run, start_run

    out = Path(recipe.output_dir)
    run_info = start_run(recipe, data, extra={"reference": mode, "train_rows": len(train_rows)})
    trainer = build_trainer(recipe, trainer_cls, train_rows, tokenizer, mode)
    run_info.extra["long_rows"] = common.account_trl_rows(trainer, len(train_rows), recipe.data.long_rows)
    evals: dict = {"reference": mode}
    if recipe.options.verifier:  # what generated the verifier's answers
        evals["generated_by"] = evaluation_engine(recipe)
    main = trainer.is_world_process_zero()
    o = recipe.options

    def evaluate(reference=None):  # the main process's; a vLLM evaluation engine lives for this call only
        prompts = [p["prompt"] for p in eval_pairs] if o.verifier else []
        with stage_engine(recipe, trainer.model, tokenizer, prompts, o.verifier_max_new_tokens,
                          trainer.accelerator) as engine:
            return preference_eval(trainer.model, tokenizer, eval_pairs, o.verifier, o.verifier_max_new_tokens,
                                   reference=reference, engine=engine)

    before = evaluate() if main else None
    with logprob_tiles(recipe.options.logprob_token_tile, trainer.accelerator.device):
        common.train(trainer, out)
    if main:
        after = evaluate(reference=before)
        evals.update(before=before.summary(), after=after.summary())
        log.info("%s eval before: %s", recipe.stage, evals["before"])
        log.info("%s eval after:  %s", recipe.stage, evals["after"])
    # every rank: under FSDP / ZeRO-3 gathering the weights to save them is collective
    common.save_final(trainer.model, tokenizer, out, merge_lora=recipe.options.merge_lora,
                      accelerator=trainer.accelerator)
    trainer.accelerator.wait_for_everyone()
    finish_run(run_info, trainer.state.log_history, evals)
    return out


def run(recipe) -> Path:
    from trl import DPOTrainer

    from align_kit.data.sources import load_data
    from align_kit.models import load_tokenizer

    mode = reference_mode(recipe)
    use_finished_stage(recipe)
    tokenizer = load_tokenizer(recipe.model)
    data = load_data(recipe.data, "preference")
    for split, rows in (("train", data.train), ("eval", data.eval)):
        if rows and "label" in rows[0]:
            raise ConfigError(f"data ({split}): unpaired rows (prompt, completion, label) need stage: kto")
    keep = ("prompt", "chosen", "rejected")  # TRL's DPO ignores margin; keep the rows hashable and minimal
    train = [{k: r[k] for k in keep} for r in data.train]
    return train_and_evaluate(recipe, DPOTrainer, train, data.eval, data, tokenizer, mode)

