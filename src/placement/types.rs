//! Plain data in and out of placement.

use serde::Serialize;

/// What placement needs to know about a model (from its GGUF header or a catalog card).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCost {
    pub name: String,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_vocab: u32,
    /// Weight bytes of each decoder layer.
    pub layer_bytes: Vec<u64>,
    /// Token embedding (first stage; read one row per token, so almost no time).
    pub embedding_bytes: u64,
    /// Output head (last stage; read whole every token). Equals the embedding when tied.
    pub output_bytes: u64,
    pub tied_embeddings: bool,
    /// Other tensors outside the layers (output norm, rope factors): last stage.
    pub other_bytes: u64,
    /// KV cache bytes per token per layer (f16 cache).
    pub kv_bytes_per_token_per_layer: u64,
    /// Parameter count (for prefill FLOPs); 0 if unknown.
    pub n_params: u64,
}

impl ModelCost {
    pub fn from_shape(name: &str, s: &crate::gguf::ModelShape) -> ModelCost {
        ModelCost {
            name: name.to_string(),
            n_layer: s.n_layer,
            n_embd: s.n_embd,
            n_head: s.n_head,
            n_vocab: s.vocab_size,
            layer_bytes: s.layer_bytes.clone(),
            embedding_bytes: s.embedding_bytes,
            output_bytes: s.output_bytes,
            tied_embeddings: s.tied_embeddings,
            other_bytes: s.other_bytes,
            kv_bytes_per_token_per_layer: s.kv_bytes_per_token_per_layer(),
            n_params: s.n_params,
        }
    }

    pub fn total_weight_bytes(&self) -> u64 {
        let head = if self.tied_embeddings { 0 } else { self.output_bytes };
        self.layer_bytes.iter().sum::<u64>() + self.embedding_bytes + head + self.other_bytes
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
    Metal,
    Vulkan,
}

impl Backend {
    /// Prompt-processing speed assumed when a node has no measured one (TFLOP/s, rough, documented
    /// in docs/placement.md): CPUs are slow at it, GPUs fast.
    pub fn default_prefill_tflops(self) -> f64 {
        match self {
            Backend::Cpu => 0.5,
            Backend::Cuda => 50.0,
            Backend::Metal => 10.0,
            Backend::Vulkan => 5.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    /// Bytes this node offers.
    pub memory: u64,
    pub backend: Backend,
    /// Measured decode speed: GB (1e9 bytes) of weights processed per second.
    pub decode_gbps: f64,
    pub prefill_tflops: Option<f64>,
}

/// A directed link; a pair without a link cannot be adjacent in a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSpec {
    pub from: String,
    pub to: String,
    /// Bytes per second.
    pub bandwidth: f64,
    /// Seconds.
    pub latency: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    pub nodes: Vec<NodeSpec>,
    pub links: Vec<LinkSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Context length the KV cache is sized for.
    pub ctx: u32,
    /// Prompt length for the TTFT prediction.
    pub prompt_len: u32,
    /// Micro-batch size (sizes the compute buffers).
    pub n_ubatch: u32,
    /// Nodes that must take part.
    pub required: Vec<String>,
    pub max_stages: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options { ctx: 4096, prompt_len: 512, n_ubatch: 512, required: vec![], max_stages: None }
    }
}

/// One stage of a placement with its memory and time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StagePlan {
    pub node: String,
    pub begin: u32,
    pub end: u32,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    pub compute_bytes: u64,
    pub memory_bytes: u64,
    pub offered_bytes: u64,
    /// Seconds of compute per decoded token on this stage.
    pub time_per_token: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
    /// Seconds per decoded token: compute of every stage plus every hop, including the one from
    /// the last stage back to the first.
    pub time_per_token: f64,
    /// Seconds spent on links per token.
    pub network_time_per_token: f64,
    pub tokens_per_second: f64,
    /// Predicted time to first token for `Options::prompt_len`.
    pub ttft: f64,
}
