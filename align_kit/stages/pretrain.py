"""Continued pretraining: raw text -> ``[BOS] doc [EOS]`` stream -> fixed blocks -> causal-LM loss.

The trainer is plain ``transformers.Trainer`` (``trainer:`` fills ``TrainingArguments``); full fine-tuning,
LoRA (``peft:``) and QLoRA (``peft:`` + ``quantization:``) come from ``models.py``. align_kit owns the data
work: each source is read (txt/jsonl/parquet/Hub via ``data/sources.py``), a held-out part is kept apart per
source, documents are packed into blocks per source (``data/blocks.py``) and the sources' blocks are mixed
by weight, so weights share tokens. Held-out perplexity (exp of the mean token loss) is measured per source
before and after training. Optional vocabulary extension (``vocab.py``) adds tokens before the model loads;
``load_model`` then grows the embeddings with mean-initialised rows.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import TrainingArguments

from align_kit.errors import ConfigError
from align_kit.stages import common

log = logging.getLogger("align_kit")
TRAINER_CONFIG = TrainingArguments
EMBEDDING_MODULES = ("embed_tokens", "lm_head")


@dataclass
class SentencePieceArgs:
    vocab_size: int = 8000
    """Pieces in the trained model; only those the base vocabulary lacks are added."""
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = 0.9995
    """Share of the corpus' characters the model must cover (Chinese needs high coverage: thousands of chars)."""
    max_sentences: int = 200_000
    """Lines sampled (seeded) from the training text to train on."""


@dataclass
class VocabExtension:
    tokens_file: str | None = None
    """A file with one new token per line (a plain list goes in ``model.new_tokens``)."""
    sentencepiece: SentencePieceArgs | None = None
    """Train a SentencePiece model on the training text and add its new pieces, most frequent first."""
    max_new_tokens: int | None = None
    """Add at most this many tokens."""
    only_new_characters: bool = True
    """Keep only SentencePiece pieces holding a character the base vocabulary cannot encode as one token, so
    text in characters it already knows keeps its exact tokenisation (see vocab.py). Not applied to
    ``tokens_file``, whose tokens are added whenever the vocabulary lacks them."""


@dataclass
class Options:
    block_size: int = 1024
    """Tokens per training block (at most the model's max_position_embeddings)."""
    add_eos: bool = True
    """EOS after every document: the model learns where documents end, and blocks spanning two documents say so."""
    add_bos: bool = True
    """BOS before every document when the tokenizer has one (Llama-style models were pretrained that way)."""
    extend_vocab: VocabExtension | None = None
    embedding_warmup_steps: int = 0
    """Before the main run, train only the new embedding rows for this many steps (everything else frozen),
    so random-ish new rows do not disturb the trained weights through large early gradients."""
    max_eval_blocks: int | None = 512
    """Cap on held-out blocks per source (evaluation runs twice: before and after)."""
    merge_lora: bool = True
    """Also save LoRA-merged weights in model/ (the adapter always goes to adapter/)."""
    shards: str | None = None
    """A ``tokens/`` folder written by ``align-kit data run`` with a tokenize step: training blocks are streamed
    from its memory-mapped shards (never loaded whole) instead of read from ``data``, which is then left out."""
    shuffle_buffer: int = 1024
    """Streaming: blocks are shuffled within windows of this many consecutive blocks (seeded); 0 or 1 keeps
    the shards' order."""


OPTIONS = Options


