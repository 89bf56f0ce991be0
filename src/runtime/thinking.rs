//! Reasoning apart from the answer: with `think` on, a reasoning model's `<think>…</think>` block
//! (opened by the model, or already by its template's generation prompt) streams as
//! [`Event::Thinking`], the rest as [`Event::Text`]. Tags split across tokens are held back until
//! they can be told from text.

use super::request::Event;
use tokio::sync::mpsc;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, PartialEq)]
enum State {
    /// Before any output: a leading `<think>` opens reasoning.
    Start,
    Thinking,
    Answer,
}

/// Splits streamed text into (thinking, answer) pieces.
pub(crate) struct Splitter {
    state: State,
    held: String,
}

impl Splitter {
    /// `opened`: the prompt already ends inside a `<think>` block.
    pub fn new(opened: bool) -> Splitter {
        Splitter { state: if opened { State::Thinking } else { State::Start }, held: String::new() }
    }

    pub fn push(&mut self, text: &str) -> (String, String) {
        self.held.push_str(text);
        let (mut thinking, mut answer) = (String::new(), String::new());
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(t) {
                        return (thinking, answer); // maybe the tag, still arriving
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking => match self.held.find(CLOSE) {
                    Some(i) => {
                        thinking.push_str(&self.held[..i]);
                        self.held = self.held[i + CLOSE.len()..].trim_start().to_string();
                        self.state = State::Answer;
                    }
                    None => {
                        let keep = partial_suffix(&self.held, CLOSE);
                        let cut = self.held.len() - keep;
                        thinking.push_str(&self.held[..cut]);
                        self.held.drain(..cut);
                        return (thinking, answer);
                    }
                },
                State::Answer => {
                    answer.push_str(&self.held);
                    self.held.clear();
                    return (thinking, answer);
                }
            }
        }
    }

    /// What is still held at the end.
    pub fn finish(&mut self) -> (String, String) {
        let rest = std::mem::take(&mut self.held);
        match self.state {
            State::Thinking => (rest, String::new()),
            _ => (String::new(), rest),
        }
    }
}

/// The length of the longest suffix of `s` that is a proper prefix of `tag`.
fn partial_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| s.len() >= n && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

pub(crate) fn split(mut rx: mpsc::Receiver<Event>, opened: bool) -> mpsc::Receiver<Event> {
    let (tx, out) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut s = Splitter::new(opened);
        while let Some(ev) = rx.recv().await {
            let (thinking, answer) = match &ev {
                Event::Text(t) => s.push(t),
                Event::Done { .. } | Event::Failed(_) => s.finish(),
                Event::Thinking(_) => (String::new(), String::new()),
            };
            for e in [
                (!thinking.is_empty()).then(|| Event::Thinking(thinking)),
                (!answer.is_empty()).then(|| Event::Text(answer)),
            ]
            .into_iter()
            .flatten()
            {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            if !matches!(ev, Event::Text(_)) && tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(opened: bool, chunks: &[&str]) -> (String, String) {
        let mut s = Splitter::new(opened);
        let (mut t, mut a) = (String::new(), String::new());
        for c in chunks {
            let (x, y) = s.push(c);
            t += &x;
            a += &y;
        }
        let (x, y) = s.finish();
        (t + &x, a + &y)
    }

    #[test]
    fn splits_across_chunk_boundaries() {
        assert_eq!(
            run(false, &["<th", "ink>Hmm, ", "2+2.</th", "ink>\n\n", "It is 4."]),
            ("Hmm, 2+2.".into(), "It is 4.".into())
        );
        assert_eq!(run(true, &["Let me see", "</think>", "Four."]), ("Let me see".into(), "Four.".into()));
        assert_eq!(
            run(false, &["Just ", "an answer <think> in text"]),
            ("".into(), "Just an answer <think> in text".into())
        );
        assert_eq!(run(false, &["<think>never closed"]), ("never closed".into(), "".into()));
        assert_eq!(run(false, &["<"]), ("".into(), "<".into()));
    }
}
