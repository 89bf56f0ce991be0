//! The cost model (documented in docs/placement.md):
//!
//! - time per token = Σ stages (layer bytes [+ output head + other tensors on the last stage]) ÷
//!   the node's decode GB/s, + Σ hops between consecutive stages and from the last back to the
//!   first (latency + bytes ÷ bandwidth; n_embd × 4 bytes forward, 8 bytes back). One stage has no
//!   hops. The token embedding costs memory on the first stage but no time (one row per token).
//! - a stage fits when weights + KV cache at the context + compute buffers ≤ the node's memory.
//! - compute buffers are estimated as 32 MiB + 4·n_ubatch·12·n_embd bytes, plus
//!   4·n_ubatch·n_vocab on the last stage (logits); llama.cpp reported 55 MiB for the 1B test model
//!   where this gives 82 MiB, so the estimate errs on the safe side.
//! - TTFT = Σ stages max(2·params·prompt ÷ prefill FLOP/s, weight bytes ÷ decode B/s) + forward
//!   hops carrying prompt × n_embd × 4 bytes: the whole prompt through each stage in turn (no
//!   overlap between stages), a conservative bound.

use super::types::{Cluster, ModelCost, Options, Plan, StagePlan};
use super::PlacementError;

/// Bytes on the wire per token: the hidden state forward, the token id (plus framing) back.
pub fn forward_bytes(m: &ModelCost) -> f64 {
    m.n_embd as f64 * 4.0 + 32.0
}
pub const BACK_BYTES: f64 = 8.0;

/// Weights, KV cache and compute bytes of layers [a, b) as one stage (first and/or last) at a
/// context of `ctx` tokens and micro-batches of `n_ubatch`: what a node checks before it loads a
/// stage for a peer, and what placement fits against nodes' memory.
pub fn stage_memory(
    m: &ModelCost,
    a: u32,
    b: u32,
    first: bool,
    last: bool,
    ctx: u32,
    n_ubatch: u32,
) -> (u64, u64, u64) {
    let mut w: u64 = m.layer_bytes[a as usize..b as usize].iter().sum();
    if first {
        w += m.embedding_bytes;
    }
    if last {
        // a tied head is the embedding: a separate last stage needs its own copy
        w += if m.tied_embeddings {
            if first {
                0
            } else {
                m.embedding_bytes
            }
        } else {
            m.output_bytes
        };
        w += m.other_bytes;
    }
    let kv = ctx as u64 * m.kv_bytes_per_token_per_layer * (b - a) as u64;
    let ub = n_ubatch as u64;
    let mut compute = (32 << 20) + 4 * ub * 12 * m.n_embd as u64;
    if last {
        compute += 4 * ub * m.n_vocab as u64;
    }
    (w, kv, compute)
}

/// Precomputed per-model, per-cluster numbers shared by evaluation and search.
pub(super) struct Ctx<'a> {
    pub m: &'a ModelCost,
    pub c: &'a Cluster,
    pub o: &'a Options,
    /// prefix sums of layer bytes
    pub prefix: Vec<u64>,
    /// links[from][to] = Some((latency, bandwidth))
    pub links: Vec<Vec<Option<(f64, f64)>>>,
}

