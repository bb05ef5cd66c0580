// The optional sentence budget: an answer is cut after N sentences and generation stops.
// Small models ramble; cutting on the client works whether or not the model follows
// instructions, and stopping early saves the user's GPU time.

const SENTENCE_END = /[.!?\u2026\u3002\uff01\uff1f]+["'\u201d\u2019)\]]*(?=\s)/g;

/**
 * {text, reached}: text cut after `limit` complete sentences (a terminator followed by
 * whitespace; at the end of a finished answer, end of text counts too). No limit: unchanged.
 */
export function applySentenceBudget(text, limit, finished = false) {
  if (!limit || limit < 1) return { text, reached: false };
  const probe = finished ? `${text} ` : text;
  let count = 0;
  for (const match of probe.matchAll(SENTENCE_END)) {
    count += 1;
    if (count === limit) {
      const end = match.index + match[0].length;
      return { text: text.slice(0, end), reached: end < text.trimEnd().length || !finished };
    }
  }
  return { text, reached: false };
}
