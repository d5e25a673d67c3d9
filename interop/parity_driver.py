"""Compute what the native step computes, with the PyTorch reference, for parity tests.

usage: python3 interop/parity_driver.py DIR [DIR ...]

Each DIR holds (all little-endian):
  cfg.json      {"V","T","C","L","H","d_ff","B"}
  params.f32    flat float32 parameters in the gpt.h layout
  x.i32, y.i32  int32 tokens / targets (-100 = ignored), k*B*T each: k batches;
                step s uses batch s mod k, the gradients use batch 0
  hparams.json  {"lr": number or [per step], "weightDecay", "beta1", "beta2", "eps",
                 "gradClip", "steps", "threads" (optional, default 1)}
and receives:
  out.json        {"layout": [[name, shape]...], "loss": loss of batch 0,
                   "nTargets": counted targets of batch 0,
                   "steps": [{"loss", "gradNorm", "applied"}...]}
  grads.f32       unclipped gradients of batch 0 at the given params (gpt.h layout)
  params_after.f32, m_after.f32, v_after.f32
                  parameters and AdamW moments after `steps` steps with clipping

Exit status 2 with a message on bad input.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_gpt import (  # noqa: E402
    GPT, check_cfg, expected_layout, flat_grads, flat_layout, load_flat, make_optimizer,
    params_by_name, to_flat, train_step,
)


class InputError(Exception):
    pass


def read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: {e}")


def read_array(path: str, dtype, count_multiple: int) -> np.ndarray:
    try:
        a = np.fromfile(path, dtype=dtype)
    except OSError as e:
        raise InputError(f"{path}: {e}")
    if a.size == 0 or a.size % count_multiple != 0:
        raise InputError(f"{path}: {a.size} values, expected a positive multiple of {count_multiple}")
    return a


def hparam(h: Dict[str, Any], key: str, path: str) -> float:
    if not isinstance(h.get(key), (int, float)):
        raise InputError(f"{path}: '{key}' must be a number")
    return float(h[key])


def run_dir(d: str) -> None:
    cfg_raw = read_json(os.path.join(d, "cfg.json"))
    cfg = check_cfg(cfg_raw)
    B = int(cfg_raw.get("B", 0))
    if B < 1:
        raise InputError(f"{d}/cfg.json: 'B' must be a positive integer")
    hp_path = os.path.join(d, "hparams.json")
    hp = read_json(hp_path)
    steps = int(hp.get("steps", 0))
    torch.set_num_threads(int(hp.get("threads", 1)))

    model = GPT(cfg)
    layout = flat_layout(model)
    if layout != expected_layout(cfg):
        raise RuntimeError("reference module's state-dict order differs from gpt.h")
    n_params = sum(int(np.prod(s)) for _, s in layout)
    params = read_array(os.path.join(d, "params.f32"), np.float32, n_params)
    if params.size != n_params:
        raise InputError(f"{d}/params.f32: {params.size} floats, expected {n_params}")
    BT = B * cfg["T"]
    x = read_array(os.path.join(d, "x.i32"), np.int32, BT).astype(np.int64).reshape(-1, B, cfg["T"])
    y = read_array(os.path.join(d, "y.i32"), np.int32, BT).astype(np.int64).reshape(-1, B, cfg["T"])
    if x.shape != y.shape:
        raise InputError(f"{d}: x.i32 has {x.shape[0]} batches, y.i32 has {y.shape[0]}")
    if x.min() < 0 or x.max() >= cfg["V"]:
        raise InputError(f"{d}/x.i32: token ids must be in [0, {cfg['V']})")
    if ((y != -100) & ((y < 0) | (y >= cfg["V"]))).any():
        raise InputError(f"{d}/y.i32: targets must be in [0, {cfg['V']}) or -100")
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)

    load_flat(model, torch.from_numpy(params))

    # Gradients of batch 0, unclipped.
    model.zero_grad(set_to_none=True)
    _, loss = model(xs[0], ys[0])
    loss.backward()
    flat_grads(model).numpy().astype(np.float32).tofile(os.path.join(d, "grads.f32"))
    out: Dict[str, Any] = {
        "layout": [[n, list(s)] for n, s in layout],
        "loss": float(loss),
        "nTargets": int((ys[0] != -100).sum()),
        "steps": [],
    }

    # `steps` AdamW steps with clipping, from the same starting point.
    lr = hp.get("lr")
    lrs = lr if isinstance(lr, list) else [lr] * steps
    if len(lrs) < steps or not all(isinstance(v, (int, float)) for v in lrs[:steps]):
        raise InputError(f"{hp_path}: 'lr' must be a number or a list of >= {steps} numbers")
    opt = make_optimizer(
        model, lr=float(lrs[0]) if steps else 0.0,
        weight_decay=hparam(hp, "weightDecay", hp_path),
        betas=(hparam(hp, "beta1", hp_path), hparam(hp, "beta2", hp_path)),
        eps=hparam(hp, "eps", hp_path),
    )
    clip = hparam(hp, "gradClip", hp_path)
    for s in range(steps):
        k = s % xs.shape[0]
        r = train_step(model, opt, xs[k], ys[k], float(lrs[s]), clip)
        out["steps"].append({"loss": r["loss"], "gradNorm": r["grad_norm"], "applied": r["applied"]})

    to_flat(model).numpy().astype(np.float32).tofile(os.path.join(d, "params_after.f32"))
    named = params_by_name(model)
    for key, fname in (("exp_avg", "m_after.f32"), ("exp_avg_sq", "v_after.f32")):
        moments = {n: opt.state[p][key] if p in opt.state else torch.zeros_like(p)
                   for n, p in named.items()}
        to_flat(model, moments).numpy().astype(np.float32).tofile(os.path.join(d, fname))
    with open(os.path.join(d, "out.json"), "w") as f:
        json.dump(out, f)


def main(argv) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for d in argv:
        try:
            run_dir(d)
        except (InputError, ValueError) as e:
            print(f"parity_driver: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