def check_options(recipe) -> None:
    o = recipe.options  # ranges of block_size, shuffle_buffer, ...: align_kit.ranges
    if o.shards is not None and recipe.data is not None:
        raise ConfigError("pretrain.shards: streams the training blocks, so data must be left out; found a data "
                          "section (tokenise held-out text with the same pipeline to evaluate it)")
    if o.shards is None and recipe.data is None:
        raise ConfigError("pretrain: expected data (training sources) or pretrain.shards, found neither")
    if o.shards is not None and (o.extend_vocab is not None or recipe.model.new_tokens):
        raise ConfigError("pretrain.shards: shards are token ids of a fixed tokenizer; vocabulary extension "
                          "needs the text (use data, or tokenise with the extended tokenizer)")
    ext = o.extend_vocab
    if ext is not None and ext.tokens_file is None and ext.sentencepiece is None:
        raise ConfigError("pretrain.extend_vocab: give tokens_file or sentencepiece (a plain list goes in "
                          "model.new_tokens)")
    grows = bool(recipe.model.new_tokens) or ext is not None
    if grows and recipe.peft is not None and not set(EMBEDDING_MODULES) & set(recipe.peft.modules_to_save):
        raise ConfigError("new tokens with LoRA: their embedding rows must be trained in full; set "
                          "peft.modules_to_save: [embed_tokens, lm_head]")
    if o.embedding_warmup_steps and not grows:
        raise ConfigError("pretrain.embedding_warmup_steps needs new tokens (model.new_tokens or pretrain.extend_vocab)")


VALIDATORS = (check_options,)


def trainer_extras(recipe) -> dict:
    """Streamed blocks come in the dataset's own (seeded, windowed) order: a random sampler would read all over."""
    return {"train_sampling_strategy": "sequential"} if recipe.options.shards is not None else {}


@dataclass
class Corpus:
    train: list[list[int]]
    """Mixed blocks of every training source."""
    eval: dict[str, list[list[int]]]
    """Held-out blocks per source name."""
    stats: dict
    loaded: object  # sources.Loaded: files and skip reports for the manifest


def load_documents(data) -> tuple[list[tuple[str, list[str], float]], dict[str, list[str]], object]:
    """Per training source ``(name, documents, weight)``; held-out documents per name; a ``Loaded`` record.

    Each source is loaded alone with the recipe's seed, which holds out exactly the documents
    ``load_data`` would (its split is per source), so held-out text can be scored per source.
    """
    from align_kit.data.sources import Loaded, load_data, load_source

    train, held_out, record = [], {}, Loaded([], [])
    names: list[str] = []

    def name_of(src) -> str:
        base = src.name or Path(str(src.path)).name.split(".")[0]
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
        return name

    fraction = 0.0 if data.eval else data.eval_fraction
    for src in data.train:
        one = load_data(dataclasses.replace(data, train=[src], eval=[], eval_fraction=fraction), "text")
        name = name_of(src)
        train.append((name, [r["text"] for r in one.train], src.weight))
        if one.eval:
            held_out[name] = [r["text"] for r in one.eval]
        record.reports += one.reports
        record.files += one.files
    for src in data.eval:
        rows, report, location = load_source(src, "text", data.on_bad_row == "skip", for_training=False)
        held_out[name_of(src)] = [r["text"] for r in rows]
        record.reports.append(report)
        record.files += [] if location.startswith("hub:") else [location]
    return train, held_out, record


def extend_vocabulary(options: Options, tokenizer, documents: list[str], out: Path, seed: int) -> list[str]:
    """Add the extension's tokens to ``tokenizer``. The chosen list is written to ``out/new_tokens.txt`` and
    read back on resume (and by the other processes of a distributed run), so every run sees the same ids."""
    from align_kit import vocab

    ext = options.extend_vocab
    saved = out / "new_tokens.txt"
    if saved.exists():
        tokens = vocab.read_token_file(saved)
    else:
        # A token file is the user's explicit choice: kept even when it re-segments old text (e.g. "<think>").
        listed = vocab.read_token_file(ext.tokens_file) if ext.tokens_file else []
        tokens = vocab.select_new_tokens(listed, tokenizer, only_new_characters=False)
        if ext.sentencepiece is not None:
            sp = ext.sentencepiece
            pieces = vocab.train_sentencepiece(documents, sp.vocab_size, sp.model_type, sp.character_coverage,
                                               sp.max_sentences, seed)
            tokens += [t for t in vocab.select_new_tokens(pieces, tokenizer, ext.only_new_characters)
                       if t not in set(tokens)]
        tokens = tokens[: ext.max_new_tokens]
        if common.is_main_process():
            out.mkdir(parents=True, exist_ok=True)
            tmp = saved.with_suffix(".tmp")
            tmp.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
            tmp.replace(saved)
    log.info("vocabulary: adding %d tokens (%s ...)", len(tokens), ", ".join(tokens[:8]))
    return vocab.extend_tokenizer(tokenizer, tokens)


