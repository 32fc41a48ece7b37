"""Where an align_kit SFT step spends its time: steady-state step time and MFU, then ``torch.profiler`` over a
few steps, with kernel time grouped (matmuls, attention, optimizer, the rest) and the share of the step the
GPU sat idle waiting for the host.

It trains through ``align_kit.stages.sft.run`` (the user's code path) on the checkpoint and data that
``bench_sft.py`` prepares, with a timing callback added to the stage's callbacks.

    python benchmarks/profile_sft.py --config 1b                  # GPU track shape (needs CUDA)
    python benchmarks/profile_sft.py --config 1b --extra '{"per_device_train_batch_size": 16}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sft  # noqa: E402
import common  # noqa: E402

GROUPS = {  # kernel-name fragments -> group (first match wins; names differ across CUDA versions)
    "attention": ("flash", "fmha", "attention", "sdpa", "efficient"),
    "matmul": ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul"),
    "optimizer": ("adam", "multi_tensor", "foreach"),
    "reduction/norm": ("reduce", "norm", "softmax", "cross_entropy", "nll"),
}


def group_of(name: str) -> str:
    """Coarse kernel group by name.

    >>> group_of("sm90_xmma_gemm_bf16bf16"), group_of("fmha_cutlassF"), group_of("vectorized_elementwise_kernel")
    ('matmul', 'attention', 'other')
    """
    low = name.lower()
    for group, keys in GROUPS.items():
        if any(k in low for k in keys):
            return group
    return "other"


def make_callback(profile_from: int, profile_steps: int):
    import torch
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.prof = None
            self.profiled_wall = 0.0

        def on_step_begin(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.t0 = time.perf_counter()
            if state.global_step == profile_from:
                acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - self.t0
            if self.prof is not None and profile_from < state.global_step <= profile_from + profile_steps:
                self.profiled_wall += elapsed
                if state.global_step == profile_from + profile_steps:
                    self.prof.__exit__(None, None, None)
            else:
                self.times.append(elapsed)

    return StepProfiler()


def kernel_summary(prof, wall_s: float) -> dict:
    groups: dict[str, float] = {}
    for evt in prof.key_averages():
        dev_us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if dev_us and evt.device_type.name == "CUDA":
            groups[group_of(evt.key)] = groups.get(group_of(evt.key), 0.0) + dev_us / 1e6
    busy = sum(groups.values())
    return {"profiled_wall_s": round(wall_s, 4), "gpu_busy_s": round(busy, 4),
            "gpu_idle_share": round(1 - busy / wall_s, 3) if wall_s else None,
            "kernel_share": {g: round(t / busy, 3) for g, t in sorted(groups.items(), key=lambda x: -x[1])}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="1b", choices=list(bench_sft.GPU_CONFIGS))
    p.add_argument("--rows", type=int, default=999)
    p.add_argument("--extra", default="{}", help="JSON: trainer settings on top of the config's")
    p.add_argument("--profile-from", type=int, default=8)
    p.add_argument("--profile-steps", type=int, default=3)
    ns = p.parse_args(argv)
    import torch

    from align_kit.stages import common as stage_common

    if not torch.cuda.is_available():
        raise SystemExit("profile_sft.py needs CUDA (the CPU track's profiles were taken with py-spy)")
    tag = ns.config.split("-")[0]
    shape = common.GPU_SHAPES[tag]
    work = bench_sft.prepare("llama", ns.rows, shape, tag)
    samples = json.loads((work / f"data-{ns.rows}.json").read_text())
    extra = {**bench_sft.GPU_CONFIGS[ns.config], **json.loads(ns.extra)}
    cb = make_callback(ns.profile_from, ns.profile_steps)
    original = stage_common.stage_callbacks
    stage_common.stage_callbacks = lambda recipe: [*original(recipe), cb]
    bench_sft.arm_align_kit(work, ns.rows, dict(extra))
    steps = len(cb.times) + ns.profile_steps
    tokens = bench_sft.real_tokens(samples)
    step_s = statistics.median(cb.times[2:])  # the first steps pay for cuBLAS / allocator warm-up
    tps = tokens / steps / step_s
    n = common.count_params(shape, bench_sft._vocab(work))
    fpt = common.train_flops_per_token(n, shape, int(tokens / len(samples)), lora="peft" in extra)
    rec = {"bench": "sft_profile", "config": ns.config, "extra": extra, "steps": steps,
           "first_step_s": round(cb.times[0], 3), "median_step_s": round(step_s, 4),
           "steady_tokens_per_s": round(tps, 1), "steady_mfu": round(common.mfu(tps, fpt), 4),
           "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
           **kernel_summary(cb.prof, cb.profiled_wall)}
    print(cb.prof.key_averages().table(sort_by="self_device_time_total", row_limit=20), flush=True)
    common.emit(rec)
    return rec


if __name__ == "__main__":
    main()
