//! Prompt tokenization whose cost is bounded before and during the work.
//!
//! llama.cpp splits a text at special-token occurrences before tokenizing it, and that split is
//! quadratic in their number: `"<|im_start|>a\n"` × 40k took 25 s, on the one thread that also
//! detokenizes every stream of the model. So, before tokenizing:
//!
//! - a lower bound on the token count, from the bytes (no token covers more than the longest
//!   piece of the vocabulary) and from the special-token occurrences (each is one token), refuses
//!   a prompt that cannot fit the context in microseconds;
//!
//! and the rest is tokenized in pieces of about [`PIECE`] bytes cut right after a special token
//! followed by a non-space byte. llama.cpp tokenizes the text between special tokens on its own
//! anyway (and adds the leading space SentencePiece wants after a special token either way), so
//! the pieces give the very same tokens; between them the thread serves other requests, a request
//! whose client left stops at the next piece, and counting stops once the context is exceeded.

use super::error::RuntimeError;
use crate::engine::{EngineError, StageHandle, Token};
use std::collections::HashMap;

/// Bytes per tokenize call (more when no cut point comes sooner).
pub const PIECE: usize = 8 << 10;

/// What bounds a prompt's tokens, read once per vocabulary.
#[derive(Debug, Default)]
pub(crate) struct VocabFacts {
    /// Bytes of the longest token.
    max_piece: usize,
    specials: Trie,
    /// What `add_special` puts before and after a text (BOS, EOS).
    before: Vec<Token>,
    after: Vec<Token>,
}

impl VocabFacts {
    pub(crate) async fn read(vocab: &StageHandle) -> Result<VocabFacts, EngineError> {
        let n = vocab.info().n_vocab as Token;
        let mut f = VocabFacts::default();
        // in slices, so that other requests get the thread in between
        for start in (0..n).step_by(8192) {
            let ids: Vec<Token> = (start..n.min(start + 8192)).collect();
            let shown = vocab.token_bytes(ids.clone(), true).await?;
            let plain = vocab.token_bytes(ids, false).await?;
            for (s, p) in shown.into_iter().zip(plain) {
                f.max_piece = f.max_piece.max(s.len());
                // control tokens render only when asked to: those the tokenizer parses as special
                if p.is_empty() && !s.is_empty() {
                    f.specials.insert(&s);
                }
            }
        }
        // an unknown character (up to 4 bytes) becomes one token whatever its piece
        f.max_piece = f.max_piece.max(4);
        let bare = vocab.tokenize("a", false, false).await?;
        let full = vocab.tokenize("a", true, false).await?;
        let at = full.windows(bare.len().max(1)).position(|w| w == bare.as_slice()).unwrap_or(0);
        f.before = full[..at].to_vec();
        f.after = full[(at + bare.len()).min(full.len())..].to_vec();
        Ok(f)
    }

    /// Tokens `text` has at least, parsed with special tokens.
    pub(crate) fn at_least(&self, text: &str) -> usize {
        let b = text.as_bytes();
        // whitespace may vanish (WordPiece); every other byte belongs to some token
        let solid = b.iter().filter(|c| !c.is_ascii_whitespace()).count();
        let mut specials = 0;
        let mut i = 0;
        while i < b.len() {
            match self.specials.longest(&b[i..]) {
                Some(len) => {
                    specials += 1;
                    i += len;
                }
                None => i += 1,
            }
        }
        (solid / self.max_piece.max(1)).max(specials) + self.before.len() + self.after.len()
    }

    /// Where `text` may be cut into tokenize calls: after a special token followed by a byte
    /// that is not whitespace (so no strip attribute and no space prefix reaches across a cut),
    /// at most one cut per [`PIECE`] bytes.
    fn cuts(&self, text: &str) -> Vec<usize> {
        let b = text.as_bytes();
        let (mut cuts, mut last, mut i) = (Vec::new(), 0, 0);
        while i < b.len() {
            match self.specials.longest(&b[i..]) {
                Some(len) => {
                    i += len;
                    if i < b.len() && !b[i].is_ascii_whitespace() && i - last >= PIECE {
                        cuts.push(i);
                        last = i;
                    }
                }
                None => i += 1,
            }
        }
        cuts
    }
}

/// A text's tokens, or the first of them when it needs more than asked for.
#[derive(Debug)]
pub(crate) struct Counted {
    /// All of the text's tokens when `complete`; otherwise a prefix of them (perhaps none), at
    /// least `max + 1` long when `at_least` came from tokenizing rather than from the bound.
    pub tokens: Vec<Token>,
    pub complete: bool,
    /// Tokens the whole text needs at least.
    pub at_least: usize,
}