def build_corpus(options: Options, tokenizer, train_docs, held_out, loaded, seed: int) -> Corpus:
    """Tokenise and pack every source; mix the training blocks by weight."""
    from align_kit.data.blocks import mix_blocks, mix_counts, pack_blocks, tokenize_documents

    bos = tokenizer.bos_token_id if options.add_bos else None
    eos = tokenizer.eos_token_id if options.add_eos else None
    if options.add_eos and eos is None:
        raise ConfigError("pretrain.add_eos: the tokenizer has no EOS token; set add_eos: false or give the "
                          "tokenizer an eos_token")

    def pack(docs):
        return pack_blocks(tokenize_documents(docs, tokenizer), options.block_size, bos, eos)

    stats, parts = {"block_size": options.block_size, "sources": {}}, []
    for name, docs, weight in train_docs:
        packed = pack(docs)
        if not packed.blocks:
            raise ConfigError(f"data: source '{name}' has {packed.tokens} tokens, fewer than one block of "
                              f"{options.block_size}; lower pretrain.block_size or add text")
        parts.append((packed.blocks, weight))
        stats["sources"][name] = {"documents": packed.documents, "characters": sum(map(len, docs)),
                                  "tokens": packed.tokens, "blocks": len(packed.blocks),
                                  "dropped_tokens": packed.dropped_tokens, "weight": weight}
    evals, per_char = {}, {}
    for name, docs in held_out.items():
        packed = pack(docs)
        blocks = packed.blocks[: options.max_eval_blocks]
        if blocks:
            evals[name] = blocks
            per_char[name] = packed.tokens / max(1, sum(map(len, docs)))
        else:
            log.warning("held-out '%s' is shorter than one block of %d tokens: not evaluated", name, options.block_size)
    train = mix_blocks(parts, seed)
    counts = mix_counts([len(b) for b, _ in parts], [w for _, w in parts]) if len(parts) > 1 else [len(train)]
    for (name, _, _), n in zip(train_docs, counts):
        stats["sources"][name]["mixed_blocks"] = n  # blocks of this source in the training mixture
    stats["train_blocks"] = len(train)
    stats["eval_blocks"] = {k: len(v) for k, v in evals.items()}
    stats["eval_tokens_per_char"] = per_char
    return Corpus(train, evals, stats, loaded)


def streamed_corpus(options: Options, tokenizer, seed: int) -> Corpus:
    """Training blocks streamed from ``options.shards`` (:class:`~align_kit.data.shards.ShardBlocks`); the
    shards must hold ids of this tokenizer (vocabulary size and EOS id are checked)."""
    from align_kit.data.shards import ShardBlocks
    from align_kit.data.sources import Loaded

    blocks = ShardBlocks(options.shards, options.block_size, options.shuffle_buffer, seed)
    meta = blocks.metas[0]
    if meta.get("vocab_size", 0) > len(tokenizer) or (meta.get("eos") is not None
                                                       and meta["eos"] != tokenizer.eos_token_id):
        raise ConfigError(f"pretrain.shards: tokenised with {meta.get('tokenizer')} (vocabulary "
                          f"{meta.get('vocab_size')}, EOS {meta.get('eos')}); expected the model's tokenizer "
                          f"(vocabulary {len(tokenizer)}, EOS {tokenizer.eos_token_id})")
    if len(blocks) == 0:
        raise ConfigError(f"pretrain.shards: no shard holds one block of {options.block_size} tokens")
    stats = {"block_size": options.block_size, "train_blocks": len(blocks), "eval_blocks": {},
             "eval_tokens_per_char": {}, "shards": {"folder": str(options.shards), "count": len(blocks.shards),
                                                   "tokens": sum(m["tokens"] for m in blocks.metas),
                                                   "shuffle_buffer": options.shuffle_buffer}}
    return Corpus(blocks, {}, stats, Loaded([], [], files=[str(p) for p, _ in blocks.shards]))


