"""PyTorch side of the checkpoint tests (tests/checkpoint*.test.ts).

    torch_checkpoint_check.py make DIR
        Writes files with torch.save into DIR (a state dict with tied weights, an AdamW
        state dict, whole checkpoint dicts, a memo-heavy object in pickle protocols 1, 2
        and 4) and DIR/manifest.json: for each file a typed description of what
        torch.load returns, plus flat float32 expectations (DIR/*.f32).

    torch_checkpoint_check.py describe FILE OUT
        torch.load(FILE) described as in `make`, written to OUT (json).

    torch_checkpoint_check.py check CKPT DIR
        Loads a checkpoint written by `train` with torch.load, checks it as a PyTorch
        user would (types, tied storage, load_state_dict(strict=True) into the reference
        model, AdamW.load_state_dict), computes the loss on DIR/batch.json, takes one
        AdamW step, and writes DIR/check.json, DIR/after_{params,m,v}.f32 and
        DIR/resaved.pt (the loaded dict saved again by torch.save).
"""

from __future__ import annotations

import collections
import json
import math
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from interop.reference_gpt import (  # noqa: E402
    GPT,
    make_optimizer,
    params_by_name,
    to_flat,
    train_step,
)


def describe(value, storages):
    """A JSON description of a torch.load result; storages maps storage pointers to ids."""
    if value is None:
        return {"t": "None"}
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        return {"t": "int", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": struct.pack(">d", value).hex()}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    if isinstance(value, bytes):
        return {"t": "bytes", "v": value.hex()}
    if isinstance(value, tuple):
        return {"t": "tuple", "v": [describe(x, storages) for x in value]}
    if isinstance(value, list):
        return {"t": "list", "v": [describe(x, storages) for x in value]}
    if isinstance(value, dict):
        kind = "odict" if isinstance(value, collections.OrderedDict) else "dict"
        return {"t": kind, "v": [[describe(k, storages), describe(x, storages)] for k, x in value.items()]}
    if isinstance(value, torch.Tensor):
        ptr = value.storage().data_ptr()
        sid = storages.setdefault(ptr, len(storages))
        flat = value.contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        return {
            "t": "tensor",
            "dtype": str(value.dtype).replace("torch.", ""),
            "shape": list(value.shape),
            "stride": list(value.stride()),
            "offset": value.storage_offset(),
            "storage": sid,
            "requires_grad": value.requires_grad,
            "bytes": raw.hex(),
        }
    raise TypeError(f"cannot describe {type(value).__name__}")


def misc_object():
    """Plain values and tensors of every dtype, shared objects, views and > 256 memo entries."""
    shared_list = [1, 2, 3]
    shared_tuple = (4, "five", 6.0)
    many = [f"key{i}" for i in range(300)]
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    gen = torch.Generator().manual_seed(5)
    return {
        "ints": [0, 1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -1, -(2**31), -(2**31) - 1,
                 2**53, 2**63, -(2**70), 2**200, -(2**200)],
        "floats": [0.0, -0.0, 0.1, 1.0, -2.5, 1e300, 5e-324, math.inf, -math.inf, math.nan],
        "bools": [True, False],
        "none": None,
        "str": "h\u00e9llo w\u00f6rld \u2713 \U0001F680",
        "empty_str": "",
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4, 5)],
        "shared": [shared_list, shared_list, shared_tuple, shared_tuple],
        "many": many,
        "again": [many[299], many, many[0]],
        "int_keys": {0: "a", 1: "b", -5: "c", 2**40: "d"},
        "odict": collections.OrderedDict([("z", 1), ("a", 2)]),
        "bytes": b"\x00\xffabc",
        "empty_bytes": b"",
        "tensors": {
            "base": base,
            "transposed": base.t(),
            "row": base[1],
            "tail": base.view(-1)[5:],
            "column": base[:, 2],
            "int64": torch.tensor([1, -2, 2**40]),
            "int32": torch.tensor([1, -2, 3], dtype=torch.int32),
            "int16": torch.tensor([1, -2, 3], dtype=torch.int16),
            "int8": torch.tensor([1, -2, 3], dtype=torch.int8),
            "uint8": torch.tensor([1, 2, 255], dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]),
            "float64": torch.tensor([0.1, -1e200], dtype=torch.float64),
            "float16": torch.tensor([1.5, -2.0, 65504.0, 6e-8], dtype=torch.float16),
            "bfloat16": torch.tensor([1.5, -2.0, 3e38], dtype=torch.bfloat16),
            "scalar": torch.tensor(3.5),
            "empty": torch.zeros(0, 3),
            "big": torch.randn(1000, generator=gen),
        },
    }


def write_f32(path, tensor):
    tensor.detach().to(torch.float32).contiguous().numpy().tofile(path)


