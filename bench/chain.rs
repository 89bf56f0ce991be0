//! Decode tok/s of one stage vs 2- and 4-stage in-process chains on the TinyLlama-shaped ~1 GB
//! generated model. Configurations are interleaved within each repetition so that machine noise
//! hits all of them alike; medians and ratios to one stage are printed as a markdown table.
//!
//! `cargo bench --bench chain` (env: BENCH_REPS=5, BENCH_TOKENS=64, BENCH_THREADS=<cores>,
//! BENCH_MODEL=<path>, default target/bench-models/tinyllama-1b.gguf, generated when missing).

#[path = "common.rs"]
mod common;

use common::*;

use exo::engine::{ContextParams, LayerRange, SamplingParams};
use exo::pipeline::{generate, Chain, GenerateRequest};
use std::ops::ControlFlow;

fn ranges(cuts: &[u32]) -> Vec<LayerRange> {
    cuts.windows(2).map(|w| LayerRange { begin: w[0], end: w[1] }).collect()
}

async fn decode_rate(chain: &Chain, prompt: &[i32], tokens: u32) -> (f64, Vec<i32>) {
    chain.clear().await.unwrap();
    let mut out = Vec::new();
    let req = GenerateRequest {
        prompt: prompt.to_vec(),
        past: vec![],
        seq: 0,
        sampling: SamplingParams::greedy(),
        max_tokens: Some(tokens),
        ignore_eos: true,
        draft_window: 0,
    };
    let stats = generate(chain, req, |tok| {
        out.push(tok);
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    // the first token comes from the prefill; the rest are decode steps
    ((stats.generated_tokens - 1) as f64 / stats.eval_duration.as_secs_f64(), out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let reps: usize = env_or("BENCH_REPS", 5);
    let tokens: u32 = env_or("BENCH_TOKENS", 64);
    let threads: i32 =
        env_or("BENCH_THREADS", std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2));
    let model = bench_model();
    let size = std::fs::metadata(&model).unwrap().len();
    let ctx = ContextParams { n_ctx: 512, n_batch: 512, n_ubatch: 512, n_threads: threads, n_seq_max: 1, exact: false };
    let configs: Vec<(&str, Option<Vec<LayerRange>>)> = vec![
        ("1 stage", None),
        ("2 stages", Some(ranges(&[0, 11, 22]))),
        ("4 stages", Some(ranges(&[0, 6, 11, 17, 22]))),
    ];
    let chains: Vec<Chain> =
        configs.iter().map(|(_, r)| Chain::load(&model, r.as_deref(), ctx, true).unwrap()).collect();
    let prompt = chains[0]
        .first()
        .tokenize("Once upon a time there was a little model that wanted to run on every machine.", true, false)
        .await
        .unwrap();

    // warm-up: page the weights in, settle the allocators
    for c in &chains {
        decode_rate(c, &prompt, 8).await;
    }
    let mut rates = vec![Vec::new(); chains.len()];
    let mut reference = None;
    for rep in 0..reps {
        for (i, c) in chains.iter().enumerate() {
            let (r, out) = decode_rate(c, &prompt, tokens).await;
            // every configuration must produce the same tokens
            match &reference {
                None => reference = Some(out),
                Some(want) => assert_eq!(&out, want, "{} produced different tokens", configs[i].0),
            }
            rates[i].push(r);
            eprintln!("rep {rep} {}: {r:.2} tok/s", configs[i].0);
        }
    }
    let base = median(rates[0].clone());
    println!(
        "model: {} ({:.2} GB), {tokens} decode tokens after a {}-token prompt, {threads} threads, median of {reps}",
        model.display(),
        size as f64 / 1e9,
        prompt.len()
    );
    println!();
    println!("| configuration | decode tok/s (median) | runs | ratio to 1 stage |");
    println!("|---|---|---|---|");
    for (i, (name, _)) in configs.iter().enumerate() {
        let m = median(rates[i].clone());
        let runs: Vec<String> = rates[i].iter().map(|r| format!("{r:.2}")).collect();
        println!("| {name} | {m:.2} | {} | {:.3} |", runs.join(", "), m / base);
    }
}
