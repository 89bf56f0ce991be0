//! Prompt lookup: proposals for speculative decoding from the sequence's own text (used by the
//! runtime's batcher and by the generation loop of `exo bench --draft ngram`).

use crate::engine::Token;

/// Longest n-gram looked up, and shortest.
const NGRAM_MAX: usize = 4;
const NGRAM_MIN: usize = 2;
/// Tokens of history searched (the most recent ones): bounds the lookup's cost per step.
pub const NGRAM_SPAN: usize = 8192;

/// Up to `k` tokens that followed the most recent earlier occurrence of the longest suffix of
/// `history` (NGRAM_MAX down to NGRAM_MIN tokens); empty when none recurs.
pub fn ngram(history: &[Token], k: usize) -> Vec<Token> {
    if k == 0 {
        return Vec::new();
    }
    let h = &history[history.len().saturating_sub(NGRAM_SPAN)..];
    for n in (NGRAM_MIN..=NGRAM_MAX.min(h.len().saturating_sub(1))).rev() {
        let tail = &h[h.len() - n..];
        // the latest match whose continuation is not the tail itself
        if let Some(at) = (0..h.len() - n).rev().find(|&j| &h[j..j + n] == tail) {
            let from = at + n;
            return h[from..(from + k).min(h.len())].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_proposes_what_followed_the_latest_match() {
        // "1 2 3 9 | 1 2 3 7 8 | 1 2 3": the latest "1 2 3" was followed by 7 8
        let h = [1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3];
        assert_eq!(ngram(&h, 2), [7, 8]);
        assert_eq!(ngram(&h, 10), [7, 8, 1, 2, 3]);
        assert!(ngram(&h, 0).is_empty());
        // nothing recurs
        assert!(ngram(&[1, 2, 3, 4, 5], 4).is_empty());
        // a single token never matches on its own (too noisy)
        assert!(ngram(&[5, 1, 6, 5], 4).is_empty());
        assert!(ngram(&[], 4).is_empty());
        assert!(ngram(&[1], 4).is_empty());
        // a run repeats itself
        assert_eq!(ngram(&[4, 4, 4, 4], 3), [4]);
    }
}
