//! The chat loop of `exo run`, once for every backend: the runtime in this process or a running
//! node's API. It reads the prompt (argument, piped stdin, or `>>>` lines in a terminal), handles
//! `/set parameter`, `/clear`, `/bye`, streams answers to stdout and prints `--verbose` stats.

use super::run_args::RunArgs;
use crate::chat::ChatMessage;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::time::Duration;

/// Why `/set parameter` did nothing (printed, and the chat goes on).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum SetError {
    #[error("usage: /set parameter NAME VALUE")]
    Usage,
    #[error("{value:?} is not a number")]
    NotANumber { value: String },
    #[error("{value:?} is not an integer")]
    NotAnInteger { value: String },
    #[error("unknown parameter {name:?}")]
    Unknown { name: String },
}

/// Sampling and length settings a turn is answered with (`/set parameter` changes them).
#[derive(Clone, Debug, Default)]
pub struct Params {
    pub temperature: Option<f32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u32>,
    pub max_tokens: Option<u64>,
}

impl Params {
    pub fn from_args(a: &RunArgs) -> Params {
        Params {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            seed: a.seed,
            max_tokens: a.max_tokens.map(u64::from),
        }
    }

    /// `/set parameter NAME VALUE`; the reply to print.
    fn set(&mut self, rest: &str) -> Result<String, SetError> {
        let (name, value) = rest.trim().split_once(' ').ok_or(SetError::Usage)?;
        let value = value.trim();
        let f = || value.parse::<f32>().map_err(|_| SetError::NotANumber { value: value.into() });
        let i = || value.parse::<i64>().map_err(|_| SetError::NotAnInteger { value: value.into() });
        match name {
            "temperature" => self.temperature = Some(f()?),
            "top_k" => self.top_k = Some(i()?.clamp(0, i32::MAX as i64) as i32),
            "top_p" => self.top_p = Some(f()?),
            "min_p" => self.min_p = Some(f()?),
            "repeat_penalty" => self.repeat_penalty = Some(f()?),
            "seed" => self.seed = Some(i()? as u32),
            "num_predict" => self.max_tokens = u64::try_from(i()?).ok().filter(|n| *n > 0),
            _ => return Err(SetError::Unknown { name: name.into() }),
        }
        Ok(format!("Set parameter '{name}' to '{value}'"))
    }
}

/// What a turn took, as `--verbose` prints it.
#[derive(Clone, Debug, Default)]
pub struct TurnStats {
    pub load: Duration,
    pub prompt_tokens: usize,
    pub prompt_eval: Duration,
    pub eval_count: usize,
    pub eval: Duration,
    pub total: Duration,
    /// The instance's speculation totals so far (local runs).
    pub speculation: Option<crate::runtime::speculate::SpecView>,
}

