//! The Explorer pane: the next-token probe. Results arrive as engine events tagged with the
//! request id; stale answers (an older id) are dropped.

use std::collections::BTreeSet;

use super::chat::Conversation;
use super::metrics::Series;
use crate::engine::protocol::{Probe, Weights};
use crate::engine::Command;
use crate::logits::{ProbeResult, Sampler};

/// A prompt charted over training steps: the probability of its top-1 token, or of a chosen
/// target token (" you" after "How are").
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub prompt: String,
    pub target: Option<String>,
    /// (step, probability of the top-1 or the target token)
    pub series: Series,
    /// The token charted: the current top-1, or the target as the tokenizer cut it.
    pub top1: String,
    pub pending: Option<u64>,
}

#[derive(Debug)]
pub struct ExplorerState {
    pub prompt: String,
    pub editing: bool,
    pub chat: bool,
    pub top_k: usize,
    pub temperature: f64,
    pub top_p: f64,
    /// The latest answer and the training step it was computed at.
    pub result: Option<(u64, ProbeResult)>,
    /// A pinned distribution, shown beside the live one: a snapshot, or the `compare` model's.
    pub pinned: Option<(String, ProbeResult)>,
    /// Probe these weights beside the live ones each time: the base, or a checkpoint.
    pub compare: Option<Weights>,
    /// The run's checkpoints, as the engine reports them (the ones `c` cycles through).
    pub checkpoints: BTreeSet<u64>,
    pub pending: Option<u64>,
    pub pending_base: Option<u64>,
    /// Chat mode: a conversation with the live model.
    pub conversation: Conversation,
    pub selected: usize,
    pub error: Option<String>,
    pub watch: Vec<Watch>,
}

impl Default for ExplorerState {
    fn default() -> Self {
        Self {
            prompt: "How are".into(),
            editing: false,
            chat: false,
            top_k: 10,
            temperature: 1.0,
            top_p: 1.0,
            result: None,
            pinned: None,
            compare: None,
            checkpoints: BTreeSet::new(),
            pending: None,
            pending_base: None,
            conversation: Conversation::default(),
            selected: 0,
            error: None,
            watch: vec![],
        }
    }
}

impl ExplorerState {
    /// The explorer's sampler: its temperature and top-p, applied by the engine over the
    /// whole vocabulary.
    pub fn sampler(&self) -> Sampler {
        Sampler { temperature: self.temperature, top_p: self.top_p }
    }

    /// What `compare` shows as: "base (adapter off)" or "checkpoint 200".
    pub fn compare_label(w: Weights) -> String {
        match w {
            Weights::Base => "base (adapter off)".into(),
            Weights::Checkpoint(s) => format!("checkpoint {s}"),
            Weights::Live => "live".into(),
        }
    }

    /// Compares with the newest checkpoint, then each older one, then nothing.
    pub fn cycle_checkpoint(&mut self) -> Result<(), String> {
        let cks = &self.checkpoints;
        if cks.is_empty() {
            return Err("no checkpoint yet: C saves one".into());
        }
        self.compare = match self.compare {
            Some(Weights::Checkpoint(s)) => cks.range(..s).next_back().map(|&c| Weights::Checkpoint(c)),
            _ => cks.last().map(|&c| Weights::Checkpoint(c)),
        };
        if self.compare.is_none() {
            self.pinned = None;
        }
        Ok(())
    }

