//! A stage context: RAII over `llama_context` for one model window, with decode, hidden-state
//! output, logits and the KV operations every stage applies identically.

use super::batch::RawBatch;
use super::model::Model;
use super::{ffi, log, EngineError};
use llama_cpp_sys_2 as sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextParams {
    pub n_ctx: u32,
    /// Largest batch one decode call accepts.
    pub n_batch: u32,
    /// Micro-batch llama.cpp computes at once.
    pub n_ubatch: u32,
    pub n_threads: i32,
    /// Sequences that can be decoded side by side.
    pub n_seq_max: u32,
    /// Batch-invariant execution: a token's hidden state and logits are bit-identical whether it
    /// is decoded alone, beside other sequences, in a prefill chunk of any size or in a replay.
    /// On the CPU: ggml's reference kernels (one accumulation order per output element whatever
    /// the number of rows), no repacked weights, one KV stream per sequence (its cells in
    /// position order, so attention sums them in one order), full-size sliding-window caches
    /// and flash attention (which skips masked cells instead of adding their zeros). Off by
    /// default: it costs up to 47% of decode and 53% of prefill speed (bench/results/exact.md).
    pub exact: bool,
}

impl Default for ContextParams {
    fn default() -> Self {
        ContextParams {
            n_ctx: 4096,
            n_batch: 512,
            n_ubatch: 512,
            n_threads: default_threads(),
            n_seq_max: 4,
            exact: false,
        }
    }
}

/// Physical cores are what llama.cpp's matmuls scale with; hyperthreads add little.
pub fn default_threads() -> i32 {
    std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(4).clamp(1, 64)
}

pub(super) struct Context {
    pub ptr: *mut sys::llama_context,
    /// This stage's own CPU threads, paused between decodes (see [`ThreadPool`]).
    pool: Option<ThreadPool>,
    offloaded: bool,
    n_threads: usize,
}

/// A ggml CPU threadpool owned by one context. Without it ggml starts and joins fresh threads
/// for every graph, which the OS scheduler places badly when several stages share a machine
/// (up to 2x slower with 4 stages on 2 cores); a pool that is paused while its stage waits keeps
/// its threads placed and costs nothing while another stage computes. (With the `openmp`
/// feature ggml uses OpenMP's threads instead and the pool only carries the settings.)
struct ThreadPool {
    ptr: *mut sys::ggml_threadpool,
}

impl ThreadPool {
    fn new(n_threads: i32) -> Option<ThreadPool> {
        // SAFETY: plain struct of defaults for n_threads.
        let mut params = unsafe { sys::ggml_threadpool_params_default(n_threads) };
        params.paused = true;
        // SAFETY: params is a valid, initialized struct; NULL on failure.
        let ptr = unsafe { sys::ggml_threadpool_new(&mut params) };
        (!ptr.is_null()).then_some(ThreadPool { ptr })
    }

    /// Puts the workers to sleep until the next graph is kicked off (which resumes them).
    fn pause(&self) {
        // SAFETY: live pool, only used from the owning stage thread.
        unsafe { sys::ggml_threadpool_pause(self.ptr) }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // SAFETY: created by ggml_threadpool_new, freed once, after the context that used it.
        unsafe { sys::ggml_threadpool_free(self.ptr) }
    }
}

// SAFETY: owned by exactly one stage thread.
unsafe impl Send for Context {}

impl Context {
    /// `offloaded`: the layers compute on a GPU, so decodes do not draw on the CPU budget.
    pub fn new(model: &Model, p: ContextParams, offloaded: bool) -> Result<Context, EngineError> {
        // SAFETY: plain struct of defaults.
        let mut cp = unsafe { sys::llama_context_default_params() };
        cp.n_ctx = p.n_ctx;
        cp.n_batch = p.n_batch;
        cp.n_ubatch = p.n_ubatch.min(p.n_batch);
        cp.n_seq_max = p.n_seq_max;
        cp.n_threads = p.n_threads;
        cp.n_threads_batch = p.n_threads;
        if p.exact {
            // a stream per sequence: its cells hold its positions in order, whoever else shares
            // the context (a unified pool interleaves sequences, and reuses freed cells out of
            // order); sliding-window layers keep every cell (a ring buffer would reorder them)
            cp.kv_unified = false;
            cp.swa_full = true;
            if !offloaded {
                cp.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_ENABLED;
            }
        } else {
            // one KV pool shared by all sequences, as a server wants
            cp.kv_unified = true;
        }
        // embeddings (switched on per batch, see `set_embeddings`) come back per token; the
        // pooling happens in `pooling`, across batches, whatever the model's own pooling type
        cp.pooling_type = sys::LLAMA_POOLING_TYPE_NONE;
        cp.no_perf = true;
        log::clear_errors();
        // SAFETY: model.ptr is a live model that outlives the context (the stage drops the context first).
        let ptr = unsafe { sys::llama_init_from_model(model.ptr, cp) };
        if ptr.is_null() {
            return Err(EngineError::Context {
                begin: model.range.begin,
                end: model.range.end,
                reason: log::take_errors(),
            });
        }
        if p.exact {
            // SAFETY: live context; only flips a flag of its CPU backends, read at the next compute.
            unsafe { ffi::llama_shard_set_exact(ptr, true) };
        }
        let pool = ThreadPool::new(p.n_threads.max(1));
        if let Some(pool) = &pool {
            // SAFETY: live context and pool; the pool outlives the context (Drop frees the
            // context first).
            unsafe { sys::llama_attach_threadpool(ptr, pool.ptr, pool.ptr) };
        }
        Ok(Context { ptr, pool, offloaded, n_threads: p.n_threads.max(1) as usize })
    }

