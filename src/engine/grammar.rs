//! Constrained sampling: llama.cpp's GBNF grammar sampler (owned here, freed on drop) and its
//! JSON-schema-to-grammar converter.

use super::thread_time::ThreadTime;
use super::{EngineError, Token};
use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::ptr::NonNull;
use std::time::Duration;

/// Longest grammar a request may carry (a schema of a few hundred properties is well below).
pub const MAX_GRAMMAR: usize = 256 << 10;

/// Longest one token's grammar work (masking a row of logits, advancing past the token) may take,
/// in the stage thread's CPU time (a loaded machine does not make a grammar costly).
/// The grammar runs on the stage thread that samples every sequence of the model, so its cost
/// is every other request's wait: a 15,000-value `enum` costs seconds per token on a 49k-token
/// vocabulary (llama.cpp tries each candidate token against each open alternative).
pub const GRAMMAR_STEP_BUDGET: Duration = Duration::from_millis(100);

/// Grammar work a sequence may spend beyond [`GRAMMAR_AVERAGE`] per token over its life.
const GRAMMAR_SLACK: Duration = Duration::from_secs(1);
/// Grammar work per token a sequence may average (a JSON schema's grammar takes ~1 ms).
const GRAMMAR_AVERAGE: Duration = Duration::from_millis(20);

/// Slices a row of candidates is masked in, the time checked after each.
const SLICES: usize = 16;

/// Why a sequence's grammar ended it (the batch's other sequences go on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrammarFault {
    #[error("no token can continue the grammar")]
    DeadEnd,
    #[error("the grammar costs ~{ms} ms per token, more than the {} ms allowed (a long enum or anyOf keeps too many alternatives open at once); simplify the schema", GRAMMAR_STEP_BUDGET.as_millis())]
    TooCostly { ms: u32 },
}

impl GrammarFault {
    /// Out-of-vocabulary token ids that stand for a fault in a batch's sampled tokens.
    const DEAD_END: Token = -1;
    /// Faults below this carry the estimated milliseconds: `TOO_COSTLY - ms`.
    const TOO_COSTLY: Token = -2;

    /// The fault as the token its row of a batch carries (every fault is negative).
    pub fn token(self) -> Token {
        match self {
            GrammarFault::DeadEnd => Self::DEAD_END,
            GrammarFault::TooCostly { ms } => Self::TOO_COSTLY - ms.min(1 << 30) as Token,
        }
    }

    /// The fault a sampled token stands for, `None` for a token (a non-negative id).
    pub fn of_token(t: Token) -> Option<GrammarFault> {
        match t {
            0.. => None,
            Self::DEAD_END => Some(GrammarFault::DeadEnd),
            t => Some(GrammarFault::TooCostly { ms: (Self::TOO_COSTLY - t) as u32 }),
        }
    }
}

/// A GBNF grammar from a JSON schema, by llama.cpp's converter (`common/json-schema-to-grammar`).
pub fn json_schema_to_grammar(schema: &serde_json::Value) -> Result<String, EngineError> {
    let text = schema.to_string();
    llama_cpp_2::json_schema_to_grammar(&text)
        .map_err(|e| EngineError::Grammar { reason: format!("llama.cpp cannot convert this JSON schema ({e})") })
}

/// One sequence's grammar state.
pub(super) struct Grammar {
    ptr: NonNull<sys::llama_sampler>,
    /// The candidates array, reused for every token (a vocabulary's worth of entries).
    data: Vec<sys::llama_token_data>,
    /// Grammar work so far and the tokens it was for (the sequence's average is bounded).
    spent: Duration,
    steps: u32,
    /// The last advance alone took longer than a step may.
    overran: Option<Duration>,
}

// SAFETY: the sampler is only used from the stage thread that owns it; llama.cpp samplers hold no
// thread-affine state.
unsafe impl Send for Grammar {}

