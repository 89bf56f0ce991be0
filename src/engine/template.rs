//! Chat templates through llama.cpp's built-in matching (used when the chat layer's Jinja
//! renderer cannot render a model's template).

use super::{log, EngineError};
use llama_cpp_sys_2 as sys;
use std::ffi::{c_char, CString};

/// One message as llama.cpp's built-in template matching takes it (the chat layer's richer
/// messages are reduced to this before they reach the engine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

impl TemplateMessage {
    pub fn new(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage { role: role.into(), content: content.into() }
    }
}

/// Formats `messages` with `template` (a GGUF's `tokenizer.chat_template`) as llama.cpp would.
pub(super) fn apply(
    template: Option<&str>,
    messages: &[TemplateMessage],
    add_assistant: bool,
) -> Result<String, EngineError> {
    let tmpl = template.ok_or_else(|| EngineError::Template { reason: "the model has no chat template".into() })?;
    let cstr =
        |s: &str| CString::new(s).map_err(|_| EngineError::Template { reason: "text contains a NUL byte".into() });
    let ctmpl = cstr(tmpl)?;
    let owned: Vec<(CString, CString)> =
        messages.iter().map(|m| Ok((cstr(&m.role)?, cstr(&m.content)?))).collect::<Result<_, EngineError>>()?;
    let msgs: Vec<sys::llama_chat_message> =
        owned.iter().map(|(r, c)| sys::llama_chat_message { role: r.as_ptr(), content: c.as_ptr() }).collect();
    let mut buf = vec![0u8; 1024 + messages.iter().map(|m| m.content.len() * 2).sum::<usize>()];
    for _ in 0..2 {
        log::clear_errors();
        // SAFETY: all strings are NUL-terminated and outlive the call; buf has buf.len() bytes.
        let n = unsafe {
            sys::llama_chat_apply_template(
                ctmpl.as_ptr(),
                msgs.as_ptr(),
                msgs.len(),
                add_assistant,
                buf.as_mut_ptr() as *mut c_char,
                buf.len() as i32,
            )
        };
        if n < 0 {
            return Err(EngineError::Template {
                reason: "llama.cpp does not support this model's chat template".into(),
            });
        }
        if (n as usize) <= buf.len() {
            buf.truncate(n as usize);
            return String::from_utf8(buf).map_err(|_| EngineError::Template { reason: "output is not UTF-8".into() });
        }
        buf.resize(n as usize, 0);
    }
    Err(EngineError::Template { reason: "output size changed between calls".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";

    #[test]
    fn a_chatml_template_formats_and_hostile_input_is_a_typed_error() {
        let msgs = [TemplateMessage::new("user", "hi")];
        let out = apply(Some(CHATML), &msgs, true).unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        // a long message fits (the buffer is sized from the messages)
        let long = [TemplateMessage::new("user", &"x".repeat(5000))];
        assert!(apply(Some(CHATML), &long, false).unwrap().contains(&"x".repeat(5000)));
        for (t, m) in [(None, "hi"), (Some(CHATML), "a\0b")] {
            let e = apply(t, &[TemplateMessage::new("user", m)], true).unwrap_err();
            assert!(matches!(e, EngineError::Template { .. }), "{e}");
        }
        assert!(apply(Some("{{ nothing llama.cpp knows }}"), &msgs, true).is_err());
    }
}