/// Tokenizes `text` as `vocab.tokenize(text, true, true)` would, stopping as soon as it is known
/// to need more than `max` tokens: at once from [`VocabFacts::at_least`] when `bound_first`
/// (nothing tokenized), else at the first piece past `max` (the prefix kept, to truncate).
pub(crate) async fn up_to(
    vocab: &StageHandle,
    facts: &VocabFacts,
    text: &str,
    max: usize,
    bound_first: bool,
) -> Result<Counted, RuntimeError> {
    if bound_first {
        let at_least = facts.at_least(text);
        if at_least > max {
            return Ok(Counted { tokens: Vec::new(), complete: false, at_least });
        }
    }
    let mut tokens = facts.before.clone();
    let mut start = 0;
    for end in facts.cuts(text).into_iter().chain([text.len()]) {
        if end > start {
            // cuts fall after ASCII bytes of special tokens: always char boundaries
            let piece = text.get(start..end).unwrap_or_default();
            tokens.extend(vocab.tokenize(piece, false, true).await?);
            if tokens.len() > max {
                let at_least = tokens.len() + facts.at_least(&text[end..]).saturating_sub(facts.before.len());
                return Ok(Counted { tokens, complete: false, at_least });
            }
        }
        start = end;
    }
    tokens.extend(&facts.after);
    let at_least = tokens.len();
    Ok(Counted { tokens, complete: at_least <= max, at_least })
}

/// A prompt's tokens ([`up_to`]), refused when it needs `n_ctx` tokens or more.
pub(crate) async fn prompt(
    vocab: &StageHandle,
    facts: &VocabFacts,
    text: &str,
    n_ctx: u32,
) -> Result<Vec<Token>, RuntimeError> {
    let c = up_to(vocab, facts, text, (n_ctx as usize).saturating_sub(1), true).await?;
    match c.complete {
        true => Ok(c.tokens),
        false => Err(RuntimeError::PromptAtLeast { at_least: c.at_least, n_ctx }),
    }
}

/// Special-token texts by their bytes.
#[derive(Debug, Default)]
struct Trie {
    /// (node, byte) → node; node 0 is the root.
    next: HashMap<(u32, u8), u32>,
    /// Nodes where a special token ends.
    ends: std::collections::HashSet<u32>,
    nodes: u32,
}

impl Trie {
    fn insert(&mut self, s: &[u8]) {
        let mut at = 0;
        for &c in s {
            at = match self.next.get(&(at, c)) {
                Some(&n) => n,
                None => {
                    self.nodes += 1;
                    self.next.insert((at, c), self.nodes);
                    self.nodes
                }
            };
        }
        self.ends.insert(at);
    }

