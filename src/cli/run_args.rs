//! What `exo run` takes (the chat, the remote backend and the in-process one all read it).

use super::peer_args::PeerArgs;
use clap::Args;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A .gguf path, or the name of a GGUF in the models dirs.
    pub model: String,
    /// Answer this and exit; without it, read stdin (when piped) or chat interactively.
    pub prompt: Vec<String>,
    /// Force a placement: layer ranges run as in-process stages, e.g. 0:4,4:8.
    #[arg(long, env = "EXO_SPLIT")]
    pub split: Option<String>,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<i32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// Seed for sampling (default: random).
    #[arg(long)]
    pub seed: Option<u32>,
    /// Stop after this many tokens (default: until the model ends or the context is full).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(long)]
    pub ctx_size: Option<u32>,
    #[arg(long, env = "EXO_THREADS")]
    pub threads: Option<i32>,
    /// Batch-invariant kernels: a request's text never depends on what else is decoded beside it,
    /// and recovery after a node loss continues it byte for byte. Off by default (llama.cpp's
    /// fastest kernels: concurrent requests, prompt-cache hits and replays may drift from the
    /// solo text); costs up to 47% of decode speed (bench/results/exact.md).
    #[arg(long, env = "EXO_EXACT", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub exact: bool,
    /// Speculative decoding: `ngram` proposes tokens from the text so far (prompt lookup) and
    /// verifies several per step; a model's name: that small model (same vocabulary) proposes;
    /// `none` decodes one token per step; `auto` (default): `ngram` with --exact (the output is
    /// unchanged), `none` without.
    #[arg(long, env = "EXO_DRAFT", default_value = "auto", value_parser = super::parse_draft)]
    pub draft: super::DraftArg,
    /// Read weights with read() instead of mmap.
    #[arg(long)]
    pub no_mmap: bool,
    /// Keep generating past end-of-generation tokens (for benchmarks).
    #[arg(long, hide = true)]
    pub ignore_eos: bool,
    /// Do not apply the chat template to PROMPT.
    #[arg(long)]
    pub raw: bool,
    /// Print load time, placement and prompt/eval rates.
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub peer: PeerArgs,
}
