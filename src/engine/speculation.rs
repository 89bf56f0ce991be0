//! What a batch carries for speculative decoding: the drafted tokens its last stage verifies
//! while sampling, and the positions a rejected draft left in the KV, dropped on every stage
//! before the batch decodes (so a rejection costs no round trip of its own).

use super::{EngineError, Token};

/// The token a row of a verify batch answers once an earlier row of its sequence missed its
/// draft: that row was decoded on a wrong guess and is not sampled (not even drawn from the
/// sequence's random stream). Distinct from every grammar fault.
pub const UNSAMPLED: Token = Token::MIN;

/// A row with nothing drafted after it (the last row of a window).
pub const NO_DRAFT: Token = -1;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Speculation {
    /// Empty, or per row the token proposed for the row after it in the same sequence
    /// ([`NO_DRAFT`] where none is): the last stage samples the rows of a sequence in order and
    /// stops at the first whose token differs from its draft.
    pub draft: Vec<Token>,
    /// `(seq, p0)`: positions `p0..` of `seq` are dropped before the batch decodes.
    pub trim: Vec<(i32, i32)>,
}

/// Most trims one batch carries (one per sequence a stage can hold).
pub const MAX_TRIMS: usize = 256;

impl Speculation {
    pub fn is_empty(&self) -> bool {
        self.draft.is_empty() && self.trim.is_empty()
    }

    /// Refuses what the batch's `n` rows and a stage of `n_seq` sequences cannot carry (llama.cpp
    /// asserts on an unknown sequence id).
    pub fn check(&self, n: usize, n_seq: u32) -> Result<(), EngineError> {
        let bad = |reason: String| Err(EngineError::InvalidBatch { reason });
        if !self.draft.is_empty() && self.draft.len() != n {
            return bad(format!("{} drafted tokens for {n} rows", self.draft.len()));
        }
        if let Some(&d) = self.draft.iter().find(|&&d| d < NO_DRAFT) {
            return bad(format!("drafted token id {d}"));
        }
        if self.trim.len() > MAX_TRIMS {
            return bad(format!("{} trims (at most {MAX_TRIMS})", self.trim.len()));
        }
        if let Some(&(s, p)) = self.trim.iter().find(|&&(s, p)| s < 0 || s as u32 >= n_seq || p < 0) {
            return bad(format!("trim of sequence {s} from position {p}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_speculation_is_refused() {
        let ok = Speculation { draft: vec![5, NO_DRAFT], trim: vec![(1, 7)] };
        assert!(ok.check(2, 4).is_ok());
        assert!(Speculation::default().check(3, 1).is_ok());
        assert!(Speculation { draft: vec![5], ..ok.clone() }.check(2, 4).is_err());
        assert!(Speculation { draft: vec![-7, 1], ..ok.clone() }.check(2, 4).is_err());
        assert!(Speculation { trim: vec![(4, 0)], ..ok.clone() }.check(2, 4).is_err());
        assert!(Speculation { trim: vec![(-1, 0)], ..ok.clone() }.check(2, 4).is_err());
        assert!(Speculation { trim: vec![(0, -3)], ..ok.clone() }.check(2, 4).is_err());
        assert!(Speculation { trim: vec![(0, 0); MAX_TRIMS + 1], ..ok }.check(2, 4).is_err());
        assert!(crate::engine::GrammarFault::of_token(UNSAMPLED).is_some(), "callers test UNSAMPLED first");
    }
}
