"""Incremental decoding in PyTorch: the reference for `train sample` (tests and bench).

The model is interop/reference_gpt.py's GPT; decoding adds a KV cache preallocated
for T positions (each step writes its keys and values in place: no torch.cat), as a
fair, fast PyTorch baseline at batch 1.

  logits   --cfg cfg.json --params flat.f32 --tokens ids.i32 --out logits.f32
           the full forward's logits (n, V) of the tokens: every position's reference
  bench    --checkpoint PATH --prompt 1,2,3 --new N [--threads k] [--rounds r]
           greedy KV-cached decoding of N tokens after the prompt; prints one JSON line
           {"ids": [...], "tokens_per_s": [...one per round], "threads": k}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_gpt import GPT, from_checkpoint, load_flat  # noqa: E402


class KVCache:
    """Keys and values of every layer, (1, H, T, hs) each, filled position by position."""

    def __init__(self, model: GPT):
        cfg = model.cfg
        hs = cfg["C"] // cfg["H"]
        shape = (1, cfg["H"], cfg["T"], hs)
        self.k = [torch.zeros(shape) for _ in range(cfg["L"])]
        self.v = [torch.zeros(shape) for _ in range(cfg["L"])]
        self.n = 0


@torch.no_grad()
def forward_cached(model: GPT, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits (V) of the last of idx (1, m), fed at positions cache.n .. cache.n + m - 1."""
    tr = model.transformer
    m = idx.shape[1]
    p0, p1 = cache.n, cache.n + m
    C, H = model.cfg["C"], model.cfg["H"]
    hs = C // H
    x = tr.wte(idx) + tr.wpe(torch.arange(p0, p1))
    for i, block in enumerate(tr.h):
        attn = block.attn
        q, k, v = attn.c_attn(block.ln_1(x)).split(C, dim=2)
        cache.k[i][:, :, p0:p1] = k.view(1, m, H, hs).transpose(1, 2)
        cache.v[i][:, :, p0:p1] = v.view(1, m, H, hs).transpose(1, 2)
        q = q.view(1, m, H, hs).transpose(1, 2)
        att = (q @ cache.k[i][:, :, :p1].transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        if m > 1:  # causal within the new rows
            att = att.masked_fill(~attn.mask[:, :, p0:p1, :p1], float("-inf"))
        y = (F.softmax(att, dim=-1) @ cache.v[i][:, :, :p1]).transpose(1, 2).reshape(1, m, C)
        x = x + attn.c_proj(y)
        x = x + block.mlp(block.ln_2(x))
    cache.n = p1
    return model.lm_head(tr.ln_f(x[:, -1]))[0]


def cmd_logits(a) -> None:
    cfg = json.load(open(a.cfg))
    model = GPT(cfg)
    load_flat(model, torch.from_numpy(np.fromfile(a.params, dtype=np.float32)))
    idx = torch.from_numpy(np.fromfile(a.tokens, dtype=np.int32).astype(np.int64)).view(1, -1)
    with torch.no_grad():
        logits, _ = model(idx)
    logits[0].numpy().astype(np.float32).tofile(a.out)


def cmd_bench(a) -> None:
    torch.set_num_threads(a.threads)
    model = from_checkpoint(a.checkpoint).eval()
    prompt = [int(t) for t in a.prompt.split(",")]
    T = model.cfg["T"]
    if len(prompt) + a.new > T:
        raise SystemExit(f"prompt {len(prompt)} + {a.new} new tokens exceed T={T}")
    rates, ids = [], []
    for _ in range(a.rounds):
        cache = KVCache(model)
        logits = forward_cached(model, torch.tensor([prompt]), cache)
        ids = []
        t0 = time.perf_counter()
        for _ in range(a.new):
            nxt = int(torch.argmax(logits))
            ids.append(nxt)
            logits = forward_cached(model, torch.tensor([[nxt]]), cache)
        rates.append(a.new / (time.perf_counter() - t0))
    print(json.dumps({"ids": ids, "tokens_per_s": rates, "threads": torch.get_num_threads()}))


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("logits")
    lg.add_argument("--cfg", required=True)
    lg.add_argument("--params", required=True)
    lg.add_argument("--tokens", required=True)
    lg.add_argument("--out", required=True)
    bn = sub.add_parser("bench")
    bn.add_argument("--checkpoint", required=True)
    bn.add_argument("--prompt", required=True)
    bn.add_argument("--new", type=int, required=True)
    bn.add_argument("--threads", type=int, default=1)
    bn.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args(argv)
    cmd_logits(a) if a.cmd == "logits" else cmd_bench(a)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
