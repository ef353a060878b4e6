// CLIP BPE and Q-Former WordPiece tokenization with @huggingface/tokenizers (pure JS) over the exported
// tokenizer.json files. Reproduces every id of the fixtures' golden `tokenizer_checks`.
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";
import { ModelError, invalid, messageOf } from "../errors.js";

export interface ClipSpecialIds {
  bos: number;
  eos: number;
  pad: number;
}

export interface WordPieceSpecialIds {
  cls: number;
  sep: number;
  pad: number;
}

/** Result of tokenizing one text to a fixed length. */
export interface FixedLengthIds {
  ids: Int32Array;
  /** Number of content tokens dropped by truncation (0 when it fitted). */
  truncated: number;
}

function loadTokenizerJson(file: string, what: string): Tokenizer {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new ModelError(`cannot read the ${what} tokenizer ${file}: ${messageOf(err)} (re-export the model with \`blipdiff convert\`)`);
  }
  try {
    return new Tokenizer(json as object, {});
  } catch (err) {
    throw new ModelError(`invalid ${what} tokenizer ${file}: ${messageOf(err)}`);
  }
}

/** The CLIP tokenizer of the text encoder. */
export class ClipTokenizer {
  private readonly tok: Tokenizer;

  constructor(
    tokenizerJson: string,
    readonly special: ClipSpecialIds,
  ) {
    this.tok = loadTokenizerJson(tokenizerJson, "CLIP");
  }

  /** Content token ids without `<|startoftext|>` / `<|endoftext|>`. */
  contentIds(text: string): number[] {
    if (typeof text !== "string") throw invalid("a string", "text", text, "type");
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  /**
   * `<|startoftext|> tokens <|endoftext|>` padded with the pad id to exactly `length` ids; when too long,
   * the content is cut so that `<|endoftext|>` stays last (the reference's `truncation=True`).
   */
  encodeFixed(text: string, length: number): FixedLengthIds {
    if (!Number.isInteger(length) || length < 2) throw invalid("an integer >= 2", "length", length);
    const content = this.contentIds(text);
    const keep = Math.min(content.length, length - 2);
    const ids = new Int32Array(length).fill(this.special.pad);
    ids[0] = this.special.bos;
    for (let i = 0; i < keep; i++) ids[i + 1] = content[i];
    ids[keep + 1] = this.special.eos;
    return { ids, truncated: content.length - keep };
  }
}

/** The Q-Former's lowercasing WordPiece tokenizer (`[DEC]` is in the vocabulary but never inserted). */
export class WordPieceTokenizer {
  private readonly tok: Tokenizer;

  constructor(
    tokenizerJson: string,
    readonly special: WordPieceSpecialIds,
  ) {
    this.tok = loadTokenizerJson(tokenizerJson, "Q-Former");
  }

  /** `[CLS] wordpieces [SEP]`, never truncated. */
  encode(text: string): number[] {
    if (typeof text !== "string") throw invalid("a string", "subject", text, "type");
    const ids = this.tok.encode(text, { add_special_tokens: false }).ids;
    return [this.special.cls, ...ids, this.special.sep];
  }

  /** A batch padded with `[PAD]` to the longest text (the reference's `padding=True`, no max length). */
  encodeBatch(texts: string[]): { ids: Int32Array; mask: Int32Array; shape: [number, number] } {
    const rows = texts.map((t) => this.encode(t));
    const width = Math.max(...rows.map((r) => r.length));
    const ids = new Int32Array(rows.length * width).fill(this.special.pad);
    const mask = new Int32Array(rows.length * width);
    rows.forEach((r, b) => {
      ids.set(r, b * width);
      mask.fill(1, b * width, b * width + r.length);
    });
    return { ids, mask, shape: [rows.length, width] };
  }
}

export interface PromptIds {
  /** Built prompt, `textMaxLength - numQueryTokens` ids. */
  condIds: Int32Array;
  /** Negative prompt, `textMaxLength` ids. */
  uncondIds: Int32Array;
  /** Human-readable notes for the caller (e.g. a truncated negative prompt). */
  warnings: string[];
  /** Content tokens of the built prompt dropped to fit (expected: the 20x repetition almost always overflows). */
  promptTruncated: number;
}

/**
 * Tokenizes the built prompt (to textMaxLength - numQueryTokens) and the negative prompt (to textMaxLength).
 * The reference does not truncate the negative prompt and fails when it is too long; we cut it and warn.
 */
export function tokenizePrompts(
  clip: ClipTokenizer,
  builtPrompt: string,
  negativePrompt: string,
  textMaxLength: number,
  numQueryTokens: number,
): PromptIds {
  const cond = clip.encodeFixed(builtPrompt, textMaxLength - numQueryTokens);
  const uncond = clip.encodeFixed(negativePrompt, textMaxLength);
  const warnings: string[] = [];
  if (uncond.truncated > 0)
    warnings.push(
      `the negative prompt is ${uncond.truncated} token(s) longer than the ${textMaxLength - 2} that fit; it was truncated`,
    );
  return { condIds: cond.ids, uncondIds: uncond.ids, warnings, promptTruncated: cond.truncated };
}