def run(recipe) -> Path:
    from datasets import Dataset
    from transformers import Trainer

    from align_kit.data.blocks import collate_blocks
    from align_kit.models import load_model, load_tokenizer
    from align_kit.rundir import finish_run, start_run

    o, out = recipe.options, Path(recipe.output_dir)
    streaming = o.shards is not None
    args = recipe.trainer_config()  # built and validated when the recipe was loaded (see trainer_extras)
    tokenizer = load_tokenizer(recipe.model)
    if streaming:
        train_docs, held_out, loaded = [], {}, None
    else:
        train_docs, held_out, loaded = load_documents(recipe.data)
    base_vocab = len(tokenizer) - len(recipe.model.new_tokens)
    new_tokens = list(recipe.model.new_tokens)
    if o.extend_vocab is not None:
        with args.main_process_first(desc="vocabulary extension"):
            new_tokens += extend_vocabulary(o, tokenizer, [d for _, docs, _ in train_docs for d in docs], out,
                                            recipe.seed)
    if streaming:
        corpus = streamed_corpus(o, tokenizer, recipe.seed)
    else:
        corpus = build_corpus(o, tokenizer, train_docs, held_out, loaded, recipe.seed)
    model = load_model(recipe.model, tokenizer, quant=recipe.quantization)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and o.block_size > max_pos:  # a Hub model's; local ones were checked at load
        raise ConfigError(f"pretrain.block_size={o.block_size} exceeds the model's max_position_embeddings={max_pos}")
    model = add_adapters(model, recipe)
    eval_sets = {name: Dataset.from_dict({"input_ids": blocks}) for name, blocks in corpus.eval.items()}
    stats = {**corpus.stats, "new_tokens": len(new_tokens), "base_vocab_size": base_vocab}
    run_info = start_run(recipe, corpus.loaded, extra=stats)
    train_set = corpus.train if streaming else Dataset.from_dict({"input_ids": corpus.train})
    trainer = Trainer(model=model, args=args, train_dataset=train_set,
                      eval_dataset=eval_sets or None, data_collator=collate_blocks, processing_class=tokenizer,
                      callbacks=common.stage_callbacks(recipe))
    per_char = corpus.stats["eval_tokens_per_char"]
    eos = tokenizer.eos_token_id if o.add_eos else None
    evals = {"before": evaluate(trainer, eval_sets, per_char, eos)}
    resume = common.last_checkpoint(out)
    if o.embedding_warmup_steps and resume is None:
        warm_new_embeddings(trainer, recipe, base_vocab)
    common.train(trainer, out, resume)
    evals["after"] = evaluate(trainer, eval_sets, per_char, eos)
    common.save_final(trainer.model, tokenizer, out, merge_lora=o.merge_lora, accelerator=trainer.accelerator)
    finish_run(run_info, trainer.state.log_history, evals)
    return out


def add_adapters(model, recipe):
    """``models.apply_lora``, keeping tied input/output embeddings tied when both are in ``modules_to_save``
    (stories260K, Qwen2.5 0.5B, Gemma): otherwise PEFT trains a copy of the input embedding only and the
    output rows of new tokens stay at their initial values."""
    if recipe.peft is None:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    from align_kit.models import lora_config

    if recipe.quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = lora_config(recipe.peft, model)
    if getattr(model.config, "tie_word_embeddings", False) and set(EMBEDDING_MODULES) & set(recipe.peft.modules_to_save):
        config.ensure_weight_tying = True
    return get_peft_model(model, config)


