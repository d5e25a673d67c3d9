"""PyTorch's side of bench/checkpoint-io.ts (run in its own process).

usage: python3 bench/checkpoint_io_torch.py '<job json>'
  {"kind":"save","from":PATH,"to":PATH,"fsync":bool}  torch.load(from) builds the state
      dict (the same tensors as ours: 124M parameters and both AdamW moments at S4), then
      torch.save(it, to) is timed; with fsync, so is fsync of the file and its folder
      (what our atomic writer does besides).
  {"kind":"load","from":PATH}  torch.load(from) is timed.
Prints one JSON line: {"seconds", "baselineBytes", "addedPeakBytes", "torch"}: the RSS
before the timed call, and how far the peak RSS rose above it during the call (Linux:
/proc/self/clear_refs resets the peak, VmHWM reads it).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch


def status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    job = json.loads(sys.argv[1])
    if job["kind"] == "save":
        state = torch.load(job["from"])
        baseline = status_bytes("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        torch.save(state, job["to"])
        if job["fsync"]:
            for path, flags in ((job["to"], os.O_RDONLY), (os.path.dirname(os.path.abspath(job["to"])), os.O_RDONLY)):
                fd = os.open(path, flags)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        seconds = time.perf_counter() - t0
    elif job["kind"] == "load":
        baseline = status_bytes("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        state = torch.load(job["from"])
        seconds = time.perf_counter() - t0
    else:
        raise SystemExit(f"unknown job kind {job['kind']!r}")
    peak = status_bytes("VmHWM")
    print(json.dumps({"seconds": seconds, "baselineBytes": baseline, "addedPeakBytes": max(0, peak - baseline), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
