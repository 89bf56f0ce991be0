//! One request's generation session: turns the batcher's tokens into text (stop sequences held
//! back until they cannot match), and ends with the statistics every API reports.

use super::batcher::SeqEvent;
use super::error::RuntimeError;
use super::instance::Instance;
use super::request::{Event, Finish, Stats};
use crate::engine::TokenDecoder;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub(crate) struct Session {
    pub instance: Arc<Instance>,
    pub stop: Vec<String>,
    pub prompt_tokens: usize,
    /// When the request arrived, and how long it waited for the model to load.
    pub t0: Instant,
    pub load: Duration,
    /// Special tokens as text (their markers delimit tool calls and channels).
    pub special: bool,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Session {
    /// Runs until the sequence ends or the caller drops its receiver (which cancels the
    /// sequence: dropping `seq` tells the batcher).
    pub async fn run(self, mut seq: mpsc::UnboundedReceiver<SeqEvent>, tx: mpsc::Sender<Event>) {
        let mut decoder = TokenDecoder::new();
        let mut stops = StopMatcher::new(self.stop.clone());
        let (mut started, mut first, mut last) = (None::<Instant>, None::<Instant>, None::<Instant>);
        let (mut cached, mut generated) = (0usize, 0usize);
        let mut held: Option<SeqEvent> = None;
        loop {
            let ev = match held.take() {
                Some(e) => Some(e),
                None => seq.recv().await,
            };
            let ev = match ev {
                Some(e) => e,
                None => {
                    let _ =
                        tx.send(Event::Failed(RuntimeError::Failed { reason: "the model was unloaded".into() })).await;
                    self.ended("error");
                    return;
                }
            };
            match ev {
                SeqEvent::Leased { .. } => {} // never sent to a generation
                SeqEvent::Started { cached: c } => {
                    started = Some(Instant::now());
                    cached = c;
                }
                SeqEvent::Token(t) => {
                    // detokenize whatever has arrived meanwhile in one call
                    let mut batch = vec![t];
                    while let Ok(e) = seq.try_recv() {
                        match e {
                            SeqEvent::Token(t) => batch.push(t),
                            other => {
                                held = Some(other);
                                break;
                            }
                        }
                    }
                    let now = Instant::now();
                    if first.is_none() {
                        self.metrics.ttft.observe(&[("model", self.instance.name())], now - self.t0);
                    }
                    first.get_or_insert(now);
                    self.metrics.generated_tokens.add(&[("model", self.instance.name())], batch.len() as f64);
                    last = Some(now);
                    generated += batch.len();
                    let bytes = match self.instance.vocab.token_bytes(batch, self.special).await {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Event::Failed(e.into())).await;
                            self.ended("error");
                            return;
                        }
                    };
                    let mut text = String::new();
                    for b in bytes {
                        text.push_str(&decoder.push(&b));
                    }
                    let (out, hit) = stops.push(&text);
                    if !out.is_empty() && tx.send(Event::Text(out)).await.is_err() {
                        self.ended("cancelled");
                        return; // the caller left
                    }
                    if let Some(s) = hit {
                        let stats = self.stats(started, first, last, cached, generated);
                        let _ = tx
                            .send(Event::Done {
                                finish: Finish::StopSequence,
                                stop_sequence: Some(s),
                                stats,
                                tool_calls: vec![],
                            })
                            .await;
                        self.ended("stop_sequence");
                        return;
                    }
                }
                SeqEvent::Done { length } => {
                    let tail = stops.finish(&decoder.finish());
                    if !tail.is_empty() {
                        let _ = tx.send(Event::Text(tail)).await;
                    }
                    let finish = if length { Finish::Length } else { Finish::Stop };
                    let stats = self.stats(started, first, last, cached, generated);
                    let _ = tx.send(Event::Done { finish, stop_sequence: None, stats, tool_calls: vec![] }).await;
                    self.ended(if length { "length" } else { "stop" });
                    return;
                }
                SeqEvent::Failed(e) => {
                    let _ = tx.send(Event::Failed(e)).await;
                    self.ended("error");
                    return;
                }
            }
        }
    }

    /// Counts the end of this generation for `/metrics`.
    fn ended(&self, reason: &str) {
        self.metrics.finished.inc(&[("model", self.instance.name()), ("reason", reason)]);
    }

    fn stats(
        &self,
        started: Option<Instant>,
        first: Option<Instant>,
        last: Option<Instant>,
        cached: usize,
        generated: usize,
    ) -> Stats {
        let started = started.unwrap_or(self.t0);
        let first_at = first.unwrap_or_else(Instant::now);
        Stats {
            prompt_tokens: self.prompt_tokens,
            cached_tokens: cached,
            completion_tokens: generated,
            load: self.load,
            prompt_eval: first_at.saturating_duration_since(started),
            eval: last.map_or(Duration::ZERO, |l| l.saturating_duration_since(first_at)),
            total: self.t0.elapsed(),
        }
    }
}

/// Holds back text that may be the start of a stop sequence; reports the first full match.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops, held: String::new() }
    }

    /// Returns the text safe to emit now, and the stop sequence if one matched (text after it is
    /// dropped).
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), None);
        }
        // earliest full match
        if let Some((at, s)) =
            self.stops.iter().filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s.clone()))).min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, Some(s));
        }
        // keep the longest suffix that is a prefix of some stop sequence
        let mut keep = 0;
        for s in &self.stops {
            for k in (1..s.len().min(self.held.len() + 1)).rev() {
                if self.held.is_char_boundary(self.held.len() - k)
                    && s.is_char_boundary(k)
                    && self.held.ends_with(&s[..k])
                {
                    keep = keep.max(k);
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, None)
    }

    /// What is still held at the end (plus `tail`), now safe to emit.
    pub fn finish(&mut self, tail: &str) -> String {
        let (mut out, hit) = self.push(tail);
        if hit.is_none() {
            out.push_str(&std::mem::take(&mut self.held));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    #[test]
    fn stop_sequences_across_pieces() {
        let mut m = StopMatcher::new(vec!["</s>".into(), "\nUser:".into()]);
        assert_eq!(m.push("Hello <"), ("Hello ".into(), None));
        assert_eq!(m.push("/"), ("".into(), None));
        assert_eq!(m.push("s> more"), ("".into(), Some("</s>".into())));
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("ab ST"), ("ab ".into(), None));
        assert_eq!(m.push("x"), ("STx".into(), None));
        assert_eq!(m.finish("S"), "S");
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("anything"), ("anything".into(), None));
    }
}
