//! Every bound on a request, in one place, checked before anything is allocated or loaded.
//! Errors name the field.

use super::error::{Field, RuntimeError};
use super::request::GenRequest;

/// Stop sequences per request, and bytes per stop sequence.
pub const MAX_STOPS: usize = 16;
pub const MAX_STOP_BYTES: usize = 1024;
/// No model has a longer context than this; larger counts are refused outright.
pub const MAX_CONTEXT: u64 = 1 << 20;
/// Smallest context a caller may ask for.
pub const MIN_CONTEXT: u32 = 16;
pub const MAX_TOP_K: i32 = 1 << 20;
pub const MAX_TEMPERATURE: f32 = 100.0;
pub const MAX_REPEAT_PENALTY: f32 = 100.0;

/// Checks what can be checked without the model.
pub fn request(r: &GenRequest) -> Result<(), RuntimeError> {
    let s = &r.sampling;
    let bad = |f: Field, reason: String| Err(RuntimeError::field(f, reason));
    if !s.temperature.is_finite() || !(0.0..=MAX_TEMPERATURE).contains(&s.temperature) {
        return bad(Field::Temperature, format!("{} is outside [0, {MAX_TEMPERATURE}]", s.temperature));
    }
    if !(0..=MAX_TOP_K).contains(&s.top_k) {
        return bad(Field::TopK, format!("{} is outside [0, {MAX_TOP_K}]", s.top_k));
    }
    if !(0.0..=1.0).contains(&s.top_p) {
        return bad(Field::TopP, format!("{} is outside [0, 1]", s.top_p));
    }
    if !(0.0..=1.0).contains(&s.min_p) {
        return bad(Field::MinP, format!("{} is outside [0, 1]", s.min_p));
    }
    if !s.repeat_penalty.is_finite() || s.repeat_penalty <= 0.0 || s.repeat_penalty > MAX_REPEAT_PENALTY {
        return bad(Field::RepeatPenalty, format!("{} is outside (0, {MAX_REPEAT_PENALTY}]", s.repeat_penalty));
    }
    if s.repeat_last_n < -1 || s.repeat_last_n as i64 > MAX_CONTEXT as i64 {
        return bad(
            Field::RepeatLastN,
            format!("{} is invalid: use 0 (off), -1 (the whole context) or a count up to the context", s.repeat_last_n),
        );
    }
    match r.max_tokens {
        Some(0) => return bad(Field::MaxTokens, "must be at least 1".into()),
        Some(n) if n > MAX_CONTEXT => {
            return bad(Field::MaxTokens, format!("{n} is more than any context holds (at most {MAX_CONTEXT})"))
        }
        _ => {}
    }
    if let Some(n) = r.num_ctx {
        if !(MIN_CONTEXT as u64..=MAX_CONTEXT).contains(&(n as u64)) {
            return bad(Field::NumCtx, format!("{n} is outside [{MIN_CONTEXT}, {MAX_CONTEXT}]"));
        }
    }
    if s.logit_bias.len() > crate::engine::MAX_LOGIT_BIAS {
        return bad(
            Field::LogitBias,
            format!("{} tokens; at most {}", s.logit_bias.len(), crate::engine::MAX_LOGIT_BIAS),
        );
    }
    if let Some((t, b)) = s.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(b)) {
        return bad(Field::LogitBias, format!("the bias {b} of token {t} is outside [-100, 100]"));
    }
    if r.stop.len() > MAX_STOPS {
        return bad(Field::Stop, format!("{} stop sequences; at most {MAX_STOPS}", r.stop.len()));
    }
    if let Some(s) = r.stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return bad(Field::Stop, format!("stop sequences must have 1 to {MAX_STOP_BYTES} bytes, got {}", s.len()));
    }
    Ok(())
}

/// The context a request asks for, checked against the model's trained context.
pub fn num_ctx(asked: Option<u32>, default: u32, n_ctx_train: u32) -> Result<u32, RuntimeError> {
    let train = if n_ctx_train > 0 { n_ctx_train } else { MAX_CONTEXT as u32 };
    match asked {
        Some(n) if n > train => Err(RuntimeError::field(
            Field::NumCtx,
            format!("{n} is more than the model's trained context of {train} tokens"),
        )),
        Some(n) => Ok(n),
        None => Ok(default.min(train).max(MIN_CONTEXT)),
    }
}