def evaluate(trainer, eval_sets: dict, tokens_per_char: dict, eos_id: int | None = None) -> dict:
    """Per held-out source: mean token loss, perplexity = exp(loss), and bits per character = loss x
    tokens/char / ln 2, which compares models with different tokenizers (a vocabulary extension changes
    what a token is). Every block has the same length, so the Trainer's mean over blocks is the mean over
    tokens; tokens/char is that of the source's held-out documents (BOS/EOS included).

    With ``eos_id`` (``pretrain.add_eos``: an EOS after every document, which a base model may never have seen
    between documents) also ``perplexity_without_eos``: the same blocks without the positions that predict
    the EOS or the token after it (``align_kit.evaluation.perplexity``), so before and after compare on text
    the base model was trained to predict."""
    from align_kit.evaluation import block_perplexity

    result = {}
    for name, ds in eval_sets.items():
        # Logged as eval_<source>_loss, the key Trainer uses for the same set during training.
        loss = trainer.evaluate(eval_dataset=ds, metric_key_prefix=f"eval_{name}")[f"eval_{name}_loss"]
        result[name] = {"loss": loss, "perplexity": math.exp(loss),
                        "bits_per_char": loss * tokens_per_char[name] / math.log(2)}
        if eos_id is not None:  # every rank runs the forward: under FSDP it is collective
            rest = block_perplexity(trainer.model, ds["input_ids"], without_id=eos_id,
                                    batch_size=trainer.args.per_device_eval_batch_size)
            result[name].update(perplexity_without_eos=rest["perplexity_without"],
                                eos_positions_left_out=rest["tokens_left_out"])
    if result and trainer.is_world_process_zero():
        log.info("held-out perplexity: %s", {k: round(v["perplexity"], 3) for k, v in result.items()})
        if eos_id is not None:
            log.info("held-out perplexity without the EOS positions pretrain.add_eos added: %s",
                     {k: round(v["perplexity_without_eos"], 3) for k, v in result.items()})
    return result


def warm_new_embeddings(trainer, recipe, base_vocab: int) -> None:
    """Train only rows ``base_vocab..`` of the input/output embeddings for ``embedding_warmup_steps`` steps.

    Every other parameter is frozen, and a gradient hook zeroes the old rows, so with Adam (zero gradient ->
    zero moments -> zero update) and no weight decay, old rows and all other weights are bit-for-bit unchanged.
    """
    from transformers import Trainer

    model = trainer.model
    was_trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    rows = [p for n, p in model.named_parameters() if p.requires_grad and any(m in n for m in EMBEDDING_MODULES)
            and p.dim() == 2 and p.shape[0] > base_vocab]
    if not rows:
        raise ConfigError("pretrain.embedding_warmup_steps: no trainable embedding rows found (with LoRA set "
                          "peft.modules_to_save: [embed_tokens, lm_head])")
    for p in model.parameters():
        p.requires_grad_(False)
    hooks = []
    for p in rows:
        p.requires_grad_(True)
        hooks.append(p.register_hook(lambda g: _zero_rows(g, base_vocab)))
    args = dataclasses.replace(trainer.args, output_dir=str(Path(trainer.args.output_dir) / "embedding_warmup"),
                               max_steps=recipe.options.embedding_warmup_steps, weight_decay=0.0,
                               save_strategy="no", eval_strategy="no")
    try:
        Trainer(model=model, args=args, train_dataset=trainer.train_dataset, data_collator=trainer.data_collator,
                processing_class=trainer.processing_class).train()
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(was_trainable[n])


def _zero_rows(grad, n: int):
    """The gradient with its first ``n`` rows zeroed (a copy: autograd owns ``grad``)."""
    grad = grad.clone()
    grad[:n] = 0
    return grad
