//! The one place request options become [`SamplingParams`] and a [`GenRequest`]: each API
//! checks and maps its own field names onto [`Options`], and [`Options::request`] fills the rest
//! from that API's defaults.

use crate::engine::{SamplingParams, Token};
use crate::runtime::{Field, GenRequest, Input, ModelRef, RuntimeError};

/// Sampling and length options as every API has them, already checked; None: the API's default.
#[derive(Default)]
pub(super) struct Options {
    pub temperature: Option<f32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i32>,
    /// None: a random seed (sampling is then not reproducible, as in Ollama).
    pub seed: Option<u32>,
    pub logit_bias: Vec<(Token, f32)>,
    pub stop: Vec<String>,
    /// None: until the model stops, the context is full or the server's cap is reached.
    pub max_tokens: Option<u64>,
}

impl Options {
    pub fn sampling(&self, defaults: SamplingParams) -> SamplingParams {
        let d = defaults;
        SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(d.repeat_last_n),
            seed: self.seed.unwrap_or_else(super::util::random_seed),
            logit_bias: self.logit_bias.clone(),
            ..d
        }
    }

    /// The request for `input` with these options over `defaults` ([`SamplingParams::default`]
    /// is Ollama's, [`openai_defaults`] the others').
    pub fn request(self, model: ModelRef, input: Input, defaults: SamplingParams) -> GenRequest {
        let mut r = GenRequest::new(model, input, self.sampling(defaults));
        r.stop = self.stop;
        r.max_tokens = self.max_tokens;
        r
    }
}

/// OpenAI's defaults, which Anthropic and the Responses API share: temperature 1, top_p 1, no
/// top_k, no penalty.
pub(super) fn openai_defaults() -> SamplingParams {
    SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, ..Default::default() }
}

/// A token limit that must be positive when given (OpenAI's `max_tokens`, `max_output_tokens`).
pub(super) fn positive(n: Option<i64>) -> Result<Option<u64>, RuntimeError> {
    match n {
        None => Ok(None),
        Some(n) if n > 0 => Ok(Some(n as u64)),
        Some(n) => Err(RuntimeError::field(Field::MaxTokens, format!("must be positive, got {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_over_each_apis_defaults() {
        let o = Options {
            top_k: Some(5),
            seed: Some(9),
            stop: vec!["x".into()],
            max_tokens: Some(3),
            ..Default::default()
        };
        let s = o.sampling(openai_defaults());
        assert_eq!((s.temperature, s.top_k, s.top_p, s.min_p), (1.0, 5, 1.0, 0.0));
        assert_eq!((s.repeat_penalty, s.repeat_last_n, s.seed), (1.0, 64, 9));
        let s = o.sampling(SamplingParams::default());
        assert_eq!((s.temperature, s.top_k, s.top_p, s.repeat_penalty), (0.8, 5, 0.9, 1.1));
        let all = Options {
            temperature: Some(0.0),
            top_p: Some(0.5),
            min_p: Some(0.1),
            repeat_penalty: Some(1.3),
            repeat_last_n: Some(8),
            logit_bias: vec![(4, -100.0)],
            ..Default::default()
        };
        let s = all.sampling(SamplingParams::default());
        assert_eq!((s.temperature, s.top_k, s.top_p, s.min_p), (0.0, 40, 0.5, 0.1));
        assert_eq!((s.repeat_penalty, s.repeat_last_n, s.logit_bias.clone()), (1.3, 8, vec![(4, -100.0)]));
        assert!(s.banned.is_empty() && s.grammar.is_none() && s.draws == 0 && s.generated == 0);
        let r = o.request(ModelRef::Name("m".into()), Input::Raw("hi".into()), openai_defaults());
        assert_eq!((r.stop, r.max_tokens, r.sampling.seed), (vec!["x".to_string()], Some(3), 9));
    }

    #[test]
    fn token_limits_are_positive() {
        assert_eq!(positive(None).ok(), Some(None));
        assert_eq!(positive(Some(4)).ok(), Some(Some(4)));
        for n in [0, -1] {
            let e = positive(Some(n)).err().map(|e| e.message_with(|f| f.openai().to_string()));
            assert_eq!(e, Some(format!("max_tokens: must be positive, got {n}")));
        }
    }
}
