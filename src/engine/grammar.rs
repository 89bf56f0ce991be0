//! Constrained sampling: llama.cpp's GBNF grammar sampler (owned here, freed on drop) and its
//! JSON-schema-to-grammar converter.

use super::{EngineError, Token};
use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::ptr::NonNull;

/// Longest grammar a request may carry (a schema of a few hundred properties is well below).
pub const MAX_GRAMMAR: usize = 256 << 10;

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
        NonNull::new(p).map(|ptr| Grammar { ptr, data: Vec::new() }).ok_or_else(|| EngineError::Grammar {
            reason: Some(super::log::take_errors())
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "llama.cpp refused the grammar".into()),
        })
    }

    /// Sets the logits of tokens the grammar does not allow next to -inf.
    pub fn constrain(&mut self, logits: &mut [f32]) {
        let data = &mut self.data;
        data.clear();
        data.extend(logits.iter().enumerate().map(|(i, &logit)| sys::llama_token_data {
            id: i as Token,
            logit,
            p: 0.0,
        }));
        let mut arr =
            sys::llama_token_data_array { data: data.as_mut_ptr(), size: data.len(), selected: -1, sorted: false };
        // SAFETY: arr points at `data`, alive and exclusively borrowed for the call; the grammar
        // sampler only rewrites logits in place (it does not resize or reorder).
        unsafe { sys::llama_sampler_apply(self.ptr.as_ptr(), &mut arr) };
        for d in data.iter() {
            logits[d.id as usize] = d.logit;
        }
    }

    /// Advances the grammar past `token`.
    pub fn accept(&mut self, token: Token) {
        // SAFETY: ptr is a live grammar sampler owned by self.
        unsafe { sys::llama_sampler_accept(self.ptr.as_ptr(), token) };
    }
}

impl Drop for Grammar {
    fn drop(&mut self) {
        // SAFETY: ptr came from llama_rs_sampler_init_grammar and is freed once, here.
        unsafe { sys::llama_sampler_free(self.ptr.as_ptr()) };
    }
}