/// The generation limit of a request on an instance whose sequences hold `n_ctx` tokens: the
/// smaller of what was asked and the server's cap (by default, the context).
pub fn max_tokens(asked: Option<u64>, cap: Option<u32>, n_ctx: u32) -> u32 {
    shared_max_tokens(asked, cap, n_ctx, 1)
}

/// [`max_tokens`] for one of `shares` generations of one request: the cap is split between
/// them, so a request of `n` choices generates no more than one of one choice.
pub fn shared_max_tokens(asked: Option<u64>, cap: Option<u32>, n_ctx: u32, shares: u32) -> u32 {
    let cap = (cap.unwrap_or(n_ctx) / shares.max(1)).max(1);
    asked.map_or(cap, |a| a.min(cap as u64) as u32)
}

/// `repeat_last_n` resolved against the sequence's context: -1 means all of it.
pub fn repeat_last_n(v: i32, n_ctx: u32) -> Result<i32, RuntimeError> {
    match v {
        -1 => Ok(n_ctx as i32),
        v if v as i64 > n_ctx as i64 => Err(RuntimeError::field(
            Field::RepeatLastN,
            format!("{v} is more than the context of {n_ctx} tokens; use -1 for the whole context"),
        )),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SamplingParams;
    use crate::runtime::request::{Input, ModelRef};

    fn req() -> GenRequest {
        GenRequest::new(ModelRef::Name("m".into()), Input::Raw("x".into()), SamplingParams::default())
    }

    #[test]
    fn bounds_name_the_field() {
        let field = |r: GenRequest| match request(&r) {
            Err(RuntimeError::InvalidField { field, .. }) => Some(field),
            Err(e) => panic!("unexpected {e}"),
            Ok(()) => None,
        };
        assert_eq!(field(req()), None);
        let mut r = req();
        r.sampling.temperature = f32::NAN;
        assert_eq!(field(r), Some(Field::Temperature));
        let mut r = req();
        r.sampling.repeat_last_n = 2_000_000_000;
        assert_eq!(field(r), Some(Field::RepeatLastN));
        let mut r = req();
        r.max_tokens = Some(1_000_000_000_000);
        assert_eq!(field(r), Some(Field::MaxTokens));
        let mut r = req();
        r.num_ctx = Some(4_000_000);
        assert_eq!(field(r), Some(Field::NumCtx));
        let mut r = req();
        r.stop = vec!["a".into(); 17];
        assert_eq!(field(r), Some(Field::Stop));
        let mut r = req();
        r.sampling.top_k = -1;
        assert_eq!(field(r), Some(Field::TopK));
    }

    #[test]
    fn context_and_limits() {
        assert_eq!(num_ctx(None, 4096, 2048).unwrap(), 2048);
        assert_eq!(num_ctx(Some(1024), 4096, 2048).unwrap(), 1024);
        assert!(matches!(
            num_ctx(Some(100_000), 4096, 8192),
            Err(RuntimeError::InvalidField { field: Field::NumCtx, .. })
        ));
        assert_eq!(num_ctx(Some(100_000), 4096, 0).unwrap(), 100_000);
        assert_eq!(max_tokens(None, None, 512), 512);
        assert_eq!(max_tokens(Some(1_000_000), None, 512), 512);
        assert_eq!(max_tokens(Some(7), Some(100), 512), 7);
        // n choices split the budget: 16 choices generate what one would, no more
        assert_eq!(shared_max_tokens(None, Some(1600), 4096, 16), 100);
        assert_eq!(shared_max_tokens(Some(1000), Some(1600), 4096, 16), 100);
        assert_eq!(shared_max_tokens(Some(5), None, 512, 16), 5);
        assert_eq!(shared_max_tokens(None, None, 512, 16), 32);
        assert_eq!(shared_max_tokens(None, Some(3), 512, 16), 1);
        assert_eq!(shared_max_tokens(None, None, 512, 1), max_tokens(None, None, 512));
        assert_eq!(repeat_last_n(-1, 512).unwrap(), 512);
        assert!(repeat_last_n(513, 512).is_err());
    }

    #[test]
    fn names_are_not_paths() {
        for bad in ["/etc/passwd", "../x", "models/../../etc/x", "a\\b", "x.gguf", "~/m", "C:/m", "a\u{0}b", ""] {
            assert!(ModelRef::name(bad).is_err(), "{bad:?}");
        }
        for good in ["tiny-llama", "tiny-llama:latest", "hf.co/org/repo:Q4_K_M", "llama-3.1-8b:q8_0", "org/repo"] {
            assert!(ModelRef::name(good).is_ok(), "{good:?}");
        }
    }
}
