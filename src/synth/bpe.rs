//! A small real byte-level BPE tokenizer (GPT-2 style: byte-to-unicode alphabet, learned merges),
//! trained deterministically on a built-in English text, with BOS/EOS and ChatML special tokens.

use std::collections::HashMap;

const CORPUS: &str = "Once upon a time there was a little model that wanted to run on every machine in \
the world. The model was too big for one computer, so the computers worked together. Each one held a few \
layers and passed the hidden state to the next one over the network. The first machine read the prompt, \
the last machine chose the next token, and the answer streamed back to the person who asked. \
What is the capital of France? The capital of France is Paris. Why is the sky blue? Because sunlight \
is scattered by the air. Write a short poem about the sea. The sea is wide and deep and blue; it sings \
to me and I sing too. Hello! How are you today? I am fine, thank you. Please tell me a story about a \
cat and a dog who became friends. They played in the garden every day and shared their food. \
def main():\n    print(\"hello world\")\n    return 0\n\nfn main() { println!(\"hello\"); }\n\
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 42.\n\
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. \
Les machines parlent aussi français: bonjour, ça va très bien, merci. Ünïcödé: naïve café, 東京, こんにちは.";

pub const BOS: &str = "<|begin_of_text|>";
pub const EOS: &str = "<|end_of_text|>";
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

/// ChatML (which llama.cpp's built-in template support recognises), with tools shown and called
/// the Hermes way (`<tool_call>{json}</tool_call>`, answers in `<tool_response>`), as Qwen2.5's
/// template does: without tools it renders plain ChatML.
pub const CHAT_TEMPLATE: &str = "{%- if tools %}{{ '<|im_start|>system\\n' }}\
{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}\
{{- 'You may call functions. Their signatures:\\n<tools>\\n' }}{% for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{% endfor %}\
{{- '</tools>\\nTo call one, reply with <tool_call>{\"name\": <name>, \"arguments\": <object>}</tool_call>.<|im_end|>\\n' }}{% endif %}\
{%- for message in messages %}{% if not (tools and loop.first and message['role'] == 'system') %}\
{%- if message.tool_calls %}{{ '<|im_start|>assistant\\n' }}{% for c in message.tool_calls %}\
{{- '<tool_call>\\n' }}{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}{{ '\\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\\n' }}\
{%- elif message['role'] == 'tool' %}{{ '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}\
{%- else %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endif %}{% endif %}{% endfor %}\
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

pub struct Vocab {
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: u32,
    pub eos: u32,
}

/// GPT-2's reversible byte → printable-char map.
fn byte_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        map[*b as usize] = char::from_u32(c).expect("valid char");
    }
    map
}

/// Words as GPT-2 pre-tokenizes them (roughly: a leading space attaches to the word).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let class = |c: char| {
        if c.is_alphabetic() {
            0
        } else if c.is_numeric() {
            1
        } else if c.is_whitespace() {
            2
        } else {
            3
        }
    };
    for c in text.chars() {
        let starts_new = match cur.chars().last() {
            None => false,
            Some(p) => {
                let (cp, cc) = (class(p), class(c));
                let only_space = cur.chars().all(|x| x == ' ');
                !(cp == cc && cc != 3 && cc != 2 || (only_space && p == ' ' && cc != 2))
            }
        };
        if starts_new {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Trains `n_merges` merges on the built-in corpus.
pub fn build(n_merges: usize) -> Vocab {
    let b2u = byte_to_unicode();
    let mut tokens: Vec<String> = (0..256).map(|b| b2u[b].to_string()).collect();
    let mut counts: HashMap<Vec<String>, usize> = HashMap::new();
    for w in words(CORPUS) {
        let sym: Vec<String> = w.bytes().map(|b| b2u[b as usize].to_string()).collect();
        *counts.entry(sym).or_default() += 1;
    }
    let mut words: Vec<(Vec<String>, usize)> = counts.into_iter().collect();
    words.sort(); // deterministic order
    let mut merges = Vec::new();
    for _ in 0..n_merges {
        let mut pairs: HashMap<(String, String), usize> = HashMap::new();
        for (w, n) in &words {
            for p in w.windows(2) {
                *pairs.entry((p[0].clone(), p[1].clone())).or_default() += n;
            }
        }
        // most frequent pair; ties broken lexicographically for determinism
        let Some(((a, b), _)) = pairs.into_iter().max_by(|x, y| x.1.cmp(&y.1).then_with(|| y.0.cmp(&x.0))) else {
            break;
        };
        let joined = format!("{a}{b}");
        for (w, _) in words.iter_mut() {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == a && w[i + 1] == b {
                    w[i] = joined.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{a} {b}"));
        tokens.push(joined);
    }
    let mut token_types = vec![1; tokens.len()];
    let bos = tokens.len() as u32;
    for s in [BOS, EOS, IM_START, IM_END] {
        tokens.push(s.to_string());
        token_types.push(3); // control
    }
    Vocab { tokens, token_types, merges, bos, eos: bos + 1 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bpe_is_deterministic_and_sized() {
        let a = super::build(200);
        let b = super::build(200);
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.merges.len(), 200);
        assert_eq!(a.tokens.len(), 256 + 200 + 4);
        assert_eq!(a.tokens[a.bos as usize], super::BOS);
        // merges refer to existing tokens
        for m in &a.merges {
            let (x, y) = m.split_once(' ').unwrap();
            assert!(a.tokens.iter().any(|t| t == x) && a.tokens.iter().any(|t| t == y), "{m}");
        }
    }
}
