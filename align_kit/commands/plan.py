"""``align-kit plan``: compute-optimal parameters/tokens under each scaling law, predicted loss, training time.

    align-kit plan --compute 1e21
    align-kit plan --params 7B --gpus 8 --tokens-per-sec 3200
    align-kit plan --tokens 300B --gpus 64 --peak-flops 989e12 --mfu 0.4
    align-kit plan --compute 1e20 --fit runs.csv     # also plan from constants fitted to your runs
"""

from __future__ import annotations

import re

from align_kit.errors import ConfigError
from align_kit.planner import (
    CHINCHILLA_APPROACH3,
    Allocation,
    Approach1,
    Kaplan,
    fit_parametric,
    read_runs,
    training_seconds,
)

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}


def parse_amount(text: str) -> float:
    """``7B``, ``1.5T``, ``400M``, ``1e21`` -> float.

    >>> parse_amount("7B"), parse_amount("1.5t"), parse_amount("1e21")
    (7000000000.0, 1500000000000.0, 1e+21)
    """
    match = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?\d+)?)\s*([KMBGTPkmbgtp]?)\s*", text)
    if not match:
        raise ConfigError(f"expected a number such as 7B, 1.5T or 1e21, got {text!r}")
    value = float(match.group(1)) * _SUFFIX[match.group(2).upper()]
    if value <= 0:
        raise ConfigError(f"expected a positive amount, got {text!r}")
    return value


def human(x: float) -> str:
    """Short engineering notation.

    >>> human(7.1e9), human(2.02e10), human(1.3e28)
    ('7.10B', '20.2B', '1.30e+28')
    """
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if scale <= x < 1000 * scale:
            return f"{x / scale:.3g}{unit}" if x / scale >= 10 else f"{x / scale:.2f}{unit}"
    return f"{x:.2e}"


def duration(seconds: float | None) -> str:
    """Seconds as hours or days.

    >>> duration(5400), duration(3 * 86400), duration(None)
    ('1.5 h', '3.0 days', '-')
    """
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds < 2 * 86400 else f"{seconds / 86400:.1f} days"


def _plans(args) -> list[tuple[Allocation, str]]:
    given = {"compute": args.compute, "params": args.params, "tokens": args.tokens}
    given = {k: parse_amount(v) for k, v in given.items() if v is not None}
    if len(given) != 1:
        raise ConfigError("give exactly one of --compute, --params, --tokens")
    laws = [(Approach1(), "loss from approach 3 at this allocation"),
            (CHINCHILLA_APPROACH3, "loss L(N, D), MassiveText nats/token"),
            (Kaplan(), "loss on WebText2, not comparable with Chinchilla's")]
    if args.fit:
        n, d, loss = read_runs(args.fit)
        law = fit_parametric(n, d, loss)
        print(f"fitted to {len(n)} runs in {args.fit}: E={law.E:.4g} A={law.A:.4g} B={law.B:.4g} "
              f"alpha={law.alpha:.4f} beta={law.beta:.4f} (N_opt ∝ C^{law.a:.3f}, D_opt ∝ C^{law.b:.3f})")
        laws.append((law, "loss from your fitted constants"))
    return [(law.plan(**given), note) for law, note in laws]


def run_plan(args) -> int:
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise ConfigError(f"--mfu must be in (0, 1], got {args.mfu}")
    if args.gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {args.gpus}")
    tps = parse_amount(args.tokens_per_sec) if args.tokens_per_sec else None
    peak = parse_amount(args.peak_flops) if args.peak_flops else None
    rows = _plans(args)
    print(f"{'law':<24}{'params':>10}{'tokens':>10}{'FLOPs':>11}{'tok/param':>10}{'loss':>8}{'time':>12}  note")
    for alloc, note in rows:
        secs = training_seconds(alloc, args.gpus, tps, peak, args.mfu or 0.4)
        loss = f"{alloc.loss:.3f}" if alloc.loss is not None else "-"
        print(f"{alloc.law:<24}{human(alloc.params):>10}{human(alloc.tokens):>10}{alloc.flops:>11.2e}"
              f"{alloc.tokens_per_param:>10.1f}{loss:>8}{duration(secs):>12}  {note}")
    if tps is None and peak is None:
        print("(pass --gpus with --tokens-per-sec, or --peak-flops and --mfu, for training time)")
    return 0


def register(sub, data_sub) -> None:
    p = sub.add_parser("plan", help="scaling-law planner: Chinchilla approaches 1 and 3, Kaplan")
    p.add_argument("--compute", help="training FLOPs budget (C = 6 N D), e.g. 1e21")
    p.add_argument("--params", help="model parameters, e.g. 7B")
    p.add_argument("--tokens", help="training tokens, e.g. 1.4T")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (for training time)")
    p.add_argument("--tokens-per-sec", help="measured training throughput per GPU, tokens/s")
    p.add_argument("--peak-flops", help="peak FLOP/s per GPU (e.g. 989e12 for H100 bf16 dense)")
    p.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation with --peak-flops (default 0.4)")
    p.add_argument("--fit", help="csv/jsonl of your runs (params, tokens, loss): fit approach-3 constants")
    p.set_defaults(func=run_plan)
