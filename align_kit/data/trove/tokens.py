"""Tokenise and pack as a datatrove step: each task writes one token shard (:mod:`align_kit.data.shards`)."""

from __future__ import annotations

from array import array

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from align_kit.data.blocks import document_ids
from align_kit.data.shards import write_shard


class TokenizeShards(PipelineStep):
    """``[BOS] doc [EOS]`` per document (the pretrain stage's packing), appended to one uint32 stream per
    task and written as ``{rank:05d}.bin`` + ``.json`` when the task ends. The tokenizer is loaded in the
    task (``AutoTokenizer.from_pretrained``), so only its name or path travels to a cluster node."""

    type = "🔢 - TOKENIZER"
    name = "align_kit tokenise and pack"

    def __init__(self, folder: str, tokenizer: str, add_bos: bool = True, add_eos: bool = True,
                 batch_size: int = 256):
        super().__init__()
        self.folder, self.tokenizer = folder, tokenizer
        self.add_bos, self.add_eos, self.batch_size = add_bos, add_eos, batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.tokenizer)
        bos = tok.bos_token_id if self.add_bos else None
        eos = tok.eos_token_id if self.add_eos else None
        stream, batch, documents = array("I"), [], 0

        def flush():
            enc = tok([d.text for d in batch], add_special_tokens=False, verbose=False)["input_ids"]
            for ids in enc:
                stream.extend(document_ids(ids, bos, eos))
            batch.clear()

        for doc in data or ():
            batch.append(doc)
            documents += 1
            if len(batch) >= self.batch_size:
                flush()
            yield doc
        if batch:
            flush()
        self.stat_update("tokens", value=len(stream))
        write_shard(self.folder, f"{rank:05d}", stream, {
            "documents": documents, "tokenizer": self.tokenizer, "vocab_size": len(tok), "bos": bos, "eos": eos})
