//! The catalog: one TOML card per model in `models/`, embedded at build time. Values that could
//! not be confirmed are the string "unknown", never a guess.

use crate::placement::ModelCost;
use serde::Deserialize;
use std::collections::BTreeMap;

include!(concat!(env!("OUT_DIR"), "/catalog_cards.rs"));

/// A value a card may leave as "unknown".
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Known<T> {
    // first, so that the string "unknown" is never taken for a known string value
    Unknown(UnknownMarker),
    Known(T),
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct UnknownMarker;

impl TryFrom<String> for UnknownMarker {
    type Error = CardProblem;
    fn try_from(s: String) -> Result<Self, CardProblem> {
        if s == "unknown" {
            Ok(UnknownMarker)
        } else {
            Err(CardProblem::NotUnknown { found: s })
        }
    }
}

impl<T> Known<T> {
    pub fn get(&self) -> Option<&T> {
        match self {
            Known::Known(v) => Some(v),
            Known::Unknown(_) => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub architecture: String,
    pub params: Known<u64>,
    pub n_layer: Known<u32>,
    pub n_embd: Known<u32>,
    pub n_head: Known<u32>,
    pub n_head_kv: Known<u32>,
    pub head_dim: Known<u32>,
    pub n_ff: Known<u32>,
    pub vocab_size: Known<u32>,
    pub context_length: Known<u32>,
    pub tied_embeddings: Known<bool>,
    #[serde(default)]
    pub n_expert: Option<Known<u32>>,
    #[serde(default)]
    pub n_expert_used: Option<Known<u32>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantFiles {
    /// Paths inside the repository, in split-set order.
    pub files: Known<Vec<String>>,
    /// Total size in GB (1e9 bytes) as the repository lists it.
    pub size_gb: Known<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    pub name: String,
    pub description: String,
    pub family: String,
    pub license: Known<String>,
    /// Hugging Face repository holding the GGUFs.
    pub repo: Known<String>,
    pub default_quant: String,
    pub sources: Vec<String>,
    pub shape: Shape,
    pub quant: BTreeMap<String, QuantFiles>,
}

#[derive(Debug, thiserror::Error)]
#[error("catalog card {file}: {problem}")]
pub struct CardError {
    pub file: String,
    pub problem: CardProblem,
}

/// What is wrong with a card: it does not parse, or it disagrees with itself.
#[derive(Debug, thiserror::Error)]
pub enum CardProblem {
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error("expected a value or \"unknown\", found {found:?}")]
    NotUnknown { found: String },
    #[error("name {name:?} must be lower-case letters, digits, '.', '_' or '-'")]
    Name { name: String },
    #[error("default_quant {quant:?} is not one of the listed quantizations")]
    DefaultQuant { quant: String },
    #[error("sources must say where the facts come from")]
    NoSources,
    #[error("repo {repo:?} must be ORG/NAME")]
    Repo { repo: String },
    #[error("quantization {quant:?} must be lower-case")]
    QuantName { quant: String },
    #[error("quant {quant}: no files")]
    NoFiles { quant: String },
    #[error("quant {quant}: {file:?} is not a .gguf file")]
    NotGguf { quant: String, file: String },
    #[error("quant {quant}: split file {file:?} should end with {want:?}")]
    SplitName { quant: String, file: String, want: String },
    #[error("quant {quant}: size_gb {gb} must be positive")]
    Size { quant: String, gb: f64 },
    #[error("quant {quant}: {gb} GB for {params} parameters is {bits:.1} bits each")]
    Bits { quant: String, gb: f64, params: u64, bits: f64 },
    #[error("n_embd, n_head and head_dim must be positive")]
    HeadDims,
    #[error("n_head {n_head} must be a multiple of n_head_kv {n_head_kv}")]
    KvHeads { n_head: u32, n_head_kv: u32 },
    #[error("n_expert_used {used} must be in 1..={n_expert}")]
    Experts { used: u32, n_expert: u32 },
}

impl Card {
    pub fn parse(file: &str, text: &str) -> Result<Card, CardError> {
        let err = |problem| CardError { file: file.to_string(), problem };
        let card: Card = toml::from_str(text).map_err(|e| err(CardProblem::Toml(e)))?;
        card.check().map_err(err)?;
        Ok(card)
    }

    /// Self-consistency: what a card says must agree with itself.
    fn check(&self) -> Result<(), CardProblem> {
        let lower = |s: &str| s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !lower(&self.name) || self.name.is_empty() {
            return Err(CardProblem::Name { name: self.name.clone() });
        }
        if !self.quant.contains_key(&self.default_quant) {
            return Err(CardProblem::DefaultQuant { quant: self.default_quant.clone() });
        }
        if self.sources.is_empty() {
            return Err(CardProblem::NoSources);
        }
        if let Some(r) = self.repo.get() {
            if r.split('/').count() != 2 {
                return Err(CardProblem::Repo { repo: r.clone() });
            }
        }
        for (q, qf) in &self.quant {
            if !lower(q) {
                return Err(CardProblem::QuantName { quant: q.clone() });
            }
            if let Some(files) = qf.files.get() {
                check_files(q, files)?;
            }
            if let Some(&gb) = qf.size_gb.get() {
                if !(gb.is_finite() && gb > 0.0) {
                    return Err(CardProblem::Size { quant: q.clone(), gb });
                }
                if let Some(&p) = self.shape.params.get() {
                    let bits = gb * 8e9 / p as f64;
                    if !(1.5..=33.0).contains(&bits) {
                        return Err(CardProblem::Bits { quant: q.clone(), gb, params: p, bits });
                    }
                }
            }
        }
        let s = &self.shape;
        if let (Some(e), Some(h), Some(d)) = (s.n_embd.get(), s.n_head.get(), s.head_dim.get()) {
            if *h == 0 || *d == 0 || *e == 0 {
                return Err(CardProblem::HeadDims);
            }
        }
        if let (Some(h), Some(kv)) = (s.n_head.get(), s.n_head_kv.get()) {
            if *kv == 0 || h % kv != 0 {
                return Err(CardProblem::KvHeads { n_head: *h, n_head_kv: *kv });
            }
        }
        if let (Some(Known::Known(x)), Some(Known::Known(u))) = (&s.n_expert, &s.n_expert_used) {
            if u > x || *u == 0 {
                return Err(CardProblem::Experts { used: *u, n_expert: *x });
            }
        }
        Ok(())
    }

    /// Files and size of a quantization (`None`: the default).
    pub fn quant(&self, q: Option<&str>) -> Option<(&str, &QuantFiles)> {
        let q = q.map(|q| q.to_ascii_lowercase()).unwrap_or_else(|| self.default_quant.clone());
        self.quant.get_key_value(&q).map(|(k, v)| (k.as_str(), v))
    }

    /// The shape for placement, derived from the card: the file size split over the tensors in
    /// proportion to their parameter counts (an estimate; a local GGUF header is exact).
    pub fn model_cost(&self, q: Option<&str>) -> Option<ModelCost> {
        let s = &self.shape;
        let (qname, qf) = self.quant(q)?;
        let size = (qf.size_gb.get()? * 1e9) as u64;
        let (l, e, h, kv, d, ff, v) = (
            *s.n_layer.get()? as u64,
            *s.n_embd.get()? as u64,
            *s.n_head.get()? as u64,
            *s.n_head_kv.get()? as u64,
            *s.head_dim.get()? as u64,
            *s.n_ff.get()? as u64,
            *s.vocab_size.get()? as u64,
        );
        let tied = *s.tied_embeddings.get()?;
        let experts = s.n_expert.as_ref().and_then(|x| x.get()).copied().unwrap_or(0) as u64;
        let attn = e * d * (h + 2 * kv) + d * h * e;
        let ffn = 3 * e * ff * experts.max(1) + e * experts;
        let layer = attn + ffn;
        let embd = v * e;
        let out = if tied { 0 } else { v * e };
        let total = layer * l + embd + out;
        let per = size as f64 / total as f64;
        let layer_bytes = (layer as f64 * per) as u64;
        Some(ModelCost {
            name: format!("{}:{qname}", self.name),
            n_layer: l as u32,
            n_embd: e as u32,
            n_head: h as u32,
            n_vocab: v as u32,
            layer_bytes: vec![layer_bytes; l as usize],
            embedding_bytes: (embd as f64 * per) as u64,
            output_bytes: ((if tied { embd } else { out }) as f64 * per) as u64,
            tied_embeddings: tied,
            other_bytes: 0,
            kv_bytes_per_token_per_layer: 2 * kv * 2 * d,
            n_params: s.params.get().copied().unwrap_or(total),
        })
    }
}

/// Split sets must be named NAME-0000i-of-0000n.gguf, complete and in order.
fn check_files(q: &str, files: &[String]) -> Result<(), CardProblem> {
    if files.is_empty() {
        return Err(CardProblem::NoFiles { quant: q.into() });
    }
    if let Some(f) = files.iter().find(|f| !f.ends_with(".gguf")) {
        return Err(CardProblem::NotGguf { quant: q.into(), file: f.clone() });
    }
    if files.len() > 1 {
        let n = files.len();
        for (i, f) in files.iter().enumerate() {
            let want = format!("-{:05}-of-{n:05}.gguf", i + 1);
            if !f.ends_with(&want) {
                return Err(CardProblem::SplitName { quant: q.into(), file: f.clone(), want });
            }
        }
    }
    Ok(())
}

/// Every card in `models/`, parsed. Panics only if a card is broken, which the catalog test
/// rules out at build time of any release.
pub fn cards() -> &'static [Card] {
    static CATALOG: std::sync::OnceLock<Vec<Card>> = std::sync::OnceLock::new();
    CATALOG.get_or_init(|| {
        CARDS
            .iter()
            .filter_map(|(file, text)| match Card::parse(file, text) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!("{e}");
                    None
                }
            })
            .collect()
    })
}

