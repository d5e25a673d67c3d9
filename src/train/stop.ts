/**
 * Ctrl-C / SIGTERM: the first signal asks the loop to stop after the current step (it
 * saves latest.pt and exits 130 / 143); the second one stops at once, with the default
 * action of the signal (atomic writes keep every file whole).
 */
export interface StopSignal {
  readonly requested: "SIGINT" | "SIGTERM" | null;
}

export class StopOnSignals implements StopSignal {
  requested: "SIGINT" | "SIGTERM" | null = null;
  private readonly handlers = new Map<NodeJS.Signals, () => void>();

  constructor(private readonly notify: (message: string) => void) {
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      const handler = () => this.onSignal(signal);
      this.handlers.set(signal, handler);
      process.on(signal, handler);
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
