//! Sampling on the last stage through llama.cpp's samplers (via llama-cpp-2): repetition
//! penalty, top-k, top-p, min-p, temperature, then a seeded draw (or greedy at temperature 0).

use super::grammar::{Grammar, GrammarFault};
use super::{EngineError, Token};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 selects the most likely token (greedy).
    pub temperature: f32,
    /// 0 disables.
    pub top_k: i32,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables.
    pub min_p: f32,
    /// 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: i32,
    pub seed: u32,
    /// Tokens that are never sampled (`exo bench` bans end-of-generation so every run produces
    /// exactly the asked number of tokens).
    pub banned: Vec<Token>,
    /// Added to the logits of these tokens before sampling (OpenAI's `logit_bias`, in [-100,
    /// 100]; -100 bans the token).
    pub logit_bias: Vec<(Token, f32)>,
    /// Random draws this sequence has already taken: a sequence rebuilt after a node failure
    /// resumes its seeded random stream where it was, so its text continues as if uninterrupted.
    pub draws: u32,
    /// GBNF the output must match (structured outputs, forced tool calls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
    /// How many tokens at the end of the history this sequence generated itself (a rebuilt
    /// sequence's grammar is advanced past them).
    pub generated: u32,
}

/// Most draws a sampler may skip ahead (a context never holds more tokens).
pub const MAX_DRAWS: u32 = 1 << 21;

impl Default for SamplingParams {
    /// Ollama's defaults.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 0,
            banned: Vec::new(),
            logit_bias: Vec::new(),
            draws: 0,
            grammar: None,
            generated: 0,
        }
    }
}

/// Most tokens a request may bias.
pub const MAX_LOGIT_BIAS: usize = 1024;

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, repeat_penalty: 1.0, ..Default::default() }
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |reason: String| Err(EngineError::Sampling { reason });
        if !self.temperature.is_finite() || self.temperature < 0.0 || self.temperature > 100.0 {
            return bad(format!("temperature {} is outside [0, 100]", self.temperature));
        }
        if self.top_k < 0 {
            return bad(format!("top_k {} is negative", self.top_k));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} is outside (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p {} is outside [0, 1]", self.min_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(format!("repeat_penalty {} must be positive", self.repeat_penalty));
        }
        if self.repeat_last_n < 0 {
            return bad(format!("repeat_last_n {} is negative", self.repeat_last_n));
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            return bad(format!("{} biased tokens; at most {MAX_LOGIT_BIAS}", self.logit_bias.len()));
        }
        if let Some((t, b)) = self.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(b)) {
            return bad(format!("the bias {b} of token {t} is outside [-100, 100]"));
        }
        if self.draws > MAX_DRAWS || self.generated > MAX_DRAWS {
            return bad(format!("draws {} / generated {} is more than {MAX_DRAWS}", self.draws, self.generated));
        }
        if let Some(g) = &self.grammar {
            if g.len() > super::MAX_GRAMMAR {
                return bad(format!("a grammar of {} bytes; at most {}", g.len(), super::MAX_GRAMMAR));
            }
        }
        Ok(())
    }
}

/// One sequence's sampler chain (it keeps the penalty history, so one per sequence).
pub(super) struct Sampler {
    chain: LlamaSampler,
    grammar: Option<Grammar>,
    /// Scratch row for the grammar's masking.
    masked: Vec<f32>,
}

