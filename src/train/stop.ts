/**
 * Ctrl-C / SIGTERM / SIGHUP (the terminal or the ssh session closed): the first signal asks
 * the loop to stop after the current step (it saves latest.pt and exits 130 / 143 / 129);
 * the second one stops at once, with the default action of the signal (atomic writes keep
 * every file whole).
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { constants } from "node:os";
import type { StopSignalName } from "../errors.ts";

export interface StopSignal {
  readonly requested: StopSignalName | null;
  /**
   * Runs fn, a long synchronous read before anything is written (a checkpoint, the caches),
   * with the signals' default action, so that Ctrl-C or SIGTERM ends the process at once
   * (a JavaScript handler could only run after fn returns).
   */
  withDefaultAction?<T>(fn: () => T): T;
}

/** struct sigaction of libc: its size, where sa_flags sits, and the SA_RESETHAND bit. */
const SIGACTION = {
  linux: { lib: "libc.so.6", size: 152, flagsAt: 136, resetHand: 0x80000000 }, // glibc, x86_64 and aarch64
  darwin: { lib: "/usr/lib/libSystem.B.dylib", size: 16, flagsAt: 12, resetHand: 0x4 },
} as const;

/**
 * Reads the sigaction of `signal` and, with `change`, writes it back changed. Returns the
 * handler in place (0 SIG_DFL, 1 SIG_IGN, else a function), or null on a libc whose struct
 * layout is not known here.
 */
function withSigaction(signal: StopSignalName, change?: (view: DataView, flagsAt: number, resetHand: number) => void): bigint | null {
  const layout = SIGACTION[process.platform as keyof typeof SIGACTION];
  if (!layout || (process.arch !== "x64" && process.arch !== "arm64")) return null;
  try {
    const libc = dlopen(layout.lib, { sigaction: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 } });
    try {
      const act = new Uint8Array(layout.size);
      const view = new DataView(act.buffer);
      const signo = constants.signals[signal];
      if (libc.symbols.sigaction(signo, null, ptr(act)) !== 0) return null;
      const handler = view.getBigUint64(0, true);
      if (change && handler > 1n) {
        change(view, layout.flagsAt, layout.resetHand);
        libc.symbols.sigaction(signo, ptr(act), null);
      }
      return handler;
    } finally {
      libc.close();
    }
  } catch {
    return null; // no such libc
  }
}

/**
 * Adds SA_RESETHAND to the handler Bun installed for `signal`: the kernel restores the
 * default action once the signal is delivered, so a second one ends the process even in
 * the middle of a native step, when no JavaScript handler can run (Bun queues signals
 * for the event loop). Best effort: on any other libc the second signal is seen between
 * steps, like the first.
 */
function resetAfterFirstDelivery(signal: StopSignalName): void {
  withSigaction(signal, (view, flagsAt, resetHand) => view.setUint32(flagsAt, view.getUint32(flagsAt, true) | resetHand, true));
}

export class StopOnSignals implements StopSignal {
  requested: StopSignalName | null = null;
  private readonly handlers = new Map<NodeJS.Signals, () => void>();

  constructor(private readonly notify: (message: string) => void) {
    this.install();
  }

  private install(): void {
    for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      // under nohup SIGHUP is ignored, and must stay so: the run goes on when the terminal closes
      if (signal === "SIGHUP" && withSigaction(signal) === 1n) continue;
      const handler = () => this.onSignal(signal);
      this.handlers.set(signal, handler);
      process.on(signal, handler);
      resetAfterFirstDelivery(signal);
    }
  }

  private onSignal(signal: StopSignalName): void {
    // With our handlers gone the signals get their default action again, so a second one
    // terminates at once, even in the middle of a native step.
    this.dispose();
    this.requested = signal;
    this.notify(`${signal}: finishing the current step, then saving latest.pt (send it again to stop at once)`);
  }

  withDefaultAction<T>(fn: () => T): T {
    const armed = this.handlers.size > 0;
    this.dispose();
    try {
      return fn();
    } finally {
      if (armed) this.install();
    }
  }

  dispose(): void {
    for (const [signal, handler] of this.handlers) process.off(signal, handler);
    this.handlers.clear();
  }
}
