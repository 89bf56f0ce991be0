//! llama.cpp's own quantizer (`llama_model_quantize`, what `llama-quantize` runs): derives test
//! and benchmark variants of a model (Q8_0, F16, Q4_K_M, ... from the shipped Q4_1) without
//! building llama.cpp's tools.

use super::{log, EngineError};
use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::path::Path;

/// The weight types a variant can be written in (llama.cpp's `llama_ftype`; 1-d tensors stay F32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantType {
    F16,
    Q4_0,
    Q4_1,
    Q4KM,
    Q8_0,
}

impl QuantType {
    pub const ALL: &'static [(&'static str, QuantType)] = &[
        ("f16", QuantType::F16),
        ("q4_0", QuantType::Q4_0),
        ("q4_1", QuantType::Q4_1),
        ("q4_k_m", QuantType::Q4KM),
        ("q8_0", QuantType::Q8_0),
    ];

    /// By llama-quantize's name for it, any case.
    pub fn parse(name: &str) -> Option<QuantType> {
        Self::ALL.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, t)| t)
    }

    fn ftype(self) -> sys::llama_ftype {
        match self {
            QuantType::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
            QuantType::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            QuantType::Q4_1 => sys::LLAMA_FTYPE_MOSTLY_Q4_1,
            QuantType::Q4KM => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            QuantType::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
        }
    }
}

/// Writes `output`, the model `input` with its weights in `to` (already quantized weights are
/// dequantized and quantized again, as `llama-quantize --allow-requantize` does). Blocking.
pub fn quantize(input: &Path, output: &Path, to: QuantType, threads: i32) -> Result<(), EngineError> {
    super::init()?;
    if !input.exists() {
        return Err(EngineError::NotFound { path: input.to_path_buf() });
    }
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| EngineError::Unsupported {
            path: p.to_path_buf(),
            reason: "the path contains a NUL byte".into(),
        })
    };
    let (cin, cout) = (c(input)?, c(output)?);
    // SAFETY: plain struct of defaults.
    let mut p = unsafe { sys::llama_model_quantize_default_params() };
    p.nthread = threads;
    p.ftype = to.ftype();
    p.allow_requantize = true;
    log::clear_errors();
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call; p is initialised
    // and its pointer fields are NULL (defaults).
    let code = unsafe { sys::llama_model_quantize(cin.as_ptr(), cout.as_ptr(), &p) };
    if code != 0 {
        return Err(EngineError::Load {
            path: input.to_path_buf(),
            begin: 0,
            end: 0,
            reason: format!("quantizing to {to:?} failed ({code}): {}", log::take_errors()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::QuantType;

    #[test]
    fn names_parse_like_llama_quantize() {
        assert_eq!(QuantType::parse("Q8_0"), Some(QuantType::Q8_0));
        assert_eq!(QuantType::parse("q4_k_m"), Some(QuantType::Q4KM));
        assert_eq!(QuantType::parse("q5_k"), None);
    }
}