def make(out):
    cfg = dict(V=32, T=8, C=16, L=2, H=2, d_ff=32)
    model = GPT(cfg, init_seed=1)
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        x = torch.randint(0, cfg["V"], (2, cfg["T"]), generator=gen)
        y = torch.randint(0, cfg["V"], (2, cfg["T"]), generator=gen)
        train_step(model, opt, x, y, lr=1e-3, grad_clip=1.0)
    sd = model.state_dict()
    osd = opt.state_dict()
    train_cfg = {"sources": {"wiki": 0.784, "roam": 0.196, "primer": 0.02},
                 "train_cfg": {"B": 2, "base_lr": 0.001, "total_steps": 2}, "val_source": "wiki"}
    ckpt = {"model_cfg": dict(cfg), "train_cfg": train_cfg, "model_state": sd,
            "optimizer_state": osd, "step": 2, "best_val_loss": 3.25}

    # nanoGPT's own habits: torch.compile prefix, causal-mask buffers, no separate
    # lm_head.weight entry, best_val_loss as a 0-dim tensor; no optimizer.
    nano = collections.OrderedDict(
        ("_orig_mod." + k, v) for k, v in sd.items() if k != "lm_head.weight")
    T = cfg["T"]
    for l in range(cfg["L"]):
        nano[f"_orig_mod.transformer.h.{l}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
    ckpt_nano = dict(ckpt, model_state=nano, optimizer_state=None, best_val_loss=torch.tensor(3.25))

    files = {
        "sd.pt": (sd, 2),
        "adamw.pt": (osd, 2),
        "ckpt.pt": (ckpt, 2),
        "ckpt_nanogpt.pt": (ckpt_nano, 2),
        "misc.pt": (misc_object(), 2),
        "misc_p1.pt": (misc_object(), 1),
        "misc_p4.pt": (misc_object(), 4),
    }
    manifest = {}
    for name, (obj, protocol) in files.items():
        path = os.path.join(out, name)
        torch.save(obj, path, pickle_protocol=protocol)
        manifest[name] = describe(torch.load(path), {})

    params = params_by_name(model)
    write_f32(os.path.join(out, "params.f32"), to_flat(model))
    write_f32(os.path.join(out, "m.f32"), to_flat(model, {n: opt.state[p]["exp_avg"] for n, p in params.items()}))
    write_f32(os.path.join(out, "v.f32"), to_flat(model, {n: opt.state[p]["exp_avg_sq"] for n, p in params.items()}))
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"cfg": cfg, "train_cfg": train_cfg, "files": manifest}, f)


def check(path, out):
    with open(os.path.join(out, "batch.json")) as f:
        batch = json.load(f)
    ck = torch.load(path)
    report = {
        "keys": list(ck.keys()),
        "types": {k: type(v).__name__ for k, v in ck.items()},
        "model_cfg": ck["model_cfg"],
        "train_cfg": ck["train_cfg"],
        "step": ck["step"],
        "best_val_loss": ck["best_val_loss"],
    }
    sd = ck["model_state"]
    report["model_state_keys"] = list(sd.keys())
    report["model_state_dtypes"] = sorted({str(t.dtype) for t in sd.values()})
    report["tied"] = sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    report["distinct_storages"] = len({t.storage().data_ptr() for t in sd.values()})

    model = GPT(ck["model_cfg"])
    model.load_state_dict(sd, strict=True)
    B, T = batch["B"], ck["model_cfg"]["T"]
    x = torch.tensor(batch["x"], dtype=torch.long).view(B, T)
    y = torch.tensor(batch["y"], dtype=torch.long).view(B, T)
    with torch.no_grad():
        _, loss = model(x, y)
    report["loss"] = float(loss)

    opt = make_optimizer(model)  # nanoGPT's groups; hyper-parameters come from the state
    opt.load_state_dict(ck["optimizer_state"])
    report["param_groups"] = [
        {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}, "n_params": len(g["params"])}
        for g in opt.param_groups
    ]
    report["state_steps"] = sorted({float(s["step"]) for s in opt.state.values()})
    report["state_step_dtypes"] = sorted({str(s["step"].dtype) + str(tuple(s["step"].shape)) for s in opt.state.values()})

    x2 = torch.tensor(batch["x2"], dtype=torch.long).view(B, T)
    y2 = torch.tensor(batch["y2"], dtype=torch.long).view(B, T)
    # the gradient norm of that step summed in float64: clip_grad_norm_ sums in float32,
    # which at GPT-2 small (124M parameters, one thread) was 3e-3 off
    model.zero_grad(set_to_none=True)
    model(x2, y2)[1].backward()
    report["grad_norm_f64"] = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))
    res = train_step(model, opt, x2, y2, lr=batch["lr"], grad_clip=batch["grad_clip"])
    report["step_loss"] = res["loss"]
    report["step_grad_norm"] = res["grad_norm"]
    params = params_by_name(model)
    write_f32(os.path.join(out, "after_params.f32"), to_flat(model))
    write_f32(os.path.join(out, "after_m.f32"), to_flat(model, {n: opt.state[p]["exp_avg"] for n, p in params.items()}))
    write_f32(os.path.join(out, "after_v.f32"), to_flat(model, {n: opt.state[p]["exp_avg_sq"] for n, p in params.items()}))
    torch.save(ck, os.path.join(out, "resaved.pt"))
    with open(os.path.join(out, "check.json"), "w") as f:
        json.dump(report, f)


def main(argv):
    torch.set_num_threads(1)
    if len(argv) == 2 and argv[0] == "make":
        make(argv[1])
    elif len(argv) == 3 and argv[0] == "describe":
        with open(argv[2], "w") as f:
            json.dump(describe(torch.load(argv[1]), {}), f)
    elif len(argv) == 3 and argv[0] == "check":
        check(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
