"""The data of a `train` run in Python: configs, token caches and the batch sampler.

A port of src/config.ts (the parts a run needs), src/data/{cache,stream,sft,mask,eval}.ts
and src/util/random.ts, bit for bit: the batch of step s is the batch `train` draws at
step s (tests/torch-train.test.ts compares the token ids of many steps, pretrain and SFT).

  - Caches are opened with numpy.memmap, never read whole; the checks of src/data/cache.ts
    (meta keys, file size, ids below vocab_size <= model V, example boundaries) run once,
    in chunks.
  - The RNG is sfc32 keyed by (seed, step, stream), so a batch depends on (seed, step) only.
  - Floating point steps (mixture normalisation, uniform draws) follow the TypeScript
    order of operations exactly; Python floats are the same IEEE doubles.

Also a small command line that prints the sampled batches, for comparing with `train`:

    python3 interop/torch_data.py --phase pretrain --config configs/pretrain.json \\
        --steps 0:100 --out batches.bin     # int32: x then y of each step, then the eval batches
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

IGNORE_INDEX = -100
STREAM_SOURCES = ("wiki", "roam", "primer")
SFT_SOURCES = ("dolly", "oasst1", "primer")
LONG_EXAMPLE_RULES = ("head", "cut_prompt", "drop")  # src/data/long-examples.ts
CACHE_ROOT = os.path.join("data", "cache")
DTYPES = {"uint16": np.uint16, "uint32": np.uint32, "int32": np.int32}

# src/util/random.ts RNG_STREAM
RNG_STREAM = {"train": 0x74726169, "eval": 0x6576616C, "init": 0x696E6974}

# src/config.ts TRAIN_DEFAULTS (the spec's defaults)
# src/config.ts PHASE_DEFAULTS: the keys of a phase config other than train_cfg
DEFAULT_SOURCES = {"wiki": 0.784, "roam": 0.196, "primer": 0.02}
DEFAULT_INIT_FROM = os.path.join("checkpoints", "pretrain", "best.pt")
INIT_FROM_NONE = "none"  # SFT from fresh weights, asked for explicitly

TRAIN_DEFAULTS = {
    "seed": 42, "B": 32, "total_steps": 20000, "eval_every": 200, "eval_batches": 50,
    "ckpt_every": 1000, "log_every": 50, "base_lr": 3e-4, "warmup_steps": 200, "min_lr": 3e-5,
    "grad_clip": 1.0, "accum_steps": 1, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95,
    "eps": 1e-8, "max_nonfinite_steps": 3,
}
MODEL_KEYS = ("V", "T", "C", "L", "H", "d_ff")
M32 = 0xFFFFFFFF


class InputError(Exception):
    """Bad input (config, cache, checkpoint, flag): one message, exit 2, no stack trace."""


# ---------------------------------------------------------------------------
# RNG (src/util/random.ts)


def mix32(x: int) -> int:
    """lowbias32: a bijective 32-bit mixer."""
    x &= M32
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & M32
    x ^= x >> 15
    x = (x * 0x735A2D97) & M32
    x ^= x >> 15
    return x


class Rng:
    """sfc32 keyed by (seed, step, stream): the draws of a step depend on nothing else."""

    def __init__(self, seed: int, step: int = 0, stream: int = 0):
        lo, hi = seed & M32, (seed // 2**32) & M32
        self.a = mix32(lo)
        self.b = mix32(hi ^ mix32(stream ^ 0x9E3779B9))
        self.c = mix32((step & M32) ^ 0x85EBCA6B)
        self.d = 1
        for _ in range(16):
            self.next_u32()

    def next_u32(self) -> int:
        t = (self.a + self.b + self.d) & M32
        self.d = (self.d + 1) & M32
        self.a = self.b ^ (self.b >> 9)
        self.b = (self.c + (self.c << 3)) & M32
        self.c = ((self.c << 21) | (self.c >> 11)) & M32
        self.c = (self.c + t) & M32
        return t

    def uniform(self) -> float:
        """Uniform in [0, 1) with 53 random bits."""
        hi = self.next_u32() >> 5
        lo = self.next_u32() >> 6
        return (hi * 67108864 + lo) / 9007199254740992

    def below(self, n: int) -> int:
        return math.floor(self.uniform() * n)

    def normal(self) -> float:
        u1 = 1 - self.uniform()
        return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * self.uniform())

    def pick(self, cum: Sequence[float]) -> int:
        u = self.uniform()
        for i in range(len(cum) - 1):
            if u < cum[i]:
                return i
        return len(cum) - 1


def cumulative(probs: Sequence[float]) -> List[float]:
    cum, s = [], 0.0
    for p in probs:
        s += p
        cum.append(s)
    cum = [c / s for c in cum]
    cum[-1] = 1.0
    return cum


def normalize(probs: Dict[str, float]) -> Dict[str, float]:
    """Sources with p > 0, divided by the total (src/config.ts normalize, paths.ts normalizeMixture)."""
    total = 0.0
    for p in probs.values():
        total += p
    return {k: p / total for k, p in probs.items() if p > 0}


# ---------------------------------------------------------------------------
# Configs (src/config.ts): the same files, defaults and REPO_ROOT rule


def read_json(path: str, what: str) -> object:
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise InputError(f"{what} {path}: file not found") from None
    except OSError as e:
        raise InputError(f"{what} {path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _is_int(v: object, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def train_cfg_problems(tc: dict) -> List[str]:
    """The checks of TrainCfgSchema (types and ranges) as "/train_cfg/key: ..." lines."""
    probs = []
    ints1 = ("B", "total_steps", "eval_every", "eval_batches", "ckpt_every", "log_every", "max_nonfinite_steps")
    for k, v in tc.items():
        where = f"/train_cfg/{k}"
        if k not in TRAIN_DEFAULTS:
            probs.append(f"{where}: unknown key \"{k}\" (expected one of: {', '.join(TRAIN_DEFAULTS)})")
        elif k in ints1 and not _is_int(v, 1):
            probs.append(f"{where}: expected an integer >= 1, got {json.dumps(v)}")
        elif k in ("seed", "warmup_steps") and not _is_int(v, 0):
            probs.append(f"{where}: expected an integer >= 0, got {json.dumps(v)}")
        elif k == "accum_steps" and v != 1:
            probs.append(f"{where}: gradient accumulation is not supported (spec non-goal), got {json.dumps(v)}")
        elif k in ("base_lr", "min_lr", "grad_clip", "weight_decay") and not (_is_num(v) and 0 <= v <= 3.4028234663852886e38):
            probs.append(f"{where}: expected a number from 0 to 3.4e38 (the step runs in float32), got {json.dumps(v)}")
        elif k in ("beta1", "beta2") and not (_is_num(v) and 0 <= v < 1):
            probs.append(f"{where}: expected a number in [0, 1), got {json.dumps(v)}")
        elif k == "eps" and not (_is_num(v) and 1.1754943508222875e-38 <= v <= 3.4028234663852886e38):
            probs.append(f"{where}: expected a number from 1.2e-38 to 3.4e38 (above 0 in float32), got {json.dumps(v)}")
    return probs


class PhaseConfig:
    """A pretrain or sft config and its model cfg, checked; paths resolve against REPO_ROOT."""

    def __init__(self, path: str, phase: str, repo_root: str):
        self.file = os.path.abspath(os.path.join(repo_root, path))
        self.phase = phase
        raw = read_json(self.file, f"{phase} config")
        if not isinstance(raw, dict):
            raise InputError(f"{phase} config {self.file}: expected a JSON object")
        mix_key = "sources" if phase == "pretrain" else "sft_sources"
        other = "sft_sources" if phase == "pretrain" else "sources"
        allowed = {"model_cfg_path", "train_cfg", mix_key, "val_source"} | ({"init_from", "long_examples"} if phase == "sft" else set())
        probs = []
        if other in raw and mix_key not in raw:
            probs.append(f"/: this is {'an sft' if phase == 'pretrain' else 'a pretrain'} config (it has \"{other}\"), expected {'a pretrain' if phase == 'pretrain' else 'an sft'} config")
        probs += [f"/{k}: unknown key \"{k}\" (expected one of: {', '.join(sorted(allowed))})" for k in raw if k not in allowed]
        for k in ("model_cfg_path", "train_cfg") + (("sft_sources",) if phase == "sft" else ()):
            if k not in raw:
                probs.append(f"/: missing required key \"{k}\"")
        tc = raw.get("train_cfg", {})
        if not isinstance(tc, dict):
            probs.append("/train_cfg: expected an object")
            tc = {}
        probs += train_cfg_problems(tc)
        names = STREAM_SOURCES if phase == "pretrain" else SFT_SOURCES
        mix = raw.get(mix_key, DEFAULT_SOURCES if phase == "pretrain" else {})
        if not isinstance(mix, dict) or any(k not in names or not (_is_num(p) and p >= 0) for k, p in mix.items()):
            probs.append(f"/{mix_key}: expected an object of source -> probability >= 0 with sources in {', '.join(names)}")
            mix = {}
        elif sum(mix.values()) <= 0:
            probs.append(f"/{mix_key}: expected at least one probability > 0")
        vals = STREAM_SOURCES + (("sft",) if phase == "sft" else ())
        val_source = raw.get("val_source", "wiki")
        init = raw.get("init_from", DEFAULT_INIT_FROM)
        if phase == "sft" and not (isinstance(init, str) and init):
            probs.append(f"/init_from: expected a checkpoint path, or \"{INIT_FROM_NONE}\" to start from fresh weights (omit the key to start from {DEFAULT_INIT_FROM}), got {json.dumps(init)}")
        if val_source not in vals:
            probs.append(f"/val_source: expected one of {', '.join(json.dumps(v) for v in vals)}, got {json.dumps(val_source)}")
        long_examples = raw.get("long_examples", "head")
        if phase == "sft" and long_examples not in LONG_EXAMPLE_RULES:
            probs.append(f"/long_examples: expected one of {', '.join(json.dumps(r) for r in LONG_EXAMPLE_RULES)}, got {json.dumps(long_examples)}")
        train = {**TRAIN_DEFAULTS, **tc}
        if not probs and train["min_lr"] > train["base_lr"]:
            probs.append(f"/train_cfg/min_lr: {train['min_lr']} is above base_lr {train['base_lr']}")
        if not probs and "warmup_steps" in tc and train["warmup_steps"] > train["total_steps"]:
            probs.append(f"/train_cfg/warmup_steps: {train['warmup_steps']} is above total_steps {train['total_steps']}: the learning rate would never reach base_lr")
        if probs:
            raise InputError(f"{phase} config {self.file} is invalid:\n" + "\n".join(f"  {p}" for p in probs))
        self.model_cfg_file = os.path.abspath(os.path.join(repo_root, raw["model_cfg_path"]))
        model = read_json(self.model_cfg_file, "model cfg")
        mprobs = []
        if not isinstance(model, dict):
            mprobs.append("/: expected a JSON object")
        else:
            mprobs += [f"/{k}: expected an integer >= 1, got {json.dumps(model.get(k))}" for k in MODEL_KEYS if not _is_int(model.get(k), 1)]
            mprobs += [f"/{k}: unknown key \"{k}\" (expected one of: {', '.join(MODEL_KEYS)})" for k in model if k not in MODEL_KEYS]
            if not mprobs and model["C"] % model["H"] != 0:
                mprobs.append(f"/C: {model['C']} is not divisible by H={model['H']}")
        if mprobs:
            raise InputError(f"model cfg {self.model_cfg_file} (model_cfg_path of {self.file}) is invalid:\n" + "\n".join(f"  {p}" for p in mprobs))
        self.raw = raw  # stored verbatim as train_cfg
        self.model_raw = model  # stored verbatim as model_cfg
        self.model = {k: model[k] for k in MODEL_KEYS}
        self.train = train
        self.sources = normalize(mix)
        self.val_source = val_source
        self.long_examples = long_examples  # what an SFT row holds of an example longer than T+1
        self.init_from = os.path.abspath(os.path.join(repo_root, init)) if phase == "sft" and init != INIT_FROM_NONE else None


def load_pipeline(path: str, repo_root: str) -> Tuple[PhaseConfig, PhaseConfig]:
    file = os.path.abspath(os.path.join(repo_root, path))
    raw = read_json(file, "pipeline config")
    keys = ("pretrain_config_path", "sft_config_path")
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), str) for k in keys) or set(raw) - set(keys):
        raise InputError(f"pipeline config {file}: expected exactly the keys {', '.join(keys)} (paths relative to REPO_ROOT)")
    pre = PhaseConfig(raw["pretrain_config_path"], "pretrain", repo_root)
    sft = PhaseConfig(raw["sft_config_path"], "sft", repo_root)
    diff = [f"{k}: {pre.model[k]} vs {sft.model[k]}" for k in MODEL_KEYS if pre.model[k] != sft.model[k]]
    if diff:
        raise InputError(f"pipeline config {file}: the pretrain and sft configs name different models ({', '.join(diff)}); SFT starts from the pretrained weights, so both must name the same model shape")
    return pre, sft


def phase_of_train_cfg(train_cfg: object) -> Optional[str]:
    if not isinstance(train_cfg, dict):
        return None
    # an sft config always has sft_sources; a pretrain config may omit sources (the default)
    return "sft" if "sft_sources" in train_cfg else "pretrain" if "sources" in train_cfg or "model_cfg_path" in train_cfg else None


# ---------------------------------------------------------------------------
# Token caches (src/data/cache.ts, docs/cache-format.md)


class TokenCache:
    """<root>/<kind>/<source>_<split>.bin (+ .meta.json), memory-mapped and checked once."""

    CHUNK = 1 << 24  # tokens per chunk of the id scan

    def __init__(self, root: str, kind: str, source: str, split: str, model_v: int):
        self.bin_path = os.path.join(root, kind, f"{source}_{split}.bin")
        self.meta_path = self.bin_path + ".meta.json"
        meta = read_json(self.meta_path, "cache meta")
        fail = lambda msg: InputError(f"{self.meta_path}: invalid cache meta: {msg}")
        if not isinstance(meta, dict):
            raise fail("expected a JSON object")
        if meta.get("dtype") not in DTYPES:
            raise fail(f"\"dtype\" is {json.dumps(meta.get('dtype'))}, expected one of {', '.join(DTYPES)}")
        for k in ("num_tokens", "vocab_size"):
            if not _is_int(meta.get(k), 0 if k == "num_tokens" else 1):
                raise fail(f"\"{k}\" is {json.dumps(meta.get(k))}, expected an integer")
        if meta["vocab_size"] > model_v:
            raise fail(f"\"vocab_size\" is {meta['vocab_size']}, larger than the model vocabulary V={model_v}; expected <= {model_v}")
        if "kind" in meta and meta["kind"] != kind:
            raise fail(f"\"kind\" is {json.dumps(meta['kind'])}, expected \"{kind}\" (the cache is in the {kind}/ directory)")
        self.meta = meta
        self.specials = meta.get("special_tokens") or {}
        width = np.dtype(DTYPES[meta["dtype"]]).itemsize
        size = os.path.getsize(self.bin_path)
        n = meta["num_tokens"]
        if size != n * width:
            raise InputError(f"{self.bin_path}: holds {size} bytes, but {os.path.basename(self.meta_path)} says num_tokens {n} of {meta['dtype']} ({n * width} bytes): the file is truncated or does not belong to this meta")
        self.num_tokens = n
        self.tokens = np.memmap(self.bin_path, dtype=DTYPES[meta["dtype"]], mode="r", shape=(n,)) if n > 0 else np.zeros(0, DTYPES[meta["dtype"]])
        for i in range(0, n, self.CHUNK):
            c = self.tokens[i:i + self.CHUNK]
            lo, hi = int(c.min()), int(c.max())
            if lo < 0 or hi >= meta["vocab_size"]:
                bad = i + int(np.nonzero((c < 0) | (c >= meta["vocab_size"]))[0][0])
                raise InputError(f"{self.bin_path}: token {bad} has id {int(self.tokens[bad])}, expected 0 <= id < vocab_size {meta['vocab_size']} (model V={model_v})")
        self.offsets: Optional[np.ndarray] = None
        if kind == "sft":
            self.offsets = self._boundaries(meta)

    def _boundaries(self, meta: dict) -> np.ndarray:
        b = meta.get("boundaries")
        if isinstance(b, list):
            where = self.meta_path
            o = np.asarray(b, dtype=np.int64)
        elif isinstance(b, dict) and isinstance(b.get("file"), str):
            where = os.path.join(os.path.dirname(self.meta_path), b["file"])
            count = b.get("count")
            if not os.path.exists(where):
                raise InputError(f"{where}: boundary file missing: expected {count} uint64 offsets (named by the cache meta)")
            if os.path.getsize(where) != 8 * count:
                raise InputError(f"{where}: size {os.path.getsize(where)} bytes, expected {8 * count} (count {count} uint64 offsets from the meta)")
            o = np.fromfile(where, dtype="<u8").astype(np.int64)
        else:
            raise InputError(f"{self.meta_path}: invalid cache meta: \"boundaries\" missing, expected the example offsets")
        if len(o) == 0 or o[0] != 0 or np.any(np.diff(o) <= 0) or o[-1] != self.num_tokens:
            raise InputError(f"{where}: example offsets must start at 0, increase strictly and end at num_tokens {self.num_tokens}")
        return o

    def special(self, name: str) -> int:
        if name not in self.specials:
            raise InputError(f"{self.meta_path}: special token {name} missing from \"special_tokens\"")
        return int(self.specials[name])


def open_mixture(root: str, kind: str, mixture: Dict[str, float], split: str, model_v: int) -> List[Tuple[float, TokenCache]]:
    sources = normalize(mixture)
    missing = []
    for s in sources:
        bin_path = os.path.join(root, kind, f"{s}_{split}.bin")
        missing += [q for q in (bin_path, bin_path + ".meta.json") if not os.path.exists(q)]
    if missing:
        raise InputError(f"missing cache files (cache root {root}):\n" + "\n".join(f"  {m}" for m in missing)
                         + "\nbuild them with scripts/prepare-data.ts (docs/cache-format.md)")
    caches = [(p, TokenCache(root, kind, s, split, model_v)) for s, p in sources.items()]
    first = caches[0][1]
    for _, c in caches[1:]:
        if c.meta.get("tokenizer") != first.meta.get("tokenizer"):
            raise InputError(f"{c.meta_path}: tokenizer \"{c.meta.get('tokenizer')}\" differs from \"{first.meta.get('tokenizer')}\" of {first.meta_path}; caches read together must share one tokenizer")
    return caches


# ---------------------------------------------------------------------------
# Batches (src/data/stream.ts, sft.ts, mask.ts, eval.ts)


class StreamBatches:
    """Pretraining: per row a source by the mixture, then a window of T+1 tokens at a uniform offset."""

    def __init__(self, caches: List[Tuple[float, TokenCache]], B: int, T: int, seed: int, stream: int):
        for _, c in caches:
            if c.num_tokens < T + 1:
                raise InputError(f"{c.bin_path}: holds {c.num_tokens} tokens, fewer than one window of T+1={T + 1}")
        self.caches = [c for _, c in caches]
        self.cum = cumulative([p for p, _ in caches])
        self.B, self.T, self.seed, self.stream = B, T, seed, stream

    def batch(self, step: int) -> Tuple[np.ndarray, np.ndarray]:
        """(x, y) of a step, int64 (B, T)."""
        rng = Rng(self.seed, step, self.stream)
        T = self.T
        x = np.empty((self.B, T), np.int64)
        y = np.empty((self.B, T), np.int64)
        for b in range(self.B):
            c = self.caches[rng.pick(self.cum)]
            off = rng.below(c.num_tokens - T)
            w = c.tokens[off:off + T + 1]
            x[b], y[b] = w[:T], w[1:]
        return x, y

    def targets_before(self, step: int) -> int:
        """Counted targets of the batches of steps [0, step): every target counts."""
        return step * self.B * self.T


def mask_row(row: np.ndarray, length: int, asst: int, eot: int) -> np.ndarray:
    """y_masked of one row of T+1 tokens (src/data/mask.ts maskRow): target j counts iff the
    latest of {<|asst|>, <|eot|>} among row[0..j] is <|asst|> and j+1 < length."""
    T = len(row) - 1
    t = row[:T]
    marker = np.where(t == asst, 1, np.where(t == eot, 0, -1))
    idx = np.where(marker >= 0, np.arange(T), -1)
    last = np.maximum.accumulate(idx)  # position of the latest marker (or -1)
    in_asst = (last >= 0) & (marker[np.maximum(last, 0)] == 1)
    counted = in_asst & (np.arange(T) + 1 < length)
    return np.where(counted, row[1:], IGNORE_INDEX)


class SftBatches:
    """SFT: per row a source by the mixture, then a drawable example uniformly; its row of T+1
    tokens chosen by the long-example rule (src/data/long-examples.ts: "head", "cut_prompt",
    "drop"), padded with <|pad|>; y masked outside the assistant's answers."""

    def __init__(self, caches: List[Tuple[float, TokenCache]], B: int, T: int, seed: int, stream: int, long_examples: str = "head"):
        self.caches = [c for _, c in caches]
        first = self.caches[0]
        self.asst, self.eot, self.pad = (first.special(n) for n in ("<|asst|>", "<|eot|>", "<|pad|>"))
        for c in self.caches[1:]:
            for n in ("<|asst|>", "<|eot|>", "<|pad|>"):
                if c.special(n) != first.special(n):
                    raise InputError(f"{c.meta_path}: special token {n} has id {c.special(n)}, but {first.special(n)} in {first.meta_path}; caches read together must share special ids")
        self.rule = long_examples
        self.pools, self.row_starts = zip(*(self._drawable(c, T) for c in self.caches))
        self.cum = cumulative([p for p, _ in caches])
        self.B, self.T, self.seed, self.stream = B, T, seed, stream

    def _first_asst(self, c: TokenCache) -> np.ndarray:
        """Per example: the position of its first <|asst|> in the example, or -1."""
        o = c.offsets
        first = np.full(len(o) - 1, -1, dtype=np.int64)
        for i in range(0, c.num_tokens, TokenCache.CHUNK):
            pos = i + np.nonzero(c.tokens[i:i + TokenCache.CHUNK] == self.asst)[0]
            ex = np.searchsorted(o, pos, side="right") - 1
            ex, at = np.unique(ex, return_index=True)  # positions ascend: the first of each example
            new = first[ex] < 0
            first[ex[new]] = pos[at][new] - o[ex[new]]
        return first

    def _drawable(self, c: TokenCache, T: int) -> Tuple[np.ndarray, np.ndarray]:
        """The examples that can be drawn and where their rows start (long-examples.ts rowOffset)."""
        o = c.offsets.astype(np.int64)
        n = o[1:] - o[:-1]
        p = self._first_asst(c)
        fits = n <= T + 1
        head_ok = (p >= 0) & (p + 1 < np.minimum(n, T + 1))
        if self.rule == "head":
            ok, start = head_ok, np.zeros_like(n)
        elif self.rule == "drop":
            ok, start = head_ok & fits, np.zeros_like(n)
        else:  # cut_prompt: the prompt keeps at least its last T//2 tokens, the answer the rest of the row
            ok = np.where(fits, head_ok, (p >= 0) & (p + 1 < n))
            start = np.where(fits, 0, np.maximum(0, np.minimum(p - T // 2, n - (T + 1))))
        pool = np.nonzero(ok)[0]
        if len(pool) == 0:
            dropped = int((~fits).sum()) if self.rule == "drop" else 0
            why = f" ({dropped} of them longer than T+1, dropped by long_examples \"drop\")" if dropped else ""
            raise InputError(f"{c.bin_path}: none of its {len(o) - 1} examples has a target to learn within T+1={T + 1} tokens{why} (an <|asst|> id {self.asst} followed by at least one token)")
        return pool, start[pool]

    def _row_targets(self) -> List[np.ndarray]:
        """Per source, parallel to its pool: the counted targets of each example's row (computed on first use)."""
        if getattr(self, "_targets", None) is None:
            T, out = self.T, []
            for c, pool, starts in zip(self.caches, self.pools, self.row_starts):
                counts = np.empty(len(pool), np.int64)
                for k, (e, off) in enumerate(zip(pool, starts)):
                    start = int(c.offsets[e]) + int(off)
                    length = min(int(c.offsets[e + 1]) - start, T + 1)
                    row = np.full(T + 1, self.pad, np.int64)
                    row[:length] = c.tokens[start:start + length]
                    counts[k] = int((mask_row(row, length, self.asst, self.eot) != IGNORE_INDEX).sum())
                out.append(counts)
            self._targets = out
        return self._targets

    def targets_before(self, step: int) -> int:
        """Counted targets of the batches of steps [0, step) (src/data/sft.ts targetsBefore): the same draws, no rows built."""
        if step <= 0:
            return 0
        counts, total = self._row_targets(), 0
        for s in range(step):
            rng = Rng(self.seed, s, self.stream)
            for _ in range(self.B):
                si = rng.pick(self.cum)
                total += int(counts[si][rng.below(len(self.pools[si]))])
        return total

    def batch(self, step: int) -> Tuple[np.ndarray, np.ndarray]:
        """(x, y_masked) of a step, int64 (B, T)."""
        rng = Rng(self.seed, step, self.stream)
        T = self.T
        x = np.empty((self.B, T), np.int64)
        y = np.empty((self.B, T), np.int64)
        row = np.empty(T + 1, np.int64)
        for b in range(self.B):
            si = rng.pick(self.cum)
            c, pool = self.caches[si], self.pools[si]
            k = rng.below(len(pool))
            e = int(pool[k])
            start = int(c.offsets[e]) + int(self.row_starts[si][k])
            length = min(int(c.offsets[e + 1]) - start, T + 1)
            row[:length] = c.tokens[start:start + length]
            row[length:] = self.pad
            x[b] = row[:T]
            y[b] = mask_row(row, length, self.asst, self.eot)
        return x, y


class PhaseData:
    """Training batches and the fixed eval batches of a phase (src/train/phase-data.ts)."""

    def __init__(self, cfg: PhaseConfig, repo_root: str):
        root = os.path.join(repo_root, CACHE_ROOT)
        tc, m = cfg.train, cfg.model
        B, T, V, seed = tc["B"], m["T"], m["V"], tc["seed"]
        if cfg.phase == "pretrain":
            self.train = StreamBatches(open_mixture(root, "streams", cfg.sources, "train", V), B, T, seed, RNG_STREAM["train"])
        else:
            self.train = SftBatches(open_mixture(root, "sft", cfg.sources, "train", V), B, T, seed, RNG_STREAM["train"], cfg.long_examples)
        if cfg.val_source == "sft":
            ev = SftBatches(open_mixture(root, "sft", cfg.sources, "val", V), B, T, seed, RNG_STREAM["eval"], cfg.long_examples)
        else:
            ev = StreamBatches(open_mixture(root, "streams", {cfg.val_source: 1}, "val", V), B, T, seed, RNG_STREAM["eval"])
        self.eval_batches = [ev.batch(i) for i in range(tc["eval_batches"])]

    def train_batch(self, step: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.train.batch(step)

    def targets_before(self, step: int) -> int:
        """Counted targets of the training batches of steps [0, step) (a resumed run's count so far)."""
        return self.train.targets_before(step)


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(description="Write the batches `train` draws, as int32: x, y of each step, then x, y of each eval batch.")
    ap.add_argument("--phase", required=True, choices=("pretrain", "sft"))
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", required=True, help="FIRST:END (END exclusive)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    try:
        first, end = (int(s) for s in a.steps.split(":"))
        repo = os.getcwd()
        data = PhaseData(PhaseConfig(a.config, a.phase, repo), repo)
    except InputError as e:
        print(f"torch_data: {e}", file=sys.stderr)
        return 2
    with open(a.out, "wb") as f:
        for s in range(first, end):
            for arr in data.train_batch(s):
                f.write(arr.astype("<i4").tobytes())
        for x, y in data.eval_batches:
            f.write(x.astype("<i4").tobytes())
            f.write(y.astype("<i4").tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