impl Sampler {
    /// `vocab` (of the stage's loaded model, which outlives the sampler) is needed for a grammar.
    pub fn new(
        p: &SamplingParams,
        n_vocab: usize,
        history: &[Token],
        vocab: Option<*const llama_cpp_sys_2::llama_vocab>,
    ) -> Result<Sampler, EngineError> {
        p.validate()?;
        let grammar = match (&p.grammar, vocab) {
            (None, _) => None,
            (Some(g), Some(v)) => {
                let mut g = Grammar::new(v, g)?;
                let ours = history.len().saturating_sub(p.generated as usize);
                history[ours..].iter().for_each(|&t| g.accept(t));
                Some(g)
            }
            (Some(_), None) => return Err(EngineError::Grammar { reason: "no vocabulary for the grammar".into() }),
        };
        let mut s = Vec::new();
        if !p.banned.is_empty() || !p.logit_bias.is_empty() {
            let outside = |t: Token| t < 0 || t as usize >= n_vocab;
            if let Some(t) = p.banned.iter().copied().chain(p.logit_bias.iter().map(|b| b.0)).find(|&t| outside(t)) {
                return Err(EngineError::Sampling { reason: format!("token {t} is outside the vocabulary") });
            }
            // -100 bans, as OpenAI documents it
            let bias = |b: f32| if b <= -100.0 { f32::NEG_INFINITY } else { b };
            let biases: Vec<LlamaLogitBias> = p
                .banned
                .iter()
                .map(|&t| LlamaLogitBias::new(LlamaToken(t), f32::NEG_INFINITY))
                .chain(p.logit_bias.iter().map(|&(t, b)| LlamaLogitBias::new(LlamaToken(t), bias(b))))
                .collect();
            s.push(LlamaSampler::logit_bias(n_vocab as i32, &biases));
        }
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            s.push(LlamaSampler::penalties(n_vocab as i32, p.repeat_last_n, p.repeat_penalty, 0.0, 0.0));
        }
        if p.temperature <= 0.0 {
            s.push(LlamaSampler::greedy());
        } else {
            if p.top_k > 0 {
                s.push(LlamaSampler::top_k(p.top_k));
            }
            if p.top_p < 1.0 {
                s.push(LlamaSampler::top_p(p.top_p, 1));
            }
            if p.min_p > 0.0 {
                s.push(LlamaSampler::min_p(p.min_p, 1));
            }
            s.push(LlamaSampler::temp(p.temperature));
            // llama.cpp's dist sampler takes exactly one draw per sampled token (also from a
            // single candidate), so skipping `draws` of them resumes the same random stream
            let mut dist = LlamaSampler::dist(p.seed);
            for _ in 0..p.draws {
                let mut one = LlamaTokenDataArray::from_iter([LlamaTokenData::new(LlamaToken(0), 0.0, 0.0)], false);
                one.apply_sampler(&mut dist);
            }
            s.push(dist);
        }
        let mut chain = LlamaSampler::chain_simple(s);
        chain.accept_many(history.iter().map(|&t| LlamaToken(t)));
        Ok(Sampler { chain, grammar, masked: Vec::new() })
    }

    /// Picks the next token from one row of logits and records it in the history.
    pub fn sample(&mut self, logits: &[f32]) -> Result<Token, EngineError> {
        let logits = match &mut self.grammar {
            Some(g) => {
                self.masked.clear();
                self.masked.extend_from_slice(logits);
                g.constrain(&mut self.masked)?;
                if self.masked.iter().all(|l| *l == f32::NEG_INFINITY) {
                    return Err(GrammarFault::DeadEnd.into());
                }
                &self.masked[..]
            }
            None => logits,
        };
        let data = logits.iter().enumerate().map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0));
        let mut arr = LlamaTokenDataArray::from_iter(data, false);
        arr.apply_sampler(&mut self.chain);
        let t = arr
            .selected_token()
            .ok_or_else(|| EngineError::Sampling { reason: "the sampler chain selected no token".into() })?;
        self.chain.accept(t);
        if let Some(g) = &mut self.grammar {
            g.accept(t.0);
        }
        Ok(t.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banned_tokens_are_never_sampled() {
        let logits = [0.0, 1.0, 9.0, 5.0, 0.5];
        let mut free = Sampler::new(&SamplingParams::greedy(), 5, &[], None).unwrap();
        assert_eq!(free.sample(&logits).unwrap(), 2);
        let banned = SamplingParams { banned: vec![2], ..SamplingParams::greedy() };
        let mut s = Sampler::new(&banned, 5, &[], None).unwrap();
        assert_eq!(s.sample(&logits).unwrap(), 3);
        // also at a temperature: the banned token keeps probability zero
        let warm = SamplingParams { temperature: 1.5, top_k: 0, top_p: 1.0, seed: 7, ..banned.clone() };
        let mut s = Sampler::new(&warm, 5, &[], None).unwrap();
        assert!((0..200).all(|_| s.sample(&logits).unwrap() != 2));
        let outside = SamplingParams { banned: vec![5], ..SamplingParams::greedy() };
        assert!(Sampler::new(&outside, 5, &[], None).is_err());
    }

    #[test]
    fn a_resumed_sampler_continues_the_random_stream() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let p = SamplingParams {
            temperature: 1.2,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            seed: 9,
            ..Default::default()
        };
        let mut whole = Sampler::new(&p, 50, &[], None).unwrap();
        let all: Vec<Token> = (0..40).map(|_| whole.sample(&logits).unwrap()).collect();
        let mut resumed = Sampler::new(&SamplingParams { draws: 25, ..p.clone() }, 50, &all[..25], None).unwrap();
        let rest: Vec<Token> = (0..15).map(|_| resumed.sample(&logits).unwrap()).collect();
        assert_eq!(rest, all[25..]);
        let mut fresh = Sampler::new(&p, 50, &all[..25], None).unwrap();
        let other: Vec<Token> = (0..15).map(|_| fresh.sample(&logits).unwrap()).collect();
        assert_ne!(other, all[25..], "without the skipped draws the stream restarts");
    }
}
