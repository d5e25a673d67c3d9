"""Reference GPT-2 model in PyTorch, shaped like nanoGPT, matching `train`'s model.

This is the model `train` trains natively (native/include/gpt.h): GPT-2 with bias,
no dropout, GELU (tanh approximation), LayerNorm eps 1e-5, and an LM head tied to
the token embedding. Its state-dict names are exactly those `train` writes into
its checkpoints, so a checkpoint loads with `load_state_dict(strict=True)`:

    from interop.reference_gpt import from_checkpoint
    model = from_checkpoint("checkpoints/best.pt")
    logits, _ = model(torch.tensor([[1, 2, 3]]))

and training can continue in PyTorch from the same file:

    model, optimizer, ckpt = from_checkpoint("checkpoints/latest.pt", with_optimizer=True)

Model config keys: V (vocab), T (context), C (width), L (layers), H (heads), d_ff (MLP width).
Written for torch 1.13 (CPU) and later.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

CFG_KEYS = ("V", "T", "C", "L", "H", "d_ff")
IGNORE_INDEX = -100


def check_cfg(cfg: Mapping[str, int]) -> Dict[str, int]:
    """Return the six shape keys of cfg as ints, or raise ValueError naming what is wrong."""
    missing = [k for k in CFG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"model cfg is missing {missing}; expected keys {list(CFG_KEYS)}")
    out = {}
    for k in CFG_KEYS:
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"model cfg {k}={v!r}: expected a positive integer")
        out[k] = v
    if out["C"] % out["H"] != 0:
        raise ValueError(f"model cfg C={out['C']} is not divisible by H={out['H']}")
    return out


class CausalSelfAttention(nn.Module):
    def __init__(self, C: int, H: int, T: int):
        super().__init__()
        self.n_head = H
        self.c_attn = nn.Linear(C, 3 * C)  # q, k, v stacked along the output dim
        self.c_proj = nn.Linear(C, C)
        # Lower-triangular mask; not persistent, so it is not part of the state dict.
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, 1, T, T)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, H, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, C: int, d_ff: int):
        super().__init__()
        self.c_fc = nn.Linear(C, d_ff)
        self.c_proj = nn.Linear(d_ff, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, C: int, H: int, T: int, d_ff: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.attn = CausalSelfAttention(C, H, T)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.mlp = MLP(C, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT-shaped GPT-2. forward(idx, targets=None) -> (logits, loss or None)."""

    def __init__(self, cfg: Mapping[str, int], init_seed: Optional[int] = None):
        super().__init__()
        self.cfg = check_cfg(cfg)
        V, T, C, L, H, d_ff = (self.cfg[k] for k in CFG_KEYS)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(V, C),
                wpe=nn.Embedding(T, C),
                h=nn.ModuleList([Block(C, H, T, d_ff) for _ in range(L)]),
                ln_f=nn.LayerNorm(C, eps=1e-5),
            )
        )
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one storage
        self.reset_parameters(init_seed)

    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """GPT-2 init: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), biases 0, LN 1/0."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std_res = 0.02 / math.sqrt(2 * self.cfg["L"])
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    p.normal_(0.0, std_res, generator=gen)
                elif p.dim() >= 2:
                    p.normal_(0.0, 0.02, generator=gen)
                elif ".ln_" in name or name.startswith("transformer.ln_f"):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                else:
                    p.zero_()

    def forward(
        self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        B, T = idx.shape
        if T > self.cfg["T"]:
            raise ValueError(f"sequence length {T} exceeds the model context T={self.cfg['T']}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None) -> torch.Tensor:
        """Sample max_new_tokens continuations of idx (B, t); the context is cropped to T."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg["T"]:])
            logits = logits[:, -1, :] / max(temperature, 1e-8)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


# ---------------------------------------------------------------------------
# The flat layout of native/include/gpt.h (state-dict order, lm_head.weight left out)

TIED_LM_HEAD = "lm_head.weight"


def flat_layout(model: GPT) -> List[Tuple[str, Tuple[int, ...]]]:
    """(name, shape) of every tensor in the flat parameter buffer, in buffer order."""
    return [(n, tuple(t.shape)) for n, t in model.state_dict().items() if n != TIED_LM_HEAD]


