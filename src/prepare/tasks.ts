/**
 * Small instruction tasks with checkable answers, for the demo SFT caches and for
 * checking what a demo model learned: arithmetic on small numbers, and letter games on
 * words (reverse, uppercase, count a letter, length, first/last letter, next/previous
 * letter of the alphabet, the larger of two numbers). Deterministic given the Rng.
 */
import type { Rng } from "../util/random.ts";

export const TASK_KINDS = ["add", "sub", "mul", "max", "reverse", "upper", "count", "length", "first", "last", "next", "prev"] as const;
export type TaskKind = (typeof TASK_KINDS)[number];

export interface Task {
  kind: TaskKind;
  /** The question, self-contained. */
  instruction: string;
  /** The word or numbers the question is about, for a separate "context" (Dolly style). */
  subject: string;
  /** The question with the subject left to the context. */
  instructionWithoutSubject: string;
  answer: string;
}

const LETTERS = "abcdefghijklmnopqrstuvwxyz";

function pickOf<T>(rng: Rng, xs: readonly T[]): T {
  return xs[rng.below(xs.length)];
}

/** A random task of the given kind (or of a random kind). `words`: lowercase a-z words. */
export function makeTask(rng: Rng, words: readonly string[], kind: TaskKind = pickOf(rng, TASK_KINDS)): Task {
  const word = pickOf(rng, words);
  const a = rng.below(50);
  const b = rng.below(50);
  const t = (instruction: string, subject: string, without: string, answer: string | number): Task => ({
    kind,
    instruction,
    subject,
    instructionWithoutSubject: without,
    answer: String(answer),
  });
  switch (kind) {
    case "add":
      return rng.below(2) === 0
        ? t(`What is ${a} + ${b}?`, `${a} ${b}`, "Add the two numbers.", a + b)
        : t(`Add ${a} and ${b}.`, `${a} ${b}`, "Add the two numbers.", a + b);
    case "sub": {
      const [hi, lo] = a >= b ? [a, b] : [b, a];
      return t(`What is ${hi} - ${lo}?`, `${hi} ${lo}`, "Subtract the second number from the first.", hi - lo);
    }
    case "mul": {
      const x = 1 + rng.below(12);
      const y = 1 + rng.below(12);
      return t(`What is ${x} times ${y}?`, `${x} ${y}`, "Multiply the two numbers.", x * y);
    }
    case "max":
      return t(`Which is larger, ${a} or ${a === b ? b + 1 : b}?`, `${a} ${a === b ? b + 1 : b}`, "Which number is larger?", Math.max(a, a === b ? b + 1 : b));
    case "reverse":
      return t(`Reverse the word "${word}".`, word, "Reverse the word.", [...word].reverse().join(""));
    case "upper":
      return t(`Write "${word}" in capital letters.`, word, "Write the word in capital letters.", word.toUpperCase());
    case "count": {
      const letter = rng.below(3) === 0 ? pickOf(rng, [...LETTERS]) : word[rng.below(word.length)];
      const n = [...word].filter((c) => c === letter).length;
      return t(`How many times does the letter "${letter}" appear in "${word}"?`, word, `How many times does the letter "${letter}" appear in the word?`, n);
    }
    case "length":
      return t(`How many letters are in "${word}"?`, word, "How many letters does the word have?", word.length);
    case "first":
      return t(`What is the first letter of "${word}"?`, word, "What is the first letter of the word?", word[0]);
    case "last":
      return t(`What is the last letter of "${word}"?`, word, "What is the last letter of the word?", word[word.length - 1]);
    case "next": {
      const i = rng.below(25);
      return t(`Which letter comes after "${LETTERS[i]}" in the alphabet?`, LETTERS[i], "Which letter comes after this one in the alphabet?", LETTERS[i + 1]);
    }
    case "prev": {
      const i = 1 + rng.below(25);
      return t(`Which letter comes before "${LETTERS[i]}" in the alphabet?`, LETTERS[i], "Which letter comes before this one in the alphabet?", LETTERS[i - 1]);
    }
  }
}

/** The demo's held-out tasks (JSON lines of kind, instruction, answer), next to its cache root. */
export const HELDOUT_FILE = "heldout_tasks.jsonl";

/** What makes two tasks the same question (however it is worded: with or without a context). */
export function taskKey(task: Task): string {
  return `${task.kind}|${task.instructionWithoutSubject}|${task.subject}`;
}

/**
 * n tasks none of which is the same question (taskKey) as a task in `seen` or as another
 * of them: held-out questions, never in the training data. Throws when the task space is
 * too small to find n of them.
 */
export function heldOutTasks(rng: Rng, words: readonly string[], seen: ReadonlySet<string>, n: number): Task[] {
  const out: Task[] = [];
  const keys = new Set(seen);
  for (let tries = 0; out.length < n; tries++) {
    if (tries > 100 * n) throw new Error(`only ${out.length} of ${n} held-out tasks found: the generated tasks cover nearly all questions`);
    const task = makeTask(rng, words);
    if (keys.has(taskKey(task))) continue;
    keys.add(taskKey(task));
    out.push(task);
  }
  return out;
}

/** Whether a model's reply answers the task (surrounding space and a final period ignored). */
export function checkAnswer(task: Task, reply: string): boolean {
  return reply.trim().replace(/\.$/, "") === task.answer;
}

/** Distinct lowercase a-z words of length min..max from a text, in order of first use. */
export function wordList(text: string, min = 3, max = 8, limit = 2000): string[] {
  const seen = new Set<string>();
  for (const m of text.matchAll(/[A-Za-z]+/g)) {
    const w = m[0];
    if (w !== w.toLowerCase() || w.length < min || w.length > max) continue;
    seen.add(w);
    if (seen.size >= limit) break;
  }
  return [...seen];
}
