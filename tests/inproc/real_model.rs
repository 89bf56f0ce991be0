//! The real model (SmolLM2-135M-Instruct Q4_1, see tests/common/real.rs) split into in-process
//! stages: 2, 3 and 5 stages behave exactly like the whole model (the scripted workload: logits
//! within 1e-5, greedy and seeded tokens identical), its own chat template through llama.cpp, a
//! real answer, a long prompt over many chunks, and `exo run` byte-identical with and without
//! `--split`. Skipped with a printed reason when the model is absent, except under CI.

use crate::common;

use common::real;
use common::workload::{self, Trace};
use exo::engine::{ContextParams, LayerRange, SamplingParams, TemplateMessage, TokenDecoder};
use exo::pipeline::{generate, Chain, DoneReason, GenerateRequest};
use std::ops::ControlFlow;

const TOL: f32 = 1e-5;
const GEN: u32 = 48;

/// 30 layers cut into 2, 3 and 5 stages (uneven on purpose in the last one).
const SPLITS: &[&[(u32, u32)]] =
    &[&[(0, 15), (15, 30)], &[(0, 10), (10, 20), (20, 30)], &[(0, 1), (1, 8), (8, 16), (16, 29), (29, 30)]];

fn ranges(split: &[(u32, u32)]) -> Vec<LayerRange> {
    split.iter().map(|&(begin, end)| LayerRange { begin, end }).collect()
}

fn ctx() -> ContextParams {
    ContextParams { n_ctx: 2048, n_batch: 512, n_ubatch: 8, n_threads: 2, n_seq_max: 2, exact: false }
}

#[tokio::test]
async fn stages_match_the_whole_model() {
    let Some(path) = real::model() else { return };
    let reference = workload::run(&Chain::load(&path, None, ctx(), true).unwrap(), GEN).await;
    let scale = reference.scale();
    assert!(scale > 1.0, "logits are nearly zero ({scale})");
    for split in SPLITS {
        let chain = Chain::load(&path, Some(&ranges(split)), ctx(), true).unwrap();
        let t = workload::run(&chain, GEN).await;
        let d = t.max_abs_diff(&reference);
        println!("real model {split:?}: {} logit rows, max|dlogit| = {d:e} (max|logit| {scale:.2})", t.logits.len());
        assert!(d <= TOL, "{split:?}: max|dlogit| = {d}");
        assert_eq!(t.greedy, reference.greedy, "{split:?}: greedy tokens differ");
        assert_eq!(t.sampled, reference.sampled, "{split:?}: sampled tokens differ");
    }
}

