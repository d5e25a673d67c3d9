/**
 * Learning rate of a step (0-based): linear warmup to base_lr over warmup_steps
 * (step 0 already gets base_lr/warmup_steps), then cosine decay from base_lr to min_lr,
 * reaching min_lr at total_steps (nanoGPT's get_lr, with total_steps as lr_decay_iters).
 */
export interface ScheduleCfg {
  base_lr: number;
  min_lr: number;
  warmup_steps: number;
  total_steps: number;
}

export function learningRate(step: number, cfg: ScheduleCfg): number {
  const { base_lr, min_lr, warmup_steps, total_steps } = cfg;
  if (step < warmup_steps) return (base_lr * (step + 1)) / warmup_steps;
  if (step >= total_steps) return min_lr;
  const progress = (step - warmup_steps) / Math.max(1, total_steps - warmup_steps);
  const cosine = 0.5 * (1 + Math.cos(Math.PI * progress));
  return min_lr + cosine * (base_lr - min_lr);
}
