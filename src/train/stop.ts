/**
 * Ctrl-C / SIGTERM: the first signal asks the loop to stop after the current step (it
 * saves latest.pt and exits 130 / 143); the second one stops at once, with the default
 * action of the signal (atomic writes keep every file whole).
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { constants } from "node:os";

export interface StopSignal {
  readonly requested: "SIGINT" | "SIGTERM" | null;
}

/** struct sigaction of libc: its size, where sa_flags sits, and the SA_RESETHAND bit. */
const SIGACTION = {
  linux: { lib: "libc.so.6", size: 152, flagsAt: 136, resetHand: 0x80000000 }, // glibc, x86_64 and aarch64
  darwin: { lib: "/usr/lib/libSystem.B.dylib", size: 16, flagsAt: 12, resetHand: 0x4 },
} as const;

/**
 * Adds SA_RESETHAND to the handler Bun installed for `signal`: the kernel restores the
 * default action once the signal is delivered, so a second one ends the process even in
 * the middle of a native step, when no JavaScript handler can run (Bun queues signals
 * for the event loop). Best effort: on any other libc nothing changes.
 */
function resetAfterFirstDelivery(signal: "SIGINT" | "SIGTERM"): void {
  const layout = SIGACTION[process.platform as keyof typeof SIGACTION];
  if (!layout || (process.arch !== "x64" && process.arch !== "arm64")) return;
  try {
    const libc = dlopen(layout.lib, { sigaction: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 } });
    try {
      const act = new Uint8Array(layout.size);
      const view = new DataView(act.buffer);
      const signo = constants.signals[signal];
      // Only a real handler (not SIG_DFL 0 / SIG_IGN 1) is touched.
      if (libc.symbols.sigaction(signo, null, ptr(act)) !== 0 || view.getBigUint64(0, true) <= 1n) return;
      view.setUint32(layout.flagsAt, view.getUint32(layout.flagsAt, true) | layout.resetHand, true);
      libc.symbols.sigaction(signo, ptr(act), null);
    } finally {
      libc.close();
    }
  } catch {
    // no such libc: the second signal is then seen between steps, like the first
  }
}

export class StopOnSignals implements StopSignal {
  requested: "SIGINT" | "SIGTERM" | null = null;
  private readonly handlers = new Map<NodeJS.Signals, () => void>();

  constructor(private readonly notify: (message: string) => void) {
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      const handler = () => this.onSignal(signal);
      this.handlers.set(signal, handler);
      process.on(signal, handler);
      resetAfterFirstDelivery(signal);
    }
  }

  private onSignal(signal: "SIGINT" | "SIGTERM"): void {
    // With our handlers gone the signals get their default action again, so a second one
    // terminates at once, even in the middle of a native step.
    this.dispose();
    this.requested = signal;
    this.notify(`${signal}: finishing the current step, then saving latest.pt (send it again to stop at once)`);
  }

  dispose(): void {
    for (const [signal, handler] of this.handlers) process.off(signal, handler);
    this.handlers.clear();
  }
}