def expected_layout(cfg: Mapping[str, int]) -> List[Tuple[str, Tuple[int, ...]]]:
    """The buffer order spelled out as in gpt.h, independent of module internals."""
    c = check_cfg(cfg)
    V, T, C, L, d_ff = c["V"], c["T"], c["C"], c["L"], c["d_ff"]
    out = [("transformer.wte.weight", (V, C)), ("transformer.wpe.weight", (T, C))]
    for l in range(L):
        p = f"transformer.h.{l}."
        out += [
            (p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
            (p + "attn.c_attn.weight", (3 * C, C)), (p + "attn.c_attn.bias", (3 * C,)),
            (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
            (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
            (p + "mlp.c_fc.weight", (d_ff, C)), (p + "mlp.c_fc.bias", (d_ff,)),
            (p + "mlp.c_proj.weight", (C, d_ff)), (p + "mlp.c_proj.bias", (C,)),
        ]
    out += [("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,))]
    return out


def params_by_name(model: GPT) -> Dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())


def load_flat(model: GPT, flat: torch.Tensor) -> None:
    """Copy a flat float32 buffer (gpt.h layout) into the model's parameters."""
    layout = flat_layout(model)
    total = sum(math.prod(s) for _, s in layout)
    if flat.numel() != total:
        raise ValueError(f"flat parameter buffer has {flat.numel()} floats, expected {total}")
    params = params_by_name(model)
    off = 0
    with torch.no_grad():
        for name, shape in layout:
            n = math.prod(shape)
            params[name].copy_(flat[off:off + n].view(shape))
            off += n


def to_flat(model: GPT, tensors: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
    """Concatenate tensors keyed by parameter name (default: the parameters) in gpt.h order."""
    src = tensors if tensors is not None else params_by_name(model)
    return torch.cat([src[n].detach().reshape(-1).float() for n, _ in flat_layout(model)])


def flat_grads(model: GPT) -> torch.Tensor:
    params = params_by_name(model)
    return to_flat(model, {n: (p.grad if p.grad is not None else torch.zeros_like(p))
                           for n, p in params.items()})


# ---------------------------------------------------------------------------
# Optimizer: nanoGPT's AdamW with two groups, and one training step


def param_groups(model: GPT, weight_decay: float) -> List[dict]:
    """nanoGPT's groups: decay = tensors with dim >= 2, no-decay = the rest, each in
    named_parameters order. The integer keys of optimizer_state["state"] in a `train`
    checkpoint index the concatenation [decay..., no_decay...] in this order."""
    named = list(model.named_parameters())
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def optimizer_param_names(model: GPT) -> List[str]:
    """Parameter names in optimizer index order (see param_groups)."""
    named = list(model.named_parameters())
    return [n for n, p in named if p.dim() >= 2] + [n for n, p in named if p.dim() < 2]


def make_optimizer(model: GPT, lr: float = 3e-4, weight_decay: float = 0.1,
                   betas: Tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


def train_step(model: GPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               lr: float, grad_clip: float) -> Dict[str, float]:
    """forward, backward, clip to grad_clip (<= 0: no clipping), AdamW step at lr.

    Returns loss and the global grad norm before clipping. Like the native step, the
    update is skipped when the loss or the norm is not finite."""
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    else:
        norm = float(torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2))
    applied = math.isfinite(norm) and math.isfinite(float(loss))
    if applied:
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.step()
    return {"loss": float(loss), "grad_norm": norm, "applied": applied}


# ---------------------------------------------------------------------------
# Checkpoints written by `train` (or by torch.save with the same dict)


def from_checkpoint(path: str, with_optimizer: bool = False, map_location: str = "cpu"):
    """Load a `train` checkpoint (dict with model_cfg, train_cfg, model_state,
    optimizer_state, step, best_val_loss).

    Returns the model, or (model, optimizer, checkpoint_dict) with with_optimizer=True;
    the optimizer is nanoGPT's AdamW (see param_groups) with optimizer_state loaded when
    the checkpoint has one (hyper-parameters then come from that state)."""
    ckpt = torch.load(path, map_location=map_location)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    missing = [k for k in ("model_cfg", "model_state") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint has no {missing}; keys are {sorted(ckpt)}")
    model = GPT(ckpt["model_cfg"])
    state = dict(ckpt["model_state"])
    if TIED_LM_HEAD not in state and "transformer.wte.weight" in state:
        state[TIED_LM_HEAD] = state["transformer.wte.weight"]  # tied: same tensor
    model.load_state_dict(state, strict=True)
    if not with_optimizer:
        return model
    optimizer = make_optimizer(model)
    if ckpt.get("optimizer_state") is not None:
        optimizer.load_state_dict(ckpt["optimizer_state"])
    return model, optimizer, ckpt
