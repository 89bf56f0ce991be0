//! The batcher against a scripted pipeline ([`FakePipe`]): admission, the prefix cache,
//! cancellation, recovery and replay, each in milliseconds and without a model.

use super::*;
use crate::runtime::fake_pipe::FakePipe;
use std::sync::RwLock;
use tokio::sync::mpsc::UnboundedReceiver;

struct Rig {
    tx: mpsc::Sender<SeqRequest>,
    counts: Arc<Counts>,
    pipe: SharedPipe,
}

fn rig(n_seq: u32, n_batch: u32, first: Arc<FakePipe>, healer: Option<Healer>) -> Rig {
    let cfg = Config { n_seq, n_batch, n_ctx_seq: 256, depth: 2, spec: super::SpecConfig::OFF };
    let pipe: SharedPipe = Arc::new(RwLock::new(first as Arc<dyn Pipe>));
    let counts = Arc::new(Counts::default());
    let (tx, rx) = mpsc::channel(64);
    let shared = Shared {
        pipe: pipe.clone(),
        counts: counts.clone(),
        shutdown: Arc::new(AtomicBool::new(false)),
        broken: Arc::new(AtomicBool::new(false)),
        healer,
        draft: None,
    };
    tokio::spawn(run(cfg, rx, shared));
    Rig { tx, counts, pipe }
}

impl Rig {
    /// Queues a generation as the instance does (counted as waiting first).
    async fn send(&self, prompt: Vec<Token>, seed: Option<u32>, max_tokens: u32) -> UnboundedReceiver<SeqEvent> {
        let (events, rx) = mpsc::unbounded_channel();
        let sampling = SamplingParams {
            temperature: if seed.is_some() { 0.8 } else { 0.0 },
            seed: seed.unwrap_or(0),
            ..SamplingParams::default()
        };
        let req = SeqRequest { prompt, sampling, max_tokens, ignore_eos: false, lease: false, events };
        self.counts.waiting.fetch_add(1, Ordering::SeqCst);
        self.tx.send(req).await.unwrap();
        rx
    }

    fn fake(&self) -> Arc<dyn Pipe> {
        self.pipe.read().unwrap().clone()
    }
}

/// (cached prompt tokens, generated tokens) of a generation that ran to its length.
async fn finish(mut rx: UnboundedReceiver<SeqEvent>) -> (usize, Vec<Token>) {
    let (mut cached, mut out) = (usize::MAX, Vec::new());
    let limit = std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout(limit, rx.recv()).await.expect("the batcher answers") {
            Some(SeqEvent::Started { cached: c }) => cached = c,
            Some(SeqEvent::Token(t)) => out.push(t),
            Some(SeqEvent::Done { length }) => {
                assert!(length, "ended by its length");
                return (cached, out);
            }
            Some(SeqEvent::Failed(e)) => panic!("failed: {e}"),
            Some(SeqEvent::Leased { .. }) | None => panic!("no end"),
        }
    }
}

fn prompt(seed: u64, n: usize) -> Vec<Token> {
    (0..n as u64).map(|i| 3 + ((seed * 31 + i * 17) % 200) as Token).collect()
}

