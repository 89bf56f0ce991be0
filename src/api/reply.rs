//! Running generations answered either way through one [`Encoder`] per API: streamed, as the
//! frames the encoder makes for each event; or collected, as the encoder's
//! [`whole`](Encoder::whole) of the same events folded the same way ([`Said::step`]). The last
//! streamed frames and the collected answer are both made from the same [`Outcome`], so the two
//! cannot diverge.

use super::errors::{ApiError, Shape};
use super::util::stream_body;
use crate::chat::ToolCall;
use crate::runtime::{Event, Finish, Generation, RuntimeError, Stats};
use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

/// One finished generation: all it said and how it ended.
pub(super) struct Outcome {
    pub text: String,
    pub thinking: String,
    pub finish: Finish,
    pub stop_sequence: Option<String>,
    pub stats: Stats,
    pub tool_calls: Vec<ToolCall>,
}

/// An API's answer to running generations (one, or OpenAI's choices), indexed in order.
pub(super) trait Encoder: Send + 'static {
    /// How errors are written.
    type Shape: Shape;
    /// Frames that open a stream.
    fn start(&mut self) -> String {
        String::new()
    }
    /// Frames for a piece of choice `i`'s answer.
    fn text(&mut self, i: usize, piece: &str) -> String;
    /// Frames for a piece of choice `i`'s reasoning.
    fn thinking(&mut self, i: usize, piece: &str) -> String;
    /// Frames ending choice `i`.
    fn done(&mut self, i: usize, o: &Outcome) -> String;
    /// Frames once every choice has ended.
    fn end(&mut self, _all: &[Outcome]) -> String {
        String::new()
    }
    /// Frames for a failure after the stream started.
    fn failed(&mut self, e: &RuntimeError) -> String;
    /// The collected answer.
    fn whole(&self, all: &[Outcome]) -> Value;
    /// The streamed response around `body` (SSE unless the API says otherwise).
    fn respond(body: Body) -> Response {
        ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
    }
}

/// What one generation has said so far: the fold both ways share.
#[derive(Default)]
struct Said {
    text: String,
    thinking: String,
}

enum Step {
    Text(String),
    Thinking(String),
    Done(Outcome),
    Failed(RuntimeError),
}

impl Said {
    fn step(&mut self, ev: Event) -> Step {
        match ev {
            Event::Text(t) => {
                self.text.push_str(&t);
                Step::Text(t)
            }
            Event::Thinking(t) => {
                self.thinking.push_str(&t);
                Step::Thinking(t)
            }
            Event::Done { finish, stop_sequence, stats, tool_calls } => Step::Done(Outcome {
                text: std::mem::take(&mut self.text),
                thinking: std::mem::take(&mut self.thinking),
                finish,
                stop_sequence,
                stats,
                tool_calls,
            }),
            Event::Failed(e) => Step::Failed(e),
        }
    }
}

/// Waits for every generation to end, in order: the encoder's whole answer, or the first error.
pub(super) async fn collect<E: Encoder>(enc: E, gens: Vec<Generation>) -> Result<Response, ApiError<E::Shape>> {
    let mut all = Vec::new();
    for mut g in gens {
        let mut said = Said::default();
        let o = loop {
            match g.events.recv().await.map(|ev| said.step(ev)) {
                Some(Step::Done(o)) => break o,
                Some(Step::Failed(e)) => return Err(e.into()),
                Some(_) => {}
                None => return Err(ApiError::ended()),
            }
        };
        all.push(o);
    }
    Ok(axum::Json(enc.whole(&all)).into_response())
}

/// Streams the encoder's frames for every generation's events as they come.
pub(super) fn stream<E: Encoder>(mut enc: E, gens: Vec<Generation>) -> Response {
    let (tx, rx) = mpsc::channel::<String>(32);
    // every choice's events, tagged with its index, into one stream
    let (etx, mut erx) = mpsc::channel::<(usize, Event)>(64);
    let count = gens.len();
    for (i, mut g) in gens.into_iter().enumerate() {
        let etx = etx.clone();
        tokio::spawn(async move {
            while let Some(ev) = g.events.recv().await {
                // a send error means the client left: dropping `g` cancels the generation
                if etx.send((i, ev)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(etx);
    tokio::spawn(async move {
        let start = enc.start();
        if !start.is_empty() && tx.send(start).await.is_err() {
            return;
        }
        let mut said: Vec<Said> = (0..count).map(|_| Said::default()).collect();
        let mut ended: Vec<Option<Outcome>> = (0..count).map(|_| None).collect();
        while let Some((i, ev)) = erx.recv().await {
            let Some(s) = said.get_mut(i) else { continue };
            let out = match s.step(ev) {
                Step::Text(t) => enc.text(i, &t),
                Step::Thinking(t) => enc.thinking(i, &t),
                Step::Done(o) => {
                    let mut out = enc.done(i, &o);
                    ended[i] = Some(o);
                    if ended.iter().all(Option::is_some) {
                        let all: Vec<Outcome> = ended.iter_mut().filter_map(Option::take).collect();
                        out += &enc.end(&all);
                    }
                    out
                }
                Step::Failed(e) => enc.failed(&e),
            };
            if !out.is_empty() && tx.send(out).await.is_err() {
                return;
            }
        }
    });
    E::respond(stream_body(rx))
}
