//! The batcher's side of speculative decoding: a verify window's answer (the tokens taken, the
//! positions to trim, what the tuner learns) and the draft model's proposals.

use super::*;

impl Batcher {
    /// A sequence's window answered: the tokens its rows sampled, up to the first miss.
    pub(super) fn verified(&mut self, i: usize, tokens: &[Token]) {
        let Some(job) = self.slots[i].job.as_mut() else { return };
        let drafts = std::mem::take(&mut job.drafts);
        if drafts.len() + 1 != tokens.len() {
            // a prompt's last row (no window), or a window of the pipeline before a rebuild
            if let [t] = tokens {
                self.sampled(i, *t);
            }
            return;
        }
        // the window's first row is the token decoded at `end - 1`; the rows after it are drafts
        let end = job.pos() + drafts.len();
        let mut taken = 0;
        for (j, &t) in tokens.iter().enumerate() {
            if t == UNSAMPLED {
                break;
            }
            if j > 0 {
                // row j sampled: the draft it was decoded on was right, its KV stays
                match self.slots[i].job.as_mut() {
                    Some(job) if !job.doomed => job.decoded.push(drafts[j - 1]),
                    _ => break,
                }
            }
            self.sampled(i, t);
            taken = j + 1;
        }
        if !drafts.is_empty() {
            self.counts.spec.add(drafts.len(), taken.saturating_sub(1), taken);
        }
        let slot = &mut self.slots[i];
        match slot.job.as_mut() {
            Some(job) => {
                if let Some(tuner) = job.tuner.as_mut() {
                    tuner.verified(drafts.len(), taken.saturating_sub(1));
                }
                if job.pos() < end {
                    job.trim = Some(job.pos());
                }
            }
            // ended inside its window: positions past its cache hold proposals
            None => slot.stale = slot.cached.len() < end,
        }
    }

    /// The draft model answered for the job of `ticket` (ignored when that job is gone or was
    /// rebuilt meanwhile).
    pub(super) fn drafted(&mut self, slot: usize, ticket: u64, result: Result<(Vec<Token>, DraftKv), PipelineError>) {
        let Some(job) = self.slots[slot].job.as_mut().filter(|j| j.ticket == ticket) else { return };
        let Phase::Drafting(t) = job.phase else { return }; // rebuilt meanwhile
        job.phase = Phase::Ready(t);
        match result {
            Ok((drafts, kv)) => {
                job.proposed = Some(drafts);
                job.draft_kv = kv;
            }
            Err(e) => {
                // the draft is only a guess: without it the sequence decodes plainly
                tracing::warn!(seq = slot, "the draft model failed, decoding without it: {e}");
                job.tuner = None;
            }
        }
    }
}

/// Up to `k` n-gram proposals after the sequence's last token.
pub(super) fn propose(prompt: &[Token], emitted: &[Token], k: usize, eog: &[Token], ignore_eos: bool) -> Vec<Token> {
    // only the span the lookup searches is copied (this runs every step of every sequence)
    let span = crate::pipeline::NGRAM_SPAN;
    let recent = &emitted[emitted.len().saturating_sub(span)..];
    let earlier = &prompt[prompt.len().saturating_sub(span - recent.len())..];
    let history: Vec<Token> = earlier.iter().chain(recent).copied().collect();
    cut_at_eog(crate::pipeline::ngram(&history, k), eog, ignore_eos)
}

/// Proposals stop before an end-of-generation token (nothing follows it).
pub(super) fn cut_at_eog(mut d: Vec<Token>, eog: &[Token], ignore_eos: bool) -> Vec<Token> {
    if !ignore_eos {
        if let Some(e) = d.iter().position(|t| eog.contains(t)) {
            d.truncate(e);
        }
    }
    d
}
