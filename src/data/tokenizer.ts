/**
 * The byte-level tokenizer of the caches: ids 0..255 are the bytes of the UTF-8 text,
 * then five special tokens. Text is never scanned for special-token strings: a special
 * id only enters a cache where the cache builder puts it (no prompt injection by text).
 */

export const TOKENIZER_NAME = "byte-utf8-v1";

/** Special tokens and their ids (fixed: part of the cache format). */
export const SPECIAL_TOKENS = {
  "<|pad|>": 256, // fills SFT rows shorter than T+1; never a counted target
  "<|user|>": 257, // starts a user turn
  "<|asst|>": 258, // starts an assistant turn: targets count from the next token on
  "<|eot|>": 259, // ends an assistant turn: the last counted target
  "<|endoftext|>": 260, // separates documents in stream caches
} as const;

export type SpecialTokenName = keyof typeof SPECIAL_TOKENS;

export const PAD_ID = SPECIAL_TOKENS["<|pad|>"];
export const USER_ID = SPECIAL_TOKENS["<|user|>"];
export const ASST_ID = SPECIAL_TOKENS["<|asst|>"];
export const EOT_ID = SPECIAL_TOKENS["<|eot|>"];
export const ENDOFTEXT_ID = SPECIAL_TOKENS["<|endoftext|>"];

/** Smallest model vocabulary that holds every id of this tokenizer (V_min). */
export const V_MIN = 261;

const encoder = new TextEncoder();

/** UTF-8 bytes of the text as token ids. */
export function encodeText(text: string): Uint8Array {
  return encoder.encode(text);
}

const specialNames = new Map<number, string>(
  Object.entries(SPECIAL_TOKENS).map(([name, id]) => [id, name]),
);

/**
 * Text of token ids: byte runs decoded as UTF-8 (invalid sequences become U+FFFD),
 * special ids as their names, other ids >= 256 as `<|id:N|>`.
 */
export function decodeTokens(ids: ArrayLike<number>): string {
  const decoder = new TextDecoder("utf-8");
  let out = "";
  let run: number[] = [];
  const flush = () => {
    if (run.length > 0) out += decoder.decode(new Uint8Array(run));
    run = [];
  };
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (id >= 0 && id < 256) {
      run.push(id);
      continue;
    }
    flush();
    out += specialNames.get(id) ?? `<|id:${id}|>`;
  }
  flush();
  return out;
}

/** One turn of a conversation. */
export interface Turn {
  role: "user" | "assistant";
  text: string;
}

/**
 * Token ids of a conversation: `<|user|>text` for a user turn, `<|asst|>text<|eot|>`
 * for an assistant turn, back to back. Every assistant turn is learnable under the
 * masking rule (src/data/mask.ts). Throws when there is no assistant turn.
 */
export function encodeConversation(turns: readonly Turn[]): Uint16Array {
  if (!turns.some((t) => t.role === "assistant")) {
    throw new Error("a conversation needs at least one assistant turn");
  }
  const parts = turns.map((t) => encodeText(t.text));
  let n = 0;
  for (let i = 0; i < turns.length; i++) n += parts[i].length + (turns[i].role === "assistant" ? 2 : 1);
  const out = new Uint16Array(n);
  let k = 0;
  for (let i = 0; i < turns.length; i++) {
    out[k++] = turns[i].role === "assistant" ? ASST_ID : USER_ID;
    out.set(parts[i], k);
    k += parts[i].length;
    if (turns[i].role === "assistant") out[k++] = EOT_ID;
  }
  return out;
}
