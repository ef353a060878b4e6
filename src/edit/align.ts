// Token alignment of prompt-to-prompt editing (edit.json spec sections 3 and 8): which source-prompt key each key of
// the edited conditioning takes its attention column from (mapper, alphas), and where the source subject sits in
// the source prompt (LocalBlend's subject_alpha). Plain integer code over token ids; no tokenizer here.

/** The id of a ctx placeholder in the alignment sequence: equal to no token id (ids are >= 0). */
export const PLACEHOLDER = -1;

/** Position of the subject's first token in "a {subject} ...": after `<|startoftext|>` and "a". */
export const SUBJECT_START = 2;

/**
 * The alignment sequence y of the edited conditioning (spec section 3): `u[0:cbp] + [PLACEHOLDER] * nq + u[cbp:]`,
 * so that position j of y is position j of the conditioning the UNet sees (the nq ctx embeddings spliced at cbp).
 * `u` is the unpadded edit prompt (BOS ... EOS).
 */
export function alignmentSequence(u: ArrayLike<number>, ctxBeginPos: number, numQueryTokens: number): number[] {
  const ids = Array.from(u);
  if (ctxBeginPos > ids.length) throw new RangeError(`Expected at least ${ctxBeginPos} ids for the edit prompt but received ${ids.length}`);
  return [...ids.slice(0, ctxBeginPos), ...new Array<number>(numQueryTokens).fill(PLACEHOLDER), ...ids.slice(ctxBeginPos)];
}

/**
 * Global (Needleman-Wunsch) alignment of x (the source ids) and y (the alignment sequence) with gap 0, match +1 and
 * mismatch -1; ties prefer a step left (skip y[j-1]), then up (skip x[i-1]), then the diagonal. Returns, for every
 * position j of y, the index in x it aligns to, or -1.
 */
export function alignTokens(x: ArrayLike<number>, y: ArrayLike<number>): Int32Array {
  const nx = x.length;
  const ny = y.length;
  const w = ny + 1;
  const score = new Int32Array((nx + 1) * w);
  // 1 = left, 2 = up, 3 = diagonal, 4 = origin. Row 0 and column 0 score 0 (gap 0).
  const trace = new Uint8Array((nx + 1) * w);
  trace[0] = 4;
  for (let j = 1; j <= ny; j++) trace[j] = 1;
  for (let i = 1; i <= nx; i++) trace[i * w] = 2;
  for (let i = 1; i <= nx; i++) {
    for (let j = 1; j <= ny; j++) {
      const left = score[i * w + j - 1];
      const up = score[(i - 1) * w + j];
      const diag = score[(i - 1) * w + j - 1] + (x[i - 1] === y[j - 1] ? 1 : -1);
      const best = Math.max(left, up, diag);
      score[i * w + j] = best;
      trace[i * w + j] = best === left ? 1 : best === up ? 2 : 3;
    }
  }
  const out = new Int32Array(ny).fill(-1);
  let i = nx;
  let j = ny;
  while (i > 0 || j > 0) {
    const t = trace[i * w + j];
    if (t === 3) {
      i -= 1;
      j -= 1;
      out[j] = i;
    } else if (t === 1) {
      j -= 1;
      out[j] = -1;
    } else if (t === 2) {
      i -= 1;
    } else break;
  }
  return out;
}

export interface TokenAlignment {
  /** The alignment sequence y (placeholders at the ctx positions). */
  sequence: number[];
  /** textMaxLength entries: the source key of each edited key, -1 for none; j itself past the end of y. */
  mapper: Int32Array;
  /** textMaxLength entries: 1 where the edited key has a source key (and past the end of y), else 0. */
  alphas: Float32Array;
}

/**
 * mapper and alphas (spec section 3) of the unpadded source prompt ids `srcIds` and the unpadded edit prompt ids
 * `editIds` (both BOS ... EOS), for a text window of `textMaxLength` positions of which `numQueryTokens` hold the
 * subject embeddings from `ctxBeginPos` on. The prompts must fit (the caller refuses those that do not).
 */
export function tokenAlignment(
  srcIds: ArrayLike<number>,
  editIds: ArrayLike<number>,
  ctxBeginPos: number,
  numQueryTokens: number,
  textMaxLength: number,
): TokenAlignment {
  const sequence = alignmentSequence(editIds, ctxBeginPos, numQueryTokens);
  if (srcIds.length > textMaxLength)
    throw new RangeError(`Expected at most ${textMaxLength} ids for the source prompt but received ${srcIds.length}`);
  if (sequence.length > textMaxLength)
    throw new RangeError(`Expected at most ${textMaxLength - numQueryTokens} ids for the edit prompt but received ${editIds.length}`);
  const aligned = alignTokens(srcIds, sequence);
  const mapper = new Int32Array(textMaxLength);
  const alphas = new Float32Array(textMaxLength);
  for (let j = 0; j < textMaxLength; j++) {
    if (j < sequence.length) {
      mapper[j] = aligned[j];
      alphas[j] = aligned[j] === -1 ? 0 : 1;
    } else {
      mapper[j] = j;
      alphas[j] = 1;
    }
  }
  return { sequence, mapper, alphas };
}

/**
 * The source subject's token positions in the unpadded source prompt "a {subject} {prompt}" (spec section 8,
 * deviation (d)): SUBJECT_START .. SUBJECT_START + subjectTokens - 1, and the same as a 0/1 vector over the
 * `textMaxLength` keys (LocalBlend's subject_alpha).
 */
export function subjectPositions(subjectTokens: number, textMaxLength: number): { positions: number[]; subjectAlpha: Float32Array } {
  if (!Number.isInteger(subjectTokens) || subjectTokens < 1 || SUBJECT_START + subjectTokens > textMaxLength)
    throw new RangeError(`Expected between 1 and ${textMaxLength - SUBJECT_START} subject tokens but received ${subjectTokens}`);
  const positions = Array.from({ length: subjectTokens }, (_, k) => SUBJECT_START + k);
  const subjectAlpha = new Float32Array(textMaxLength);
  for (const p of positions) subjectAlpha[p] = 1;
  return { positions, subjectAlpha };
}