impl Grammar {
    pub fn new(vocab: *const sys::llama_vocab, gbnf: &str) -> Result<Grammar, EngineError> {
        if gbnf.len() > MAX_GRAMMAR {
            return Err(EngineError::Grammar { reason: format!("{} bytes; at most {MAX_GRAMMAR}", gbnf.len()) });
        }
        let g = CString::new(gbnf).map_err(|_| EngineError::Grammar { reason: "contains a NUL byte".into() })?;
        let root = c"root";
        super::log::clear_errors();
        // SAFETY: vocab belongs to the stage's loaded model, which outlives this sampler (both are
        // owned by the stage thread, samplers dropped first); the strings are NUL-terminated.
        let p = unsafe { sys::llama_rs_sampler_init_grammar(vocab, g.as_ptr(), root.as_ptr()) };
        NonNull::new(p)
            .map(|ptr| Grammar { ptr, data: Vec::new(), spent: Duration::ZERO, steps: 0, overran: None })
            .ok_or_else(|| EngineError::Grammar {
                reason: Some(super::log::take_errors())
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "llama.cpp refused the grammar".into()),
            })
    }

    /// Sets the logits of tokens the grammar does not allow next to -inf, unless that would
    /// cost more than a step may. The candidates are masked in [`SLICES`] interleaved slices
    /// (each candidate is judged on its own, so the mask is the same), the time checked after
    /// each: a grammar too costly to apply stops after about 1/[`SLICES`] of the cost over the
    /// budget, whichever tokens are the costly ones.
    pub fn constrain(&mut self, logits: &mut [f32]) -> Result<(), GrammarFault> {
        let start = ThreadTime::now();
        if let Some(took) = self.overran.take() {
            return Err(too_costly(took));
        }
        for k in 0..SLICES {
            self.fill(logits.iter().copied().enumerate().skip(k).step_by(SLICES));
            self.apply();
            for d in self.data.iter() {
                logits[d.id as usize] = d.logit;
            }
            let took = start.elapsed();
            if took > GRAMMAR_STEP_BUDGET {
                return Err(too_costly(took.mul_f64(SLICES as f64 / (k + 1) as f64)));
            }
        }
        self.steps += 1;
        self.spend(start.elapsed())
    }

    /// Advances the grammar past `token`.
    pub fn accept(&mut self, token: Token) {
        let start = ThreadTime::now();
        // SAFETY: ptr is a live grammar sampler owned by self.
        unsafe { sys::llama_sampler_accept(self.ptr.as_ptr(), token) };
        let took = start.elapsed();
        self.overran = (took > GRAMMAR_STEP_BUDGET).then_some(took);
        // replaying a rebuilt sequence's tokens counts too; the next constrain checks the sum
        self.spent += took;
    }

    fn spend(&mut self, took: Duration) -> Result<(), GrammarFault> {
        self.spent += took;
        if self.spent > GRAMMAR_SLACK + GRAMMAR_AVERAGE * self.steps {
            return Err(too_costly(self.spent / self.steps.max(1)));
        }
        Ok(())
    }

    fn fill(&mut self, rows: impl Iterator<Item = (usize, f32)>) {
        self.data.clear();
        self.data.extend(rows.map(|(i, logit)| sys::llama_token_data { id: i as Token, logit, p: 0.0 }));
    }

    /// Masks `data` in place.
    fn apply(&mut self) {
        let data = &mut self.data;
        let mut arr =
            sys::llama_token_data_array { data: data.as_mut_ptr(), size: data.len(), selected: -1, sorted: false };
        // SAFETY: arr points at `data`, alive and exclusively borrowed for the call; the grammar
        // sampler only rewrites logits in place (it does not resize or reorder).
        unsafe { sys::llama_sampler_apply(self.ptr.as_ptr(), &mut arr) };
    }
}

fn too_costly(took: Duration) -> GrammarFault {
    GrammarFault::TooCostly { ms: took.as_millis().min(u32::MAX as u128) as u32 }
}

impl Drop for Grammar {
    fn drop(&mut self) {
        // SAFETY: ptr came from llama_rs_sampler_init_grammar and is freed once, here.
        unsafe { sys::llama_sampler_free(self.ptr.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_travel_as_negative_tokens_and_tokens_stay_tokens() {
        for f in [GrammarFault::DeadEnd, GrammarFault::TooCostly { ms: 0 }, GrammarFault::TooCostly { ms: 9_575 }] {
            assert!(f.token() < 0);
            assert_eq!(GrammarFault::of_token(f.token()), Some(f));
        }
        for t in [0, 1, 49_151, Token::MAX] {
            assert_eq!(GrammarFault::of_token(t), None);
        }
        // a hostile peer's token: any negative id is some fault, never a panic
        assert_eq!(GrammarFault::of_token(Token::MIN), Some(GrammarFault::TooCostly { ms: (-2 - Token::MIN) as u32 }));
        assert!(GrammarFault::TooCostly { ms: u32::MAX }.token() < 0);
    }
}