    /// The probe requests for the current prompt: the prompt, the same with the adapter off
    /// when comparing, and (during a run) each watched prompt not already asked. Ids come from
    /// `next_id`; each answer is matched to its request by id.
    pub fn requests(&mut self, next_id: &mut u64, active: bool) -> Vec<Command> {
        let id = *next_id;
        *next_id += 2;
        self.pending = Some(id);
        let live =
            Probe { chat: self.chat, sampler: self.sampler(), ..Probe::new(id, &self.prompt, self.top_k) };
        // More of the compared distribution, so most live tokens find theirs in it.
        let compared = self.compare.filter(|_| active).map(|w| Probe {
            id: id + 1,
            weights: w,
            top_k: self.top_k * 5,
            ..live.clone()
        });
        if compared.is_some() {
            self.pending_base = Some(id + 1);
        }
        let mut out: Vec<Command> = std::iter::once(live).chain(compared).map(Command::Probe).collect();
        // Watched prompts ride along while a run is active (their ids come after the pair).
        if active {
            for w in self.watch.iter_mut().filter(|w| w.pending.is_none()) {
                let wid = *next_id;
                *next_id += 1;
                w.pending = Some(wid);
                let p = Probe { chat: self.chat, target: w.target.clone(), ..Probe::new(wid, &w.prompt, 1) };
                out.push(Command::Probe(p));
            }
        }
        out
    }

    /// Files an answer: a watched prompt's point, the live distribution, or the base model's
    /// (shown pinned). An answer to an older request is stale and dropped.
    pub fn on_result(&mut self, id: u64, step: u64, result: Result<ProbeResult, String>) {
        if self.on_watch_result(id, step, result.as_ref()) {
            return;
        }
        if self.pending == Some(id) {
            self.pending = None;
            match result {
                Ok(r) => {
                    self.selected = self.selected.min(r.top.len().saturating_sub(1));
                    self.result = Some((step, r));
                    self.error = None;
                }
                Err(e) => self.error = Some(e),
            }
        } else if self.pending_base == Some(id) {
            self.pending_base = None;
            match (result, self.compare) {
                (Ok(r), Some(w)) => self.pinned = Some((Self::compare_label(w), r)),
                (Err(e), Some(w)) => self.error = Some(format!("{}: {e}", Self::compare_label(w))),
                _ => {}
            }
        }
    }

    pub fn move_selection(&mut self, by: isize) {
        let n = self.result.as_ref().map_or(0, |r| r.1.top.len());
        if n > 0 {
            self.selected = (self.selected as isize + by).rem_euclid(n as isize) as usize;
        }
    }

    /// Pins the live distribution beside itself, or unpins.
    pub fn toggle_pin(&mut self) {
        self.pinned = match (&self.pinned, &self.result) {
            (Some(_), _) | (None, None) => None,
            (None, Some((step, r))) => Some((format!("step {step}"), r.clone())),
        };
    }

    pub fn nudge_temperature(&mut self, by: f64) {
        self.temperature = (self.temperature + by).clamp(0.1, 5.0);
    }

    pub fn nudge_top_p(&mut self, by: f64) {
        self.top_p = (self.top_p + by).clamp(0.05, 1.0);
    }

    /// Adds the current prompt to the watch list, or removes it if it is there.
    pub fn toggle_watch(&mut self) {
        match self.watch.iter().position(|w| w.prompt == self.prompt && w.target.is_none()) {
            Some(i) => {
                self.watch.remove(i);
            }
            None => self.watch.push(Watch { prompt: self.prompt.clone(), ..Default::default() }),
        }
    }

    /// Watches the probability of `target` after the current prompt (`:watch TARGET`).
    pub fn watch_target(&mut self, target: &str) {
        let (prompt, target) = (self.prompt.clone(), Some(target.to_string()));
        self.watch.retain(|w| !(w.prompt == prompt && w.target == target));
        self.watch.push(Watch { prompt, target, ..Default::default() });
    }

    /// Files a watch-probe answer; false when `id` is not a watch request.
    pub fn on_watch_result(&mut self, id: u64, step: u64, r: Result<&ProbeResult, &String>) -> bool {
        let Some(w) = self.watch.iter_mut().find(|w| w.pending == Some(id)) else { return false };
        w.pending = None;
        if let Ok(r) = r {
            let charted = if w.target.is_some() { r.target.as_ref() } else { r.top.first() };
            if let Some(t) = charted {
                w.series.push(step as f64, t.prob);
                w.top1 = t.text.clone();
            }
        }
        true
    }

    pub fn selected_text(&self) -> Option<String> {
        self.result.as_ref()?.1.top.get(self.selected).map(|t| t.text.clone())
    }
}