/// Greedy answer (until end of generation) to `messages` formatted with the model's template.
async fn answer(chain: &Chain, messages: Vec<TemplateMessage>, max_tokens: u32) -> (String, DoneReason) {
    let first = chain.first();
    let text = first.apply_template(messages, true).await.unwrap();
    let prompt = first.tokenize(&text, true, true).await.unwrap();
    let mut out = Vec::new();
    let req = GenerateRequest {
        prompt,
        past: vec![],
        seq: 0,
        sampling: SamplingParams::greedy(),
        max_tokens: Some(max_tokens),
        ignore_eos: false,
        draft_window: 0,
    };
    let stats = generate(chain, req, |t| {
        out.push(t);
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    chain.clear().await.unwrap();
    let mut dec = TokenDecoder::new();
    let text: String = first.token_bytes(out, false).await.unwrap().iter().map(|b| dec.push(b)).collect();
    (text, stats.done_reason)
}

fn msg(role: &str, content: &str) -> TemplateMessage {
    TemplateMessage::new(role, content)
}

#[tokio::test]
async fn its_chat_template_and_a_real_answer() {
    let Some(path) = real::model() else { return };
    let whole = Chain::load(&path, None, ctx(), true).unwrap();
    let info = whole.info().clone();
    let template = info.chat_template.clone().expect("the GGUF has a chat template");
    assert!(template.contains("<|im_start|>"), "{template}");
    let conversation =
        vec![msg("system", "You are a helpful assistant."), msg("user", "What is the capital of France?")];
    let text = whole.first().apply_template(conversation.clone(), true).await.unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of \
         France?<|im_end|>\n<|im_start|>assistant\n"
    );
    // the markers are single special tokens, and <|im_end|> ends generation
    let toks = whole.first().tokenize("<|im_start|>user<|im_end|>", false, true).await.unwrap();
    assert_eq!(toks.len(), 3, "{toks:?}");
    assert!(info.is_eog(toks[2]), "<|im_end|> ({}) is not an end-of-generation token", toks[2]);

    let (reply, done) = answer(&whole, conversation.clone(), 64).await;
    println!("real model answers: {reply:?}");
    assert!(reply.contains("Paris"), "{reply:?}");
    assert_eq!(done, DoneReason::Stop, "the answer should end at <|im_end|>: {reply:?}");
    // the same text through 3 stages
    let staged = Chain::load(&path, Some(&ranges(SPLITS[1])), ctx(), true).unwrap();
    assert_eq!(answer(&staged, conversation, 64).await, (reply, done));
}

/// Prefills `text` chunk by chunk (the logits of each chunk's last row), then 32 greedy tokens.
async fn prefill_and_generate(chain: Chain, text: &str) -> (usize, Trace) {
    let toks = chain.first().tokenize(text, true, false).await.unwrap();
    let mut last = Vec::new();
    for (i, c) in toks.chunks(512).enumerate() {
        let n = c.len();
        let pos = (i * 512..i * 512 + n).map(|p| p as i32).collect();
        let mut output = vec![false; n];
        output[n - 1] = true;
        let (logits, _) = chain.decode(c.to_vec(), pos, vec![0; n], output, true, false).await.unwrap();
        last.extend(logits);
    }
    let tail = workload::gen(&chain, &toks, SamplingParams::greedy(), 32).await;
    (toks.len(), Trace { logits: last, greedy: tail, sampled: vec![] })
}

/// A prompt of more than 1,000 tokens prefilled in 512-token chunks (the last one partial):
/// the logits of each chunk's last row and 32 greedy tokens are the whole model's on 5 stages.
#[tokio::test]
async fn a_long_prompt_over_many_chunks() {
    let Some(path) = real::model() else { return };
    let ctx = ContextParams { n_ctx: 4096, n_batch: 512, n_ubatch: 512, n_threads: 2, n_seq_max: 1, exact: false };
    let mut text = String::new();
    for i in 0..48 {
        text.push_str(&format!(
            "Entry {i}: the lighthouse keeper on island number {i} counted {} ships and wrote it down. ",
            i * 7 % 31
        ));
    }
    text.push_str("Question: what did the lighthouse keepers write down? Answer:");
    let (n, reference) = prefill_and_generate(Chain::load(&path, None, ctx, true).unwrap(), &text).await;
    assert!(n > 1024 && n % 512 != 0, "{n} prompt tokens");
    for split in [SPLITS[2]] {
        let (_, t) = prefill_and_generate(Chain::load(&path, Some(&ranges(split)), ctx, true).unwrap(), &text).await;
        let d = t.max_abs_diff(&reference);
        println!("long prompt ({n} tokens) {split:?}: max|dlogit| = {d:e}");
        assert!(d <= TOL, "{split:?}: {d}");
        assert_eq!(t.greedy, reference.greedy, "{split:?}");
    }
}

/// The catalog card for the model agrees with the model's own header, so placement sees the
/// same shape before and after a download, and the card names this very file.
#[test]
fn its_catalog_card_matches_its_header() {
    let Some(path) = real::model() else { return };
    let card = exo::store::catalog::find(real::CATALOG_NAME).expect("catalog card");
    let (_, q) = card.quant(None).unwrap();
    assert_eq!(q.files.get().unwrap(), &vec![real::FILE.to_string()]);
    let size = std::fs::metadata(&path).unwrap().len() as f64;
    assert!((q.size_gb.get().unwrap() * 1e9 / size - 1.0).abs() < 0.01, "size {size}");
    let files = exo::gguf::ModelFiles::open(&path).unwrap();
    let shape = exo::gguf::ModelShape::from_files(&files).unwrap();
    let s = &card.shape;
    assert_eq!(s.architecture, shape.architecture);
    assert_eq!(s.n_layer.get(), Some(&shape.n_layer));
    assert_eq!(s.n_embd.get(), Some(&shape.n_embd));
    assert_eq!(s.n_head.get(), Some(&shape.n_head));
    assert_eq!(s.n_head_kv.get(), Some(&shape.n_head_kv));
    assert_eq!(s.head_dim.get(), Some(&shape.head_dim_k));
    assert_eq!(s.vocab_size.get(), Some(&shape.vocab_size));
    assert_eq!(s.context_length.get(), Some(&shape.context_length));
    assert_eq!(s.tied_embeddings.get(), Some(&shape.tied_embeddings));
    assert_eq!(card.model_cost(None).unwrap().n_layer, shape.n_layer);
}

/// `exo run` on the real model prints the same bytes with and without `--split`, greedy and
/// seeded, and greedy it answers the question.
#[test]
fn exo_run_split_output_equals_unsplit() {
    let Some(path) = real::model() else { return };
    let m = path.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", m, "What is the capital of France?", "--max-tokens", "40", "--threads", "2"];
        args.extend_from_slice(extra);
        let out = common::exo(&args);
        assert!(out.status.success(), "exo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    for sampling in [&["--temperature", "0"][..], &["--seed", "7", "--temperature", "0.9"][..]] {
        let whole = run(sampling);
        if sampling[1] == "0" {
            assert!(whole.contains("Paris"), "{whole:?}");
        }
        for split in ["0:15,15:30", "0:10,10:20,20:30", "0:1,1:8,8:16,16:29,29:30"] {
            let mut args = sampling.to_vec();
            args.extend_from_slice(&["--split", split]);
            assert_eq!(run(&args), whole, "{sampling:?} --split {split}");
        }
    }
}
