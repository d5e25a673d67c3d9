"""Continue a `train` run under torchrun (PyTorch DDP), and come back.

    torchrun --nproc_per_node N interop/torch_train.py --phase pretrain|sft|pipeline \\
        --config configs/pretrain.json [--resume PATH | --no-resume] [--device cpu|cuda]

The same run as `train` (docs/scale-out.md): the same command line, configs, caches,
REPO_ROOT (the folder it runs from), checkpoint names and six-key format, cadence of
best.pt / latest.pt / step_*.pt, fixed eval batches, LR schedule, gradient clipping,
AdamW groups and non-finite guard, and metrics.jsonl records. The global batch of step s
is the batch `train` draws at step s (interop/torch_data.py); rank r of N takes rows
[r*B/N, (r+1)*B/N) and DDP averages the gradients, so a step is `train`'s step up to the
order of float sums. `train` resumes what this writes, and this resumes what `train` writes.

Runs without torchrun too (one process, no process group). Exit codes as `train`:
0 done, 2 bad input, 1 runtime failure (divergence), 130/143/129 interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import io
import itertools
import json
import math
import os
import re
import platform
import signal
import subprocess
import sys
import time
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from interop.reference_gpt import GPT, IGNORE_INDEX, param_groups  # noqa: E402
from interop.torch_data import (  # noqa: E402
    MODEL_KEYS, RNG_STREAM, InputError, PhaseConfig, PhaseData, Rng, load_pipeline, phase_of_train_cfg,
)


class Diverged(Exception):
    """Training diverged (exit 1); the checkpoints on disk are intact."""


class Interrupted(Exception):
    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}

# ---------------------------------------------------------------------------
# Processes: rank, world, device


class Dist:
    """This process's place in the job (torchrun's RANK / WORLD_SIZE / LOCAL_RANK)."""

    def __init__(self, device_flag: Optional[str]):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        want = device_flag or ("cuda" if torch.cuda.is_available() else "cpu")
        if want == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is visible to this PyTorch; use --device cpu")
        if want == "cuda":
            torch.cuda.set_device(local % torch.cuda.device_count())
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self.active = self.world > 1
        if self.active:
            dist.init_process_group(backend="nccl" if want == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: List[float]) -> List[float]:
        """Element-wise sum over ranks (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.active:
            dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.active:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------
# Schedule (src/train/schedule.ts)


def learning_rate(step: int, tc: dict) -> float:
    """Linear warmup to base_lr (step 0 gets base_lr/warmup_steps), cosine to min_lr at total_steps."""
    base, lo, warm, total = tc["base_lr"], tc["min_lr"], tc["warmup_steps"], tc["total_steps"]
    if step < warm:
        return base * (step + 1) / warm
    if step >= total:
        return lo
    progress = (step - warm) / max(1, total - warm)
    return lo + 0.5 * (1 + math.cos(math.pi * progress)) * (base - lo)


# ---------------------------------------------------------------------------
# Files: atomic writes, stale temp files, metrics.jsonl

_temp_counter = itertools.count(1)


def write_atomic(path: str, data: bytes) -> None:
    """Temp file beside the target (the name `train` cleans up), fsync, rename, fsync the folder."""
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{next(_temp_counter)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: str) -> List[str]:
    """`.<name>.<pid>.<n>.tmp` of writers that no longer run (src/checkpoint/atomic.ts)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        m = re.match(r"^\..+?\.(\d+)(?:\.\d+){0,2}\.tmp$", name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        os.unlink(os.path.join(folder, name))
        removed.append(os.path.join(folder, name))
    return removed


METRIC_KEYS = ("phase", "kind", "step", "lr", "train_loss", "val_loss", "tokens_per_s", "wall_time_s", "time")
# written too; absent in files written before it existed (read as None)
OPTIONAL_METRIC_KEYS = ("target_tokens",)


def version_line() -> str:
    """Which program wrote a run's records (metrics.jsonl's "run" record; `train`'s is src/version.ts)."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (f"interop/torch_train.py (commit {commit}, {sys.platform}-{platform.machine()}, "
            f"python {platform.python_version()}, torch {torch.__version__})")