fn no_violations(p: &FakePipe) {
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test]
async fn batched_sequences_get_their_solo_text_greedy_and_seeded() {
    let fake = Arc::new(FakePipe::new(1024, None));
    let r = rig(4, 5, fake.clone(), None);
    let cases: Vec<(Vec<Token>, Option<u32>)> =
        vec![(prompt(1, 3), None), (prompt(2, 11), Some(7)), (prompt(3, 17), None), (prompt(4, 1), Some(9))];
    let mut rxs = Vec::new();
    for (p, seed) in &cases {
        rxs.push(r.send(p.clone(), *seed, 12).await);
    }
    for ((p, seed), rx) in cases.iter().zip(rxs) {
        let (cached, got) = finish(rx).await;
        assert_eq!(cached, 0);
        assert_eq!(got, FakePipe::alone(p, *seed, 12), "prompt of {}", p.len());
    }
    no_violations(&fake);
    assert_eq!(r.counts.active.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn requests_beyond_the_slots_wait_their_turn() {
    let fake = Arc::new(FakePipe::new(1024, None));
    let r = rig(2, 8, fake.clone(), None);
    let mut rxs = Vec::new();
    for i in 0..6 {
        rxs.push((i, r.send(prompt(i, 4 + i as usize), Some(i as u32), 6).await));
    }
    for (i, rx) in rxs {
        assert_eq!(finish(rx).await.1, FakePipe::alone(&prompt(i, 4 + i as usize), Some(i as u32), 6));
    }
    no_violations(&fake);
    assert_eq!(r.counts.waiting.load(Ordering::SeqCst) + r.counts.active.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_shared_prefix_is_taken_from_the_finished_sequence_cache() {
    let fake = Arc::new(FakePipe::new(1024, None));
    let r = rig(1, 4, fake.clone(), None);
    let first = prompt(5, 10);
    let (cached, out) = finish(r.send(first.clone(), None, 4).await).await;
    assert_eq!((cached, out.clone()), (0, FakePipe::alone(&first, None, 4)));
    // the first 7 tokens again, then something else: 7 reused, the rest trimmed and decoded
    let second: Vec<Token> = first[..7].iter().copied().chain([99, 100]).collect();
    let (cached, got) = finish(r.send(second.clone(), None, 4).await).await;
    assert_eq!((cached, got), (7, FakePipe::alone(&second, None, 4)));
    // a conversation's next turn: the whole earlier prompt and answer are reused
    let turn: Vec<Token> = second.iter().chain(&FakePipe::alone(&second, None, 4)).copied().chain([42]).collect();
    let (cached, got) = finish(r.send(turn.clone(), Some(3), 5).await).await;
    assert!(cached >= second.len() + 3, "{cached} of {}", turn.len());
    assert_eq!(got, FakePipe::alone(&turn, Some(3), 5));
    no_violations(&fake);
}

#[tokio::test]
async fn a_caller_that_leaves_frees_its_slot_and_kv() {
    let fake = Arc::new(FakePipe::new(1024, None));
    let r = rig(1, 4, fake.clone(), None);
    let mut rx = r.send(prompt(6, 5), None, 200).await;
    let mut seen = 0;
    while seen < 3 {
        if let Some(SeqEvent::Token(_)) = rx.recv().await {
            seen += 1;
        }
    }
    drop(rx);
    // the one slot goes to the next request, which gets its solo text
    let other = prompt(8, 6);
    let (cached, got) = finish(r.send(other.clone(), Some(1), 8).await).await;
    assert_eq!((cached, got), (0, FakePipe::alone(&other, Some(1), 8)));
    no_violations(&fake);
    assert_eq!(fake.kv_len(0), other.len() + 8 - 1, "only the new sequence's KV (its last token is not decoded)");
}

#[tokio::test]
async fn a_lost_stage_is_replaced_and_every_sequence_replayed_with_its_text() {
    // the sixth batch meets a dead stage; the rebuilt pipeline starts with empty KV
    let first = Arc::new(FakePipe::new(1024, Some(6)));
    let second = Arc::new(FakePipe::new(1024, None));
    let next = second.clone();
    let healer = Healer {
        rebuild: Arc::new(move || {
            let p = next.clone() as Arc<dyn Pipe>;
            Box::pin(async move { Ok((p, 1.0)) })
        }),
        faster: None,
        predicted: 1.0,
    };
    let r = rig(3, 4, first.clone(), Some(healer));
    let cases: Vec<(Vec<Token>, Option<u32>)> =
        vec![(prompt(10, 9), None), (prompt(11, 3), Some(5)), (prompt(12, 6), Some(6))];
    let mut rxs = Vec::new();
    for (p, seed) in &cases {
        rxs.push(r.send(p.clone(), *seed, 20).await);
    }
    for ((p, seed), rx) in cases.iter().zip(rxs) {
        assert_eq!(finish(rx).await.1, FakePipe::alone(p, *seed, 20), "prompt of {}", p.len());
    }
    let records = r.counts.recoveries.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].error.is_none() && records[0].replayed_tokens > 0, "{records:?}");
    assert!(Arc::ptr_eq(&r.fake(), &(second.clone() as Arc<dyn Pipe>)), "runs on the rebuilt pipeline");
    no_violations(&second);
}