    pub fn n_ctx(&self) -> u32 {
        // SAFETY: live context.
        unsafe { sys::llama_n_ctx(self.ptr) }
    }

    pub fn decode(&mut self, batch: &RawBatch, model: &Model) -> Result<(), EngineError> {
        log::clear_errors();
        let code = {
            let _cores = (!self.offloaded).then(|| super::cpu_budget::CpuBudget::global().acquire(self.n_threads));
            // SAFETY: live context; the batch is valid for the duration of the call.
            let code = unsafe { sys::llama_decode(self.ptr, batch.0) };
            if let Some(pool) = &self.pool {
                pool.pause();
            }
            code
        };
        if code != 0 {
            let reason = log::take_errors();
            if code == 1 {
                return Err(EngineError::ContextFull { needed: batch.0.n_tokens as u32, n_ctx: self.n_ctx() });
            }
            return Err(EngineError::Decode { begin: model.range.begin, end: model.range.end, code, reason });
        }
        Ok(())
    }

    /// Residual rows after the last decode (non-last stages), `n_tokens * n_embd` floats.
    pub fn hidden_output(&self, n_embd: usize) -> Option<&[f32]> {
        let mut n = 0i32;
        // SAFETY: live context; the pointer stays valid until the next decode, and the returned
        // slice borrows self, so no decode can happen while it is alive.
        let p = unsafe { ffi::llama_shard_get_output(self.ptr, &mut n) };
        // SAFETY: llama.cpp guarantees n rows of n_embd floats at p.
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p, n as usize * n_embd) })
    }

    /// Logits of batch row `i` of the last decode (last stage), if that row was an output.
    pub fn logits(&self, i: usize, n_vocab: usize) -> Option<&[f32]> {
        // SAFETY: live context; returns NULL for rows that were not outputs (after logging).
        let p = unsafe { sys::llama_get_logits_ith(self.ptr, i as i32) };
        // SAFETY: n_vocab floats at p, valid until the next decode (borrow of self).
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p, n_vocab) })
    }

    /// While on, decodes output every row's final hidden state (after the output norm) as well
    /// as logits. Only the last stage has them; switched on for one embedding batch at a time,
    /// on the stage thread, so no generation batch ever sees it on.
    pub fn set_embeddings(&mut self, on: bool) {
        // SAFETY: live context; the flag is read by the next decode only.
        unsafe { sys::llama_set_embeddings(self.ptr, on) }
    }

    /// The embedding of batch row `i` of the last decode (made with embeddings on).
    pub fn embeddings(&self, i: usize, n_embd_out: usize) -> Option<&[f32]> {
        // SAFETY: live context; returns NULL (after logging) for rows without an embedding.
        let p = unsafe { sys::llama_get_embeddings_ith(self.ptr, i as i32) };
        // SAFETY: n_embd_out floats at p, valid until the next decode (borrow of self).
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p, n_embd_out) })
    }

    fn memory(&self) -> sys::llama_memory_t {
        // SAFETY: live context.
        unsafe { sys::llama_get_memory(self.ptr) }
    }

    /// Removes positions `[p0, p1)` of `seq` (-1: all sequences / to the end). False if the
    /// memory cannot remove a partial range (recurrent state).
    pub fn seq_rm(&mut self, seq: i32, p0: i32, p1: i32) -> bool {
        // SAFETY: live memory handle.
        unsafe { sys::llama_memory_seq_rm(self.memory(), seq, p0, p1) }
    }

    pub fn clear(&mut self) {
        // SAFETY: live memory handle; `true` also clears the data buffers.
        unsafe { sys::llama_memory_clear(self.memory(), true) }
    }

    /// Largest position stored for `seq`, or -1 when empty.
    pub fn seq_pos_max(&self, seq: i32) -> i32 {
        // SAFETY: live memory handle.
        unsafe { sys::llama_memory_seq_pos_max(self.memory(), seq) }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: created by llama_init_from_model, freed once, before its model.
        unsafe { sys::llama_free(self.ptr) }
        // the pool (a field) is dropped after this, once the context no longer uses it
    }
}