def _finite_or_none(v: Optional[float]) -> Optional[float]:
    return v if v is not None and math.isfinite(v) else None


class Metrics:
    """metrics.jsonl in `train`'s record format (src/train/metrics.ts): on open, drops the
    records of this phase after the step resumed from (all of them on a fresh start) and a
    torn last line; a "run" record names this program when the phase's last one names another;
    wall_time_s continues across sessions. Step records (one per applied step) are buffered and
    written with the next train or eval record or by flush() (before every checkpoint); every
    write is fsynced. unlogged_steps(): the step records after the last train record, whose
    losses the next train record averages (a resumed window starts from them)."""

    def __init__(self, path: str, phase: str, resume_step: Optional[int], drop_phases: Tuple[str, ...] = (),
                 build: Optional[str] = None):
        self.path, self.phase = path, phase
        self.pending: List[dict] = []
        records: List[dict] = []
        rewrite = False
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            lines = text.split("\n")
            if text.endswith("\n"):
                lines.pop()
            elif text:
                rewrite = True
            for i, line in enumerate(lines):
                try:
                    r = json.loads(line)
                    if not isinstance(r, dict) or any(k not in r for k in METRIC_KEYS):
                        raise ValueError("missing keys")
                except ValueError as e:
                    if i == len(lines) - 1:
                        rewrite = True  # torn by a crash mid-append
                        continue
                    raise InputError(f"{path}:{i + 1}: bad metrics record ({e}); expected one JSON record per line")
                records.append(r)
        kept = [r for r in records if r["phase"] not in drop_phases
                and not (r["phase"] == phase and (resume_step is None or r["step"] > resume_step))]
        if rewrite or len(kept) != len(records):
            write_atomic(path, "".join(self._line(r) for r in kept).encode())
        self.records = kept
        self.wall_offset = max((r["wall_time_s"] for r in kept), default=0.0)
        self.t0 = time.monotonic()
        runs = [r for r in kept if r["phase"] == phase and r["kind"] == "run"]
        if build is not None and (not runs or runs[-1].get("version") != build):
            self._write([self._record("run", resume_step or 0, None) | {"version": build}])

    @staticmethod
    def _line(r: dict) -> str:
        keys = METRIC_KEYS[:7] + OPTIONAL_METRIC_KEYS + METRIC_KEYS[7:] + (("version",) if r["kind"] == "run" else ())  # train's key order
        return json.dumps({k: r.get(k) for k in keys}, separators=(",", ":")) + "\n"

    def _record(self, kind: str, step: int, lr: Optional[float], train_loss=None, val_loss=None, tokens_per_s=None, target_tokens=None) -> dict:
        wall = self.wall_offset + time.monotonic() - self.t0
        now = datetime.datetime.now(datetime.timezone.utc)
        return {"phase": self.phase, "kind": kind, "step": step, "lr": _finite_or_none(lr),
                "train_loss": _finite_or_none(train_loss), "val_loss": _finite_or_none(val_loss),
                "tokens_per_s": _finite_or_none(tokens_per_s), "target_tokens": target_tokens, "wall_time_s": round(wall, 3),
                "time": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"}

    def _write(self, records: List[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(self._line(r) for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.records += records

    def append(self, kind: str, step: int, lr: Optional[float], train_loss=None, val_loss=None, tokens_per_s=None, target_tokens=None) -> None:
        records = self.pending + [self._record(kind, step, lr, train_loss, val_loss, tokens_per_s, target_tokens)]
        self._write(records)
        self.pending = []

    def append_step(self, step: int, lr: float, loss: float) -> None:
        self.pending.append(self._record("step", step, lr, train_loss=loss))

    def flush(self) -> None:
        if self.pending:
            self._write(self.pending)
            self.pending = []

    def unlogged_steps(self) -> List[dict]:
        out: List[dict] = []
        for r in reversed(self.records):
            if r["phase"] != self.phase:
                continue
            if r["kind"] == "train":
                break
            if r["kind"] == "step":
                out.append(r)
        return out[::-1]


# ---------------------------------------------------------------------------
# Checkpoints: the six-key dict of src/checkpoint/checkpoint.ts, written with torch.save


def stored_json(v):
    """A config value as `train` stores it: integral numbers become Python ints (JSON has one number type)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    if isinstance(v, dict):
        return {k: stored_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [stored_json(x) for x in v]
    return v


def to_cpu(v):
    if torch.is_tensor(v):
        return v.detach().cpu()
    if isinstance(v, dict):
        return {k: to_cpu(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_cpu(x) for x in v]
    return v


def load_checkpoint(path: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu")
    except Exception as e:  # a torn or foreign file: torch raises many kinds
        raise InputError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    keys = ("model_cfg", "train_cfg", "model_state", "optimizer_state", "step", "best_val_loss")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        raise InputError(f"{path}: expected a `train` checkpoint dict with keys {', '.join(keys)}")
    return ckpt


def load_weights(model: GPT, ckpt: dict, path: str) -> None:
    """model_state into the model; names wrapped by DDP or torch.compile are unwrapped, and a
    missing lm_head.weight is the tied embedding."""
    state = {re.sub(r"^(_orig_mod\.|module\.)+", "", k): v for k, v in dict(ckpt["model_state"]).items()}
    if "transformer.wte.weight" in state:
        state.setdefault("lm_head.weight", state["transformer.wte.weight"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: model_state does not fit the model of the config: {e}") from None


def _article(w: str) -> str:
    return ("an " if w[0] in "aeiou" or w.startswith("sft") else "a ") + w


def check_compatible(ckpt: dict, path: str, cfg: PhaseConfig, what: str) -> None:
    phase = phase_of_train_cfg(ckpt["train_cfg"])
    if phase != cfg.phase:
        raise InputError(f"{path}: {what} is {_article(phase or 'unknown-phase')} checkpoint, but this is the {cfg.phase} phase; "
                         f"pass --resume PATH with {_article(cfg.phase)} checkpoint, or --no-resume to start the {cfg.phase} phase fresh")
    diff = [f"{k}: {ckpt['model_cfg'].get(k)} vs {cfg.model[k]}" for k in MODEL_KEYS if ckpt["model_cfg"].get(k) != cfg.model[k]]
    if diff:
        raise InputError(f"{path}: {what} holds a model of another shape than {cfg.model_cfg_file} (checkpoint vs config: {', '.join(diff)}); "
                         f"use a matching model cfg, or --no-resume to start fresh")


def init_params(model: GPT, seed: int) -> None:
    """`train`'s GPT-2 init (src/model/layout.ts initParams): N(0, 0.02), residual projections
    N(0, 0.02/sqrt(2L)), biases 0, LayerNorm weights 1, drawn in layout order from the init stream."""
    rng = Rng(seed, 0, RNG_STREAM["init"])
    res_std = 0.02 / math.sqrt(2 * model.cfg["L"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
            elif p.dim() >= 2:
                std = res_std if name.endswith("c_proj.weight") else 0.02
                vals = np.fromiter((rng.normal() * std for _ in range(p.numel())), dtype=np.float64, count=p.numel())
                p.copy_(torch.from_numpy(vals.astype(np.float32)).view(p.shape))
            else:
                p.zero_()


def number(v: float) -> str:
    """A float as `train` prints it in messages (JavaScript's NaN, Infinity)."""
    return "NaN" if math.isnan(v) else ("-" if v < 0 else "") + "Infinity" if math.isinf(v) else str(v)


def exponential(v: float) -> str:
    """v with 3 decimals in exponent form, as JavaScript's toExponential(3) writes it (3.000e-3)."""
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{v:.3e}")


def show(repo: str, path: str) -> str:
    rel = os.path.relpath(path, repo)
    return path if rel.startswith("..") else rel


# ---------------------------------------------------------------------------
# One phase


class Phase:
    def __init__(self, cfg: PhaseConfig, repo: str, ckpt_dir: str, run_dir: str, resume, init_from: Optional[str],
                 d: Dist, stop_after: Optional[int], record_batches: Optional[str]):
        self.cfg, self.repo, self.ckpt_dir, self.run_dir, self.d = cfg, repo, ckpt_dir, run_dir, d
        self.resume, self.init_from, self.stop_after, self.record_batches = resume, init_from, stop_after, record_batches
        B = cfg.train["B"]
        if B % d.world != 0:
            raise InputError(f"{cfg.file}: train_cfg.B={B} is not divisible by the {d.world} processes; "
                             f"each process takes B/N rows of the global batch: choose N dividing {B} (--nproc_per_node x --nnodes)")
        self.rows = slice(d.rank * B // d.world, (d.rank + 1) * B // d.world)

    def print(self, line: str) -> None:
        if self.d.main:
            print(line, flush=True)

    def resume_checkpoint(self) -> Optional[Tuple[dict, str]]:
        kind = self.resume[0]
        if kind == "path":
            path = os.path.abspath(os.path.join(self.repo, self.resume[1]))
            if not os.path.exists(path):
                raise InputError(f"--resume {self.resume[1]}: no such checkpoint file ({path})")
            ckpt = load_checkpoint(path)
            check_compatible(ckpt, path, self.cfg, "the --resume checkpoint")
            return ckpt, path
        latest = os.path.join(self.ckpt_dir, "latest.pt")
        if kind == "none" or not os.path.exists(latest):
            return None
        ckpt = load_checkpoint(latest)
        check_compatible(ckpt, latest, self.cfg, "the latest checkpoint")
        return ckpt, latest

    def start(self, model: GPT) -> Tuple[Optional[dict], int, Optional[float], str, bool]:
        """Where the phase starts (src/train/start.ts): the checkpoint it resumes, else SFT's
        init_from weights with a fresh optimizer, else `train`'s fresh init. Sets the model's
        weights; returns (optimizer state, step, best val loss, what it started from, resumed)."""
        cfg = self.cfg
        resumed = self.resume_checkpoint()
        if resumed is not None:
            ckpt, path = resumed
            load_weights(model, ckpt, path)
            self.resumed_path = path
            best = None if ckpt["best_val_loss"] is None else float(ckpt["best_val_loss"])
            step = int(ckpt["step"])
            return ckpt["optimizer_state"], step, best, f"resumed from {show(self.repo, path)} at step {step}", True
        if self.init_from is not None:
            if not os.path.exists(self.init_from):
                raise InputError(f"{self.init_from}: the checkpoint to start SFT from does not exist (init_from in {cfg.file}); run the pretrain phase first or fix init_from")
            ckpt = load_checkpoint(self.init_from)
            diff = [f"{k}: {ckpt['model_cfg'].get(k)} vs {cfg.model[k]}" for k in MODEL_KEYS if ckpt["model_cfg"].get(k) != cfg.model[k]]
            if diff:
                raise InputError(f"{self.init_from}: its model differs from {cfg.model_cfg_file} (checkpoint vs config: {', '.join(diff)})")
            load_weights(model, ckpt, self.init_from)
            return None, 0, None, f"weights from {show(self.repo, self.init_from)} (step {ckpt['step']}), fresh optimizer", False
        init_params(model, cfg.train["seed"])
        return None, 0, None, f"fresh GPT-2 init (seed {cfg.train['seed']})", False

    def run(self) -> dict:
        cfg, tc, d = self.cfg, self.cfg.train, self.d
        phase = cfg.phase
        data = PhaseData(cfg, self.repo)  # every cache checked before anything is written
        model = GPT(cfg.model)
        opt_state, step, best, start_from, from_checkpoint = self.start(model)
        total = tc["total_steps"]
        if step >= total:
            self.print(f"{phase}: already finished ({start_from}; total_steps {total}): nothing to do")
            return {"step": step, "best": best, "fresh": False}

        model.to(d.device)
        optimizer = torch.optim.AdamW(param_groups(model, tc["weight_decay"]), lr=tc["base_lr"],
                                      betas=(tc["beta1"], tc["beta2"]), eps=tc["eps"])
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
        ddp = model
        if d.active:
            # the causal masks are bool buffers gloo cannot broadcast; every rank builds the same ones
            DDP = torch.nn.parallel.DistributedDataParallel
            DDP._set_params_and_buffers_to_ignore_for_model(model, [n for n, _ in model.named_buffers()])
            ddp = DDP(model, broadcast_buffers=False)

        metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
        is_resumed = step > 0 or opt_state is not None
        if d.main:
            os.makedirs(self.ckpt_dir, exist_ok=True)
            for folder in {self.ckpt_dir, self.run_dir}:
                for p in remove_stale_temp_files(folder):
                    self.print(f"removed {show(self.repo, p)}, left by an interrupted write")
            metrics = Metrics(metrics_path, phase, step if is_resumed else None,
                              ("sft",) if not is_resumed and phase == "pretrain" else (), build=version_line())
        m = cfg.model
        n_params = sum(p.numel() for p in model.parameters())
        self.print(f"{phase}: {start_from}; model V={m['V']} T={m['T']} C={m['C']} L={m['L']} H={m['H']} d_ff={m['d_ff']} "
                   f"({n_params / 1e6:.2f}M params), B={tc['B']} over {d.world} process(es) of {tc['B'] // d.world} rows, "
                   f"device {d.device}, steps {step}..{total}")

        def evaluate() -> float:
            """Mean over the fixed eval batches of each batch's mean loss over counted targets."""
            sums: List[float] = []
            with torch.no_grad():
                for x, y in data.eval_batches:
                    s, n = self.loss_sum(model, x, y)
                    sums += [float(s), float(n)]
            tot = d.sum(sums)
            per_batch = [tot[i] / tot[i + 1] for i in range(0, len(tot), 2)]
            return sum(per_batch) / len(per_batch)

        if not is_resumed:
            first = evaluate()
            if d.main:
                metrics.append("eval", 0, None, val_loss=first)
            self.print(f"{phase}: val loss before training {first:.4f} (ln V = {math.log(m['V']):.4f})")

        best_path = os.path.join(self.ckpt_dir, "best.pt")
        latest_path = os.path.join(self.ckpt_dir, "latest.pt")
        # what a rerun of the same command resumes from, for the messages of a failure
        on_disk = [f"{show(self.repo, self.resumed_path)} (step {step}) is intact" if from_checkpoint else "no checkpoint of this run is on disk yet"]

        def save(at: int, periodic: bool, is_best: bool, val_loss: Optional[float], latest_only: bool = False) -> List[str]:
            self.assert_sound(model, optimizer, evaluate_first=lambda: self.first_batch_loss(model, data), val_loss=val_loss,
                              at=at, intact=on_disk[0])
            files = []
            if is_best:
                files.append(best_path)
            if periodic:
                files.append(os.path.join(self.ckpt_dir, f"step_{at:07d}.pt"))
            if periodic or latest_only:
                files.append(latest_path)
            if d.main:
                metrics.flush()  # the records of the steps up to this one are on disk before their checkpoint
                self.write_checkpoint(files, model, optimizer, at, best)
            if latest_path in files:
                on_disk[0] = f"{show(self.repo, latest_path)} (step {at}) is intact"
            return [show(self.repo, f) for f in files]

        stop = {"signame": None}

        def on_signal(signum, _frame):
            stop["signame"] = signal.Signals(signum).name

        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, on_signal)

        tokens_per_step = tc["B"] * m["T"]
        target_tokens = data.targets_before(step)  # the phase's counted targets so far (metrics' target_tokens)
        log_every = tc["log_every"]
        reported = step
        win_sum, win_n, win_secs, win_tokens = 0.0, 0, 0.0, 0
        if d.main:
            # resumed between two log lines: the window holds the losses since the last one, summed in step order
            for r in metrics.unlogged_steps():
                if r["train_loss"] is not None:
                    win_sum, win_n = win_sum + r["train_loss"], win_n + 1
        nonfinite_in_a_row = 0
        saved_step = step
        recorder = open(f"{self.record_batches}.rank{d.rank}.bin", "ab") if self.record_batches else None
        mark = time.monotonic()
        try:
            while step < total:
                # every rank must agree to stop: the flag is summed over ranks
                if d.sum([1.0 if stop["signame"] else 0.0])[0] > 0 or (self.stop_after is not None and step >= self.stop_after):
                    what = stop["signame"] or f"--stop-after {self.stop_after}"
                    saved = (f"nothing new to save since step {step}" if step == saved_step else
                             "saved " + ", ".join(save(step, False, False, None, latest_only=True)))
                    self.print(f"{what}: stopped after step {step}, {saved}")
                    if stop["signame"]:
                        raise Interrupted(stop["signame"])
                    return {"step": step, "best": best, "fresh": not is_resumed, "stopped": True}
                lr = learning_rate(step, tc)
                x, data_y = data.train_batch(step)
                x, y = x[self.rows], data_y[self.rows]
                if recorder is not None:
                    recorder.write(x.astype("<i4").tobytes() + y.astype("<i4").tobytes())
                loss, norm = self.train_step(ddp, model, optimizer, x, y, lr)
                step += 1
                target_tokens += int((data_y != IGNORE_INDEX).sum())  # seen by the loss, applied or not (as train counts)
                applied = math.isfinite(loss) and math.isfinite(norm)
                if not applied:
                    nonfinite_in_a_row += 1
                    which = f"gradient norm {number(norm)}" if math.isfinite(loss) else f"loss {number(loss)}"
                    self.print(f"step {step}: non-finite {which} at lr {exponential(lr)}: update skipped ({nonfinite_in_a_row} in a row, limit {tc['max_nonfinite_steps']})")
                    if nonfinite_in_a_row >= tc["max_nonfinite_steps"]:
                        raise Diverged(f"training diverged: {nonfinite_in_a_row} steps in a row with a non-finite {which} (last at step {step}, lr {exponential(lr)}); "
                                       f"no update was applied, the last checkpoint is intact. Lower base_lr or grad_clip in the config and resume.")
                else:
                    nonfinite_in_a_row = 0
                    now = time.monotonic()
                    win_sum, win_n, win_tokens, win_secs = win_sum + loss, win_n + 1, win_tokens + tokens_per_step, win_secs + now - mark
                    mark = now
                    if d.main:
                        metrics.append_step(step, lr, loss)
                    if step // log_every > reported // log_every or step == total:
                        mean = win_sum / win_n
                        tps = win_tokens / win_secs if win_secs > 0 else 0.0
                        self.print(f"{phase} step {step}/{total} | loss {mean:.4f} | lr {exponential(lr)} | {tps:,.0f} tok/s | target tokens {target_tokens:,}")
                        if d.main:
                            metrics.append("train", step, lr, train_loss=mean, tokens_per_s=tps, target_tokens=target_tokens)
                        win_sum, win_n, win_tokens, win_secs = 0.0, 0, 0, 0.0
                    reported = step

                last = step == total
                improved, val_loss = False, None
                if step % tc["eval_every"] == 0 or last:
                    val_loss = evaluate()
                    improved = math.isfinite(val_loss) and (best is None or val_loss < best)
                    if improved:
                        best = val_loss
                    if d.main:
                        metrics.append("eval", step, lr, val_loss=val_loss)
                    self.print(f"{phase} eval step {step} | val_loss {val_loss:.4f} | best {best if best is not None else val_loss:.4f}{' (new best)' if improved else ''}")
                periodic = step % tc["ckpt_every"] == 0 or last
                if periodic or improved:
                    self.print(f"{phase} checkpoint step {step} -> {', '.join(save(step, periodic, improved, val_loss))}")
                    if periodic:
                        saved_step = step
                mark = time.monotonic()
        finally:
            if recorder is not None:
                recorder.close()
            if d.main:
                metrics.flush()  # the losses since the last save stay readable (a resume drops them)
        self.print(f"{phase} done: step {step}, best val loss {best if best is None else round(best, 4)} ({show(self.repo, best_path)})")
        return {"step": step, "best": best, "fresh": not is_resumed}

    # -- maths ------------------------------------------------------------

    def loss_sum(self, model, x: np.ndarray, y: np.ndarray) -> Tuple[torch.Tensor, float]:
        """Sum of the cross-entropy over this rank's rows of a batch, and its counted targets."""
        xs = torch.from_numpy(x[self.rows]).to(self.d.device)
        ys = torch.from_numpy(y[self.rows]).to(self.d.device)
        logits, _ = model(xs)
        s = F.cross_entropy(logits.view(-1, logits.size(-1)), ys.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        return s, float((ys != IGNORE_INDEX).sum())

    def train_step(self, ddp, model, optimizer, x: np.ndarray, y: np.ndarray, lr: float) -> Tuple[float, float]:
        """One step on this rank's rows. The loss is the sum over the rank's counted targets
        divided by the GLOBAL count, times N: DDP's mean over N ranks then gives the gradient of
        the global batch's mean loss, as `train` computes it (SFT rows count different targets).
        Returns the global loss and the global gradient norm before clipping."""
        tc, d = self.cfg.train, self.d
        xs = torch.from_numpy(x).to(d.device)
        ys = torch.from_numpy(y).to(d.device)
        counted = float((ys != IGNORE_INDEX).sum())
        total_counted = d.sum([counted])[0]
        optimizer.zero_grad(set_to_none=True)
        logits, _ = ddp(xs)
        s = F.cross_entropy(logits.view(-1, logits.size(-1)), ys.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        (s * (d.world / total_counted)).backward()
        loss = d.sum([float(s.detach())])[0] / total_counted
        params = [p for p in model.parameters() if p.grad is not None]
        if tc["grad_clip"] > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"]))
        else:
            norm = float(torch.norm(torch.stack([p.grad.detach().norm(2) for p in params]), 2))
        if math.isfinite(loss) and math.isfinite(norm):
            for i, g in enumerate(optimizer.param_groups):  # the config's values, whatever the checkpoint held
                g.update(lr=lr, betas=(tc["beta1"], tc["beta2"]), eps=tc["eps"], weight_decay=tc["weight_decay"] if i == 0 else 0.0)
            optimizer.step()
        return loss, norm

    def first_batch_loss(self, model, data: PhaseData) -> float:
        x, y = data.eval_batches[0]
        with torch.no_grad():
            s, n = self.loss_sum(model, x, y)
        tot = self.d.sum([float(s), n])
        return tot[0] / tot[1]

    def assert_sound(self, model, optimizer, evaluate_first, val_loss, at: int, intact: str) -> None:
        """Only sound weights are written: all values finite and a finite loss (src/train/phase.ts)."""
        why = None
        for name, p in model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                why = f"weight {name} holds a non-finite value"
                break
        if why is None:
            for st in optimizer.state.values():
                if any(not bool(torch.isfinite(st[k]).all()) for k in ("exp_avg", "exp_avg_sq")):
                    why = "the optimizer state holds a non-finite value"
                    break
        if why is None:
            loss = val_loss if val_loss is not None else evaluate_first()
            if not math.isfinite(loss):
                why = f"{'the val loss' if val_loss is not None else 'the loss of the weights on a val batch'} is {number(loss)}"
        if why:
            raise Diverged(f"training diverged at step {at}: {why}; no checkpoint was written at this step, {intact}. "
                           f"Lower base_lr (or grad_clip) in the config and resume.")

    def write_checkpoint(self, files: List[str], model, optimizer, step: int, best: Optional[float]) -> None:
        tc = self.cfg.train
        opt = to_cpu(optimizer.state_dict())
        # param_groups' lr is the lr of the last step taken, as `train` stores it
        for i, g in enumerate(opt["param_groups"]):
            g.update(lr=learning_rate(max(0, step - 1), tc), weight_decay=float(tc["weight_decay"]) if i == 0 else 0.0)
        ckpt = {
            "model_cfg": stored_json(self.cfg.model_raw),
            "train_cfg": stored_json(self.cfg.raw),
            "model_state": to_cpu(model.state_dict()),  # lm_head.weight last, sharing wte's storage
            "optimizer_state": opt,
            "step": step,
            "best_val_loss": None if best is None else float(best),
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        data = buf.getvalue()
        for f in files:
            write_atomic(f, data)


# ---------------------------------------------------------------------------
# Command line (src/cli.ts, src/train/run.ts)


def parse(argv: List[str]):
    ap = argparse.ArgumentParser(prog="torch_train.py", description="Continue a `train` run under torchrun (PyTorch DDP); docs/scale-out.md.")
    ap.add_argument("--phase", required=True, choices=("pretrain", "sft", "pipeline"))
    ap.add_argument("--config", required=True, help="the phase's JSON config (relative to REPO_ROOT, the folder this runs from)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when PyTorch sees a GPU, else cpu (gloo)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--resume", metavar="PATH", help="resume from this checkpoint (default: the phase's checkpoints/latest.pt if present)")
    g.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints/latest.pt exists")
    ap.add_argument("--stop-after", type=int, metavar="STEP",
                    help="stop once STEP steps are done: latest.pt holds that step, `train` (or this) continues from it")
    ap.add_argument("--record-batches", metavar="PREFIX", help=argparse.SUPPRESS)  # tests: each rank appends its rows' token ids
    a = ap.parse_args(argv)
    if a.stop_after is not None and a.stop_after < 0:
        ap.error("--stop-after STEP needs STEP >= 0")
    a.resume_req = ("none", None) if a.no_resume else ("path", a.resume) if a.resume else ("auto", None)
    return a


def run(a, d: Dist) -> None:
    repo = os.getcwd()
    ckpts = os.path.join(repo, "checkpoints")
    common = dict(repo=repo, run_dir=ckpts, d=d, stop_after=a.stop_after, record_batches=a.record_batches)
    if a.phase != "pipeline":
        cfg = PhaseConfig(a.config, a.phase, repo)
        Phase(cfg, ckpt_dir=ckpts, resume=a.resume_req, init_from=cfg.init_from, **common).run()
        return
    if a.stop_after is not None:
        raise InputError("--stop-after counts the steps of one phase: use it with --phase pretrain or --phase sft")
    pre, sft = load_pipeline(a.config, repo)
    pre_dir = os.path.join(ckpts, "pretrain")
    resume_phase = None
    if a.resume_req[0] == "path":
        path = os.path.abspath(os.path.join(repo, a.resume_req[1]))
        if not os.path.exists(path):
            raise InputError(f"--resume {a.resume_req[1]}: no such checkpoint file ({path})")
        resume_phase = phase_of_train_cfg(load_checkpoint(path)["train_cfg"])
    sft_resume = a.resume_req if resume_phase == "sft" else ("none", None) if a.resume_req[0] == "none" else ("auto", None)
    PhaseData(sft, repo)  # the SFT caches, before hours of pretraining
    out = None
    if resume_phase != "sft":
        out = Phase(pre, ckpt_dir=pre_dir, resume=a.resume_req, init_from=None, **common).run()
    starts_over = out is not None and out["fresh"] and sft_resume[0] == "auto"
    if starts_over and os.path.exists(os.path.join(ckpts, "latest.pt")) and d.main:
        print("pipeline: pretrain started over, so SFT starts over from its new best.pt (older SFT checkpoints are replaced)", flush=True)
    Phase(sft, ckpt_dir=ckpts, resume=("none", None) if starts_over else sft_resume,
          init_from=os.path.join(pre_dir, "best.pt"), **common).run()


def main(argv: List[str]) -> int:
    a = parse(argv)
    d = None

    def report(msg: str) -> None:
        # every rank meets the same error; one line is enough
        if d is None or d.main:
            print(f"torch_train: {msg}", file=sys.stderr, flush=True)

    try:
        d = Dist(a.device)
        run(a, d)
        return 0
    except InputError as e:
        report(str(e))
        return 2
    except Diverged as e:
        report(str(e))
        return 1
    except Interrupted as e:
        report(f"interrupted by {e.signame}; resume with the same command (or with `train`)")
        return SIGNAL_EXIT.get(e.signame, 130)
    except OSError as e:
        report(f"{e.strerror or e}; the checkpoints written before are intact: fix the cause and run the same command again")
        return 1
    finally:
        if d is not None:
            d.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