/// Where the turns are answered.
pub trait Backend {
    /// Answers the conversation, handing text to `out` as it streams.
    async fn answer(
        &mut self,
        messages: &[ChatMessage],
        params: &Params,
        out: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> anyhow::Result<TurnStats>;
    /// Which node runs which layers, for `--verbose` (after the first answer).
    async fn placement(&self) -> Option<String>;
}

/// Answers PROMPT (or piped stdin) once, or chats in a terminal.
pub async fn run(b: &mut impl Backend, a: &RunArgs) -> anyhow::Result<()> {
    let mut params = Params::from_args(a);
    if let Some(p) = read_prompt(a)? {
        turn(b, &[ChatMessage::new("user", p)], &params, a.verbose).await?;
        return Ok(());
    }
    let mut history: Vec<ChatMessage> = Vec::new();
    loop {
        let Some(line) = chat_line()? else { return Ok(()) };
        let line = line.trim();
        match line {
            "" => continue,
            "/bye" => return Ok(()),
            "/clear" => {
                history.clear();
                outln!("Cleared session context");
                continue;
            }
            "/?" | "/help" => {
                outln!(
                    "/set parameter NAME VALUE   temperature, top_k, top_p, min_p, repeat_penalty, seed, num_predict"
                );
                outln!("/clear                      forget the conversation");
                outln!("/bye                        exit (or Ctrl-D)");
                continue;
            }
            _ => {}
        }
        if let Some(rest) = line.strip_prefix("/set parameter ") {
            match params.set(rest) {
                Ok(msg) => outln!("{msg}"),
                Err(e) => outln!("Error: {e}"),
            }
            continue;
        }
        if line.starts_with('/') {
            outln!("Unknown command '{line}'. Type /? for help");
            continue;
        }
        history.push(ChatMessage::new("user", line.to_string()));
        let reply = turn(b, &history, &params, a.verbose).await?;
        history.push(ChatMessage::new("assistant", reply));
        outln!();
    }
}

/// One answer streamed to stdout; returns its text.
async fn turn(
    b: &mut impl Backend,
    messages: &[ChatMessage],
    params: &Params,
    verbose: bool,
) -> anyhow::Result<String> {
    let mut stdout = std::io::stdout().lock();
    let mut reply = String::new();
    let stats = b
        .answer(messages, params, &mut |t| {
            reply.push_str(t);
            stdout.write_all(t.as_bytes())?;
            stdout.flush()
        })
        .await?;
    writeln!(stdout)?;
    drop(stdout);
    if verbose {
        if let Some(p) = b.placement().await {
            eprintln!("placement: {p}");
        }
        print_stats(&stats);
    }
    Ok(reply)
}

/// PROMPT, else a prompt piped on stdin; None means an interactive chat.
pub fn read_prompt(a: &RunArgs) -> std::io::Result<Option<String>> {
    if !a.prompt.is_empty() {
        return Ok(Some(a.prompt.join(" ")));
    }
    if std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    Ok(Some(s))
}

/// One line typed at the `>>> ` prompt; `None` at end of input (Ctrl-D).
fn chat_line() -> std::io::Result<Option<String>> {
    print!(">>> ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        outln!();
        return Ok(None);
    }
    Ok(Some(line))
}

fn print_stats(s: &TurnStats) {
    let rate = |n: usize, d: Duration| if d.as_secs_f64() > 0.0 { n as f64 / d.as_secs_f64() } else { 0.0 };
    eprintln!("total duration:       {}", fmt_dur(s.total));
    eprintln!("load duration:        {}", fmt_dur(s.load));
    eprintln!("prompt eval count:    {} token(s)", s.prompt_tokens);
    eprintln!("prompt eval duration: {}", fmt_dur(s.prompt_eval));
    eprintln!("prompt eval rate:     {:.2} tokens/s", rate(s.prompt_tokens, s.prompt_eval));
    eprintln!("eval count:           {} token(s)", s.eval_count);
    eprintln!("eval duration:        {}", fmt_dur(s.eval));
    eprintln!("eval rate:            {:.2} tokens/s", rate(s.eval_count.saturating_sub(1), s.eval));
    if let Some(v) = s.speculation.as_ref().filter(|v| v.draft != "none") {
        match (v.acceptance, v.tokens_per_verify) {
            (Some(a), Some(t)) => eprintln!(
                "speculation:          {}, {:.0}% of {} proposed tokens accepted, {t:.2} tokens per verify",
                v.draft,
                a * 100.0,
                v.stats.proposed
            ),
            _ => eprintln!("speculation:          {}, nothing proposed yet", v.draft),
        }
    }
}

fn fmt_dur(d: Duration) -> String {
    if d.as_secs_f64() >= 1.0 {
        format!("{:.3}s", d.as_secs_f64())
    } else {
        format!("{:.3}ms", d.as_secs_f64() * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_parameter() {
        let mut p = Params::default();
        assert_eq!(p.set("temperature 0.5").unwrap(), "Set parameter 'temperature' to '0.5'");
        assert_eq!(p.temperature, Some(0.5));
        p.set("num_predict 0").unwrap();
        assert_eq!(p.max_tokens, None);
        assert_eq!(p.set("temperature").unwrap_err(), SetError::Usage);
        assert_eq!(p.set("top_p warm").unwrap_err(), SetError::NotANumber { value: "warm".into() });
        assert_eq!(p.set("seed 1.5").unwrap_err().to_string(), r#""1.5" is not an integer"#);
        assert_eq!(p.set("mirostat 2").unwrap_err(), SetError::Unknown { name: "mirostat".into() });
    }
}