impl<'a> Ctx<'a> {
    pub fn new(m: &'a ModelCost, c: &'a Cluster, o: &'a Options) -> Result<Ctx<'a>, PlacementError> {
        let mut prefix = vec![0u64; m.layer_bytes.len() + 1];
        for (i, b) in m.layer_bytes.iter().enumerate() {
            prefix[i + 1] = prefix[i] + b;
        }
        let n = c.nodes.len();
        let mut links = vec![vec![None; n]; n];
        let idx = |name: &str| {
            c.nodes
                .iter()
                .position(|x| x.name == name)
                .ok_or_else(|| PlacementError::UnknownNode { name: name.to_string() })
        };
        for l in &c.links {
            let (a, b) = (idx(&l.from)?, idx(&l.to)?);
            links[a][b] = Some((l.latency, l.bandwidth));
        }
        Ok(Ctx { m, c, o, prefix, links })
    }

    pub fn n_layer(&self) -> u32 {
        self.m.layer_bytes.len() as u32
    }

    pub fn layer_bytes(&self, a: u32, b: u32) -> u64 {
        self.prefix[b as usize] - self.prefix[a as usize]
    }

    pub fn hop(&self, from: usize, to: usize, bytes: f64) -> Option<f64> {
        if from == to {
            return Some(0.0); // two stages of one node: the bytes stay in memory
        }
        self.links[from][to].map(|(lat, bw)| lat + bytes / bw)
    }

    /// Weights, KV and compute bytes of layers [a, b) on one stage.
    pub fn memory(&self, a: u32, b: u32, first: bool, last: bool) -> (u64, u64, u64) {
        stage_memory(self.m, a, b, first, last, self.o.ctx, self.o.n_ubatch)
    }

    /// Seconds per decoded token for layers [a, b) on node `n`.
    pub fn time(&self, n: usize, a: u32, b: u32, last: bool) -> f64 {
        let mut bytes = self.layer_bytes(a, b) as f64;
        if last {
            bytes += (self.m.output_bytes + self.m.other_bytes) as f64;
        }
        bytes / (self.c.nodes[n].decode_gbps * 1e9)
    }

    pub fn fits(&self, n: usize, a: u32, b: u32, first: bool, last: bool) -> bool {
        let (w, kv, c) = self.memory(a, b, first, last);
        w + kv + c <= self.c.nodes[n].memory
    }

    /// Builds the full plan for stages (node index, begin, end), checking everything.
    pub fn evaluate(&self, stages: &[(usize, u32, u32)]) -> Result<Plan, PlacementError> {
        let n_layer = self.n_layer();
        let ranges = stages.iter().map(|&(_, begin, end)| crate::engine::LayerRange { begin, end });
        crate::engine::LayerRange::tiling(ranges, n_layer)
            .map_err(|e| PlacementError::BadStages { detail: e.to_string() })?;
        let k = stages.len();
        let fwd = forward_bytes(self.m);
        let mut out = Vec::with_capacity(k);
        let (mut total, mut net, mut ttft) = (0.0, 0.0, 0.0);
        let prompt = self.o.prompt_len as f64;
        // a node may host several stages (a forced placement): they share its memory
        let mut used = vec![0u64; self.c.nodes.len()];
        for (i, &(n, a, b)) in stages.iter().enumerate() {
            let (first, last) = (i == 0, i + 1 == k);
            let node = &self.c.nodes[n];
            let (w, kv, compute) = self.memory(a, b, first, last);
            let need = w + kv + compute;
            let offered = node.memory.saturating_sub(used[n]);
            if need > offered {
                return Err(PlacementError::StageTooBig {
                    node: node.name.clone(),
                    begin: a,
                    end: b,
                    needed: need,
                    offered,
                });
            }
            used[n] += need;
            let t = self.time(n, a, b, last);
            total += t;
            // prefill: FLOP-bound or bound by reading the weights once, whichever is slower
            let params = if self.m.n_params > 0 {
                self.m.n_params as f64 * (w as f64 / self.m.total_weight_bytes().max(1) as f64)
            } else {
                w as f64 // unknown: about one parameter per byte
            };
            let tflops = node.prefill_tflops.unwrap_or_else(|| node.backend.default_prefill_tflops());
            ttft += (2.0 * params * prompt / (tflops * 1e12)).max(w as f64 / (node.decode_gbps * 1e9));
            if !last {
                let next = stages[i + 1].0;
                let h = self.hop(n, next, fwd).ok_or_else(|| self.no_link(n, next))?;
                net += h;
                ttft += self.hop(n, next, fwd * prompt).unwrap_or(0.0);
            }
            out.push(StagePlan {
                node: node.name.clone(),
                begin: a,
                end: b,
                weight_bytes: w,
                kv_bytes: kv,
                compute_bytes: compute,
                memory_bytes: need,
                offered_bytes: offered,
                time_per_token: t,
            });
        }
        if k > 1 {
            let (l, f) = (stages[k - 1].0, stages[0].0);
            net += self.hop(l, f, BACK_BYTES).ok_or_else(|| self.no_link(l, f))?;
        }
        let time = total + net;
        Ok(Plan { stages: out, time_per_token: time, network_time_per_token: net, tokens_per_second: 1.0 / time, ttft })
    }

    fn no_link(&self, a: usize, b: usize) -> PlacementError {
        PlacementError::NoLink { from: self.c.nodes[a].name.clone(), to: self.c.nodes[b].name.clone() }
    }
}