    /// Length of the longest special token `s` starts with.
    fn longest(&self, s: &[u8]) -> Option<usize> {
        let (mut at, mut best) = (0, None);
        for (i, &c) in s.iter().enumerate() {
            match self.next.get(&(at, c)) {
                Some(&n) => at = n,
                None => break,
            }
            if self.ends.contains(&at) {
                best = Some(i + 1);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(specials: &[&str], max_piece: usize) -> VocabFacts {
        let mut f = VocabFacts { max_piece, before: vec![1], ..Default::default() };
        for s in specials {
            f.specials.insert(s.as_bytes());
        }
        f
    }

    #[test]
    fn the_lower_bound_counts_special_tokens_and_bytes_without_tokenizing() {
        let f = facts(&["<|im_start|>", "<|im_end|>", "<|im"], 16);
        // longest match wins: one token each, not "<|im" plus text
        assert_eq!(f.specials.longest(b"<|im_start|>x"), Some(12));
        assert_eq!(f.specials.longest(b"<|imx"), Some(4));
        assert_eq!(f.specials.longest(b"<|i"), None);
        let attack = "<|im_start|>a\n".repeat(40_000);
        let t = std::time::Instant::now();
        assert!(f.at_least(&attack) >= 40_000);
        assert!(t.elapsed() < std::time::Duration::from_millis(500), "{:?}", t.elapsed());
        // plain text: bytes over the longest piece (whitespace not counted), plus BOS
        assert_eq!(f.at_least(&"abcd".repeat(8)), 3);
        assert_eq!(f.at_least(&" ".repeat(1000)), 1);
        assert_eq!(f.at_least(""), 1);
    }

    #[test]
    fn cuts_fall_after_special_tokens_followed_by_text_one_per_piece() {
        let f = facts(&["<s>", "</s>"], 8);
        let body = "x".repeat(PIECE);
        let text = format!("<s>{body}</s>\n<s>{body}</s>y<s>z");
        let cuts = f.cuts(&text);
        // not after the first <s> (less than a piece so far), not before "\n" (whitespace), not
        // after the last <s> (less than a piece since the cut before)
        assert_eq!(cuts.len(), 2, "{cuts:?}");
        assert!(text[..cuts[0]].ends_with("\n<s>") && text[cuts[0]..].starts_with('x'));
        assert!(text[..cuts[1]].ends_with("</s>") && text[cuts[1]..].starts_with("y<s>z"));
        assert!(f.cuts("no specials at all").is_empty());
    }

    /// The vocabulary-only stage of a generated model (and of the real one when
    /// EXO_TEST_REAL_MODEL names it).
    fn vocabs(dir: &std::path::Path) -> Vec<StageHandle> {
        let tiny = dir.join("tiny.gguf");
        crate::synth::make_model(&crate::synth::preset("tiny-llama").unwrap(), &tiny).unwrap();
        let mut paths = vec![tiny];
        paths.extend(std::env::var_os("EXO_TEST_REAL_MODEL").map(std::path::PathBuf::from).filter(|p| p.exists()));
        paths
            .into_iter()
            .map(|p| {
                let window = crate::engine::ModelWindow { vocab_only: true, ..crate::engine::ModelWindow::full(p) };
                let context = crate::engine::ContextParams::default();
                StageHandle::load(crate::engine::StageSpec { window, context }).unwrap()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pieces_give_exactly_the_tokens_of_one_call_and_hopeless_prompts_stop_early() {
        let d = tempfile::tempdir().unwrap();
        let unit = "<|im_start|>user\nHello wörld,  how are   you?<|im_end|>\n<|im_start|>assistant\n\
                    Fine <|im_end|> x<|im_start|>a\n\n  <|im_end|><|im_start|> lead<|im_end|>\t<|im_start|>z";
        let texts = [
            unit.repeat(400),
            format!("plain start {}", unit.repeat(300)),
            "<|im_start|>".repeat(3000),
            "no special tokens at all, only text ".repeat(500),
            String::new(),
        ];
        for vocab in vocabs(d.path()) {
            let facts = VocabFacts::read(&vocab).await.unwrap();
            for text in &texts {
                let whole = vocab.tokenize(text, true, true).await.unwrap();
                assert!(facts.at_least(text) <= whole.len().max(1), "the bound is a lower bound");
                let cuts = facts.cuts(text).len();
                let pieces = prompt(&vocab, &facts, text, u32::MAX).await.unwrap();
                assert_eq!(pieces, whole, "{} bytes in {} pieces", text.len(), cuts + 1);
            }
            assert!(facts.cuts(&texts[0]).len() >= 3, "long chats are cut");
            // the attack: 40k special tokens refused without tokenizing, in microseconds
            let attack = "<|im_start|>a\n".repeat(40_000);
            let t = std::time::Instant::now();
            let e = prompt(&vocab, &facts, &attack, 4096).await.unwrap_err();
            assert!(t.elapsed() < std::time::Duration::from_millis(500), "{:?}", t.elapsed());
            assert!(matches!(e, RuntimeError::PromptAtLeast { at_least, .. } if at_least >= 40_000), "{e}");
            // over the context but under the bound: counting stops at the first piece beyond it
            let long = unit.repeat(400);
            let n = vocab.tokenize(&long, true, true).await.unwrap().len() as u32;
            assert!(prompt(&vocab, &facts, &long, n).await.is_err());
            assert_eq!(prompt(&vocab, &facts, &long, n + 1).await.unwrap().len(), n as usize);
            // truncating (embeddings): the first tokens of the whole, without tokenizing it all
            let whole = vocab.tokenize(&long, true, true).await.unwrap();
            let c = up_to(&vocab, &facts, &long, 100, false).await.unwrap();
            assert!(!c.complete && c.tokens.len() > 100 && c.tokens.len() < whole.len() && c.at_least <= whole.len());
            assert_eq!(c.tokens[..], whole[..c.tokens.len()]);
            let c = up_to(&vocab, &facts, &long, whole.len(), false).await.unwrap();
            assert!(c.complete && c.tokens == whole);
        }
    }
}