pub fn find(name: &str) -> Option<&'static Card> {
    cards().iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_card_parses_and_is_consistent() {
        assert!(CARDS.len() >= 20, "only {} catalog cards", CARDS.len());
        let mut names = std::collections::HashSet::new();
        for (file, text) in CARDS {
            let c = Card::parse(file, text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&c.name, file, "card {file}.toml must be named after its file");
            assert!(names.insert(c.name.clone()), "duplicate {}", c.name);
        }
        for must in [
            "llama-3.1-8b",
            "llama-3.1-70b",
            "llama-3.1-405b",
            "llama-3.2-1b",
            "llama-3.2-3b",
            "llama-3.3-70b",
            "gpt-oss-20b",
            "gpt-oss-120b",
            "deepseek-v3",
            "mistral-large",
            // the small real models people start with (and the test model's card)
            "smollm2-135m",
            "smollm2-360m",
            "smollm2-1.7b",
            "gemma-3-270m",
            "gemma-3-1b",
            "qwen2.5-0.5b",
            "qwen2.5-1.5b",
        ] {
            assert!(names.contains(must), "catalog lacks {must}");
        }
        for family in ["qwen2.5-", "qwen3-", "gemma-3-", "deepseek-r1-distill-"] {
            assert!(names.iter().any(|n| n.starts_with(family)), "catalog lacks the {family} family");
        }
    }

    #[test]
    fn shapes_derive_placement_inputs() {
        let c = find("llama-3.1-8b").unwrap();
        let m = c.model_cost(None).unwrap();
        assert_eq!(m.n_layer, 32);
        let total = m.total_weight_bytes() as f64;
        let (_, q) = c.quant(None).unwrap();
        assert!((total / (q.size_gb.get().unwrap() * 1e9) - 1.0).abs() < 0.01);
    }

    #[test]
    fn inconsistent_cards_are_refused() {
        let (_, text) = CARDS.iter().find(|(f, _)| *f == "llama-3.1-8b").unwrap();
        for (from, to) in [
            ("default_quant = \"q4_k_m\"", "default_quant = \"q3\""),
            ("n_head_kv = 8", "n_head_kv = 7"),
            ("n_layer = 32", "n_layer = \"many\""),
            ("[shape]", "[shape]\nlayers = 3"),
        ] {
            assert!(text.contains(from), "fixture lacks {from}");
            assert!(Card::parse("x", &text.replacen(from, to, 1)).is_err(), "{to} accepted");
        }
        let problem = |from: &str, to: &str| Card::parse("x", &text.replacen(from, to, 1)).unwrap_err().problem;
        let e = problem("n_head_kv = 8", "n_head_kv = 7");
        assert!(matches!(e, CardProblem::KvHeads { n_head: 32, n_head_kv: 7 }), "{e}");
        assert!(matches!(problem("n_layer = 32", "n_layer = \"many\""), CardProblem::Toml(_)));
        let e = problem("default_quant = \"q4_k_m\"", "default_quant = \"q3\"");
        assert_eq!(e.to_string(), r#"default_quant "q3" is not one of the listed quantizations"#);
    }

    #[test]
    fn split_sets_are_checked() {
        let f = |v: &[&str]| check_files("q4", &v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(f(&["m.gguf"]).is_ok());
        assert!(f(&["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]).is_ok());
        assert!(matches!(f(&[]), Err(CardProblem::NoFiles { .. })));
        assert!(matches!(f(&["m.bin"]), Err(CardProblem::NotGguf { .. })));
        let e = f(&["m-00002-of-00002.gguf", "m-00001-of-00002.gguf"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"quant q4: split file "m-00002-of-00002.gguf" should end with "-00001-of-00002.gguf""#
        );
        assert_eq!(
            UnknownMarker::try_from("maybe".to_string()).unwrap_err().to_string(),
            r#"expected a value or "unknown", found "maybe""#
        );
    }
}
