"""PyTorch reference measurement for bench/bench.ts (run in its own process).

usage: python3 bench/torch_bench.py '<job json>'
  {"kind":"train","cfg":{V,T,C,L,H,d_ff},"B":..,"warmup":..,"steps":..,"threads":..}
  {"kind":"idle","threads":..}   baseline RSS: interpreter + torch imported
Prints one JSON line: {"stepS", "evalS", "firstLoss", "lastLoss", "torch"}.

The step is what `train` does per step: sample a batch of random windows, forward,
cross-entropy, backward, clip_grad_norm_(1.0), AdamW (nanoGPT groups), at the same
hyper-parameters and the same thread count (torch.set_num_threads).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
from reference_gpt import GPT, make_optimizer, train_step  # noqa: E402


def lr_at(step: int, base=3e-4, min_lr=3e-5, warmup=10, total=1000) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * p)) * (base - min_lr)


MAX_TIMED_STEPS = 500


def run_train(job: dict) -> dict:
    cfg, B, T = job["cfg"], job["B"], job["cfg"]["T"]
    torch.manual_seed(1)
    model = GPT(cfg, init_seed=1)
    opt = make_optimizer(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(7)
    corpus = torch.randint(0, cfg["V"], (1 << 22,), generator=gen, dtype=torch.int32)
    offsets = torch.arange(T + 1)

    def sample():
        starts = torch.randint(0, corpus.numel() - T - 1, (B, 1), generator=gen)
        w = corpus[starts + offsets].long()
        return w[:, :-1], w[:, 1:]

    # timed steps: at least job["steps"] and at least job["minSeconds"] of them (as bench/worker.ts)
    warmup, steps, min_s = job["warmup"], job["steps"], job.get("minSeconds", 0)
    step_times, first, last = [], float("nan"), float("nan")
    i = 0
    while i < warmup + steps or (sum(step_times) < min_s and len(step_times) < MAX_TIMED_STEPS):
        t0 = time.perf_counter()
        x, y = sample()
        r = train_step(model, opt, x, y, lr_at(i), 1.0)
        dt = time.perf_counter() - t0
        if i == 0:
            first = r["loss"]
        if i == warmup + steps - 1:
            last = r["loss"]
        if i >= warmup:
            step_times.append(dt)
        i += 1

    eval_times = []
    with torch.no_grad():
        model(*sample())
        for _ in range(max(3, job["steps"])):
            x, y = sample()
            t0 = time.perf_counter()
            model(x, y)
            eval_times.append(time.perf_counter() - t0)
    return {
        "stepS": statistics.median(step_times),
        "evalS": statistics.median(eval_times),
        "firstLoss": first,
        "lastLoss": last,
        "torch": torch.__version__,
    }


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    job = json.loads(sys.argv[1])
    torch.set_num_threads(int(job.get("threads", 2)))
    result = run_train(job) if job["kind"] == "train" else {"torch": torch.__version__}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
