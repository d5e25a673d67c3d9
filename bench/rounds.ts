/**
 * How bench/bench.ts judges a side from its interleaved rounds: by the median round, with
 * the best and worst beside it. PyTorch's speed on a shared VM moves by a third between
 * rounds of one invocation, so best against best would reward the noisier side's lucky
 * round; every ratio the benchmark prints is of two medians.
 */
/** One measurement's result, from a child process, with that process's peak RSS. */
export interface ChildRun<T> {
  result: T;
  maxRssBytes: number;
}

/** One side's rounds of a shape. Each round's step time is already the median of its timed steps. */
export interface Rounds<T extends { stepS: number; evalS: number }> {
  median: T; // the round that judges the side: the median step time (of an even count, the slower middle round)
  best: T;
  worst: T;
  evalS: number; // the median round's rule applied to the rounds' eval times
  inOrder: T[]; // as they ran, interleaved with the other side's
  maxRssBytes: number; // the largest of all rounds
}

/** The middle of xs by the rounds' rule: exact for an odd count, the larger middle one of an even count. */
export function middle(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
}

export function rounds<T extends { stepS: number; evalS: number }>(runs: ChildRun<T>[]): Rounds<T> {
  const bySpeed = [...runs].sort((a, b) => a.result.stepS - b.result.stepS);
  return {
    median: bySpeed[runs.length >> 1]!.result,
    best: bySpeed[0]!.result,
    worst: bySpeed[runs.length - 1]!.result,
    evalS: middle(runs.map((r) => r.result.evalS)),
    inOrder: runs.map((r) => r.result),
    maxRssBytes: Math.max(...runs.map((r) => r.maxRssBytes)),
  };
}

