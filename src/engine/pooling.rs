//! How per-token embeddings (the last stage's rows after the output norm) become one vector per
//! input, and the normalization Ollama applies to it.
//!
//! The last stage only ever returns the sum of the rows a batch flags as outputs, so a pooled
//! input costs one row on the wire per batch: mean pooling flags every row (and divides by the
//! count here), CLS the first row of the input, last-token pooling its last row.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
    Last,
    /// A reranker's score head: not an embedding model.
    Rank,
}

impl Pooling {
    /// From GGUF `{arch}.pooling_type` (llama.cpp's `llama_pooling_type` values). A generative
    /// model has none (or `0`, none): it is pooled from its last token, as Ollama does (its
    /// llama.cpp runner falls back to the last token's embedding when the model has no pooling),
    /// since a causal model's last row is the only one that has read the whole input.
    pub fn from_gguf(v: Option<i64>) -> Pooling {
        match v {
            Some(1) => Pooling::Mean,
            Some(2) => Pooling::Cls,
            Some(4) => Pooling::Rank,
            _ => Pooling::Last,
        }
    }

    /// Which of the `n` rows of an input (positions 0..n) the last stage must add up.
    pub fn wants_row(self, i: usize, n: usize) -> bool {
        match self {
            Pooling::Mean => true,
            Pooling::Cls => i == 0,
            Pooling::Last | Pooling::Rank => i + 1 == n,
        }
    }

    /// The pooled vector from the sum of the wanted rows of an input of `n` tokens.
    pub fn finish(self, sum: Vec<f64>, n: usize) -> Vec<f64> {
        match self {
            Pooling::Mean => {
                let d = n.max(1) as f64;
                sum.into_iter().map(|x| x / d).collect()
            }
            _ => sum,
        }
    }
}

/// Keeps the first `dims` components (Matryoshka truncation) and scales to unit L2 norm, as
/// Ollama does (`normalize` in its server); an all-zero vector stays zero.
pub fn normalize(v: &[f64], dims: usize) -> Vec<f32> {
    let v = &v[..dims.min(v.len())];
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    v.iter().map(|x| (x * scale) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_values_and_rows() {
        assert_eq!(Pooling::from_gguf(None), Pooling::Last);
        assert_eq!(Pooling::from_gguf(Some(0)), Pooling::Last);
        assert_eq!(Pooling::from_gguf(Some(1)), Pooling::Mean);
        assert_eq!(Pooling::from_gguf(Some(2)), Pooling::Cls);
        assert_eq!(Pooling::from_gguf(Some(3)), Pooling::Last);
        assert_eq!(Pooling::from_gguf(Some(4)), Pooling::Rank);
        assert!((0..5).all(|i| Pooling::Mean.wants_row(i, 5)));
        assert_eq!((0..5).filter(|&i| Pooling::Last.wants_row(i, 5)).collect::<Vec<_>>(), [4]);
        assert_eq!((0..5).filter(|&i| Pooling::Cls.wants_row(i, 5)).collect::<Vec<_>>(), [0]);
        assert_eq!(Pooling::Mean.finish(vec![2.0, 4.0], 2), [1.0, 2.0]);
        assert_eq!(Pooling::Last.finish(vec![2.0, 4.0], 2), [2.0, 4.0]);
    }

    #[test]
    fn normalize_truncates_and_has_unit_norm() {
        assert_eq!(normalize(&[3.0, 4.0], 2), [0.6, 0.8]);
        assert_eq!(normalize(&[3.0, 4.0, 12.0], 1), [1.0]);
        assert_eq!(normalize(&[0.0, 0.0], 2), [0.0, 0.0]);
        let v = normalize(&[1.0, -2.0, 0.5, 7.0], 4);
        let n: f32 = v.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-6);
    }
}
