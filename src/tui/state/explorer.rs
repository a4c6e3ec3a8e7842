//! The Explorer pane: the next-token probe. Results arrive as engine events tagged with the
//! request id; stale answers (an older id) are dropped.

use super::metrics::Series;
use crate::engine::Command;
use crate::logits::ProbeResult;

/// A prompt whose top-1 probability is charted over training steps.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub prompt: String,
    /// (step, probability of the current top-1 token)
    pub series: Series,
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
    /// A pinned earlier distribution, shown beside the live one.
    pub pinned: Option<(String, ProbeResult)>,
    /// Compare with the base model (LoRA adapter off).
    pub compare_base: bool,
    pub pending: Option<u64>,
    pub pending_base: Option<u64>,
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
            compare_base: false,
            pending: None,
            pending_base: None,
            selected: 0,
            error: None,
            watch: vec![],
        }
    }
}

impl ExplorerState {
    /// The shown tokens' probabilities after temperature and top-p, renormalised over the
    /// shown tokens: p_i^(1/T) / Σ, then the smallest prefix reaching top_p.
    pub fn adjusted(&self) -> Vec<(u32, f64)> {
        let Some((_, r)) = &self.result else { return vec![] };
        let t = self.temperature.max(1e-3);
        let w: Vec<f64> = r.top.iter().map(|x| (x.logprob / t).exp()).collect();
        let z: f64 = w.iter().sum();
        if z == 0.0 {
            return vec![];
        }
        let mut out = vec![];
        let mut mass = 0.0;
        for (x, wi) in r.top.iter().zip(&w) {
            let p = wi / z;
            out.push((x.id, p));
            mass += p;
            if mass >= self.top_p {
                break;
            }
        }
        out.into_iter().map(|(id, p)| (id, p / mass)).collect()
    }

    /// The probe requests for the current prompt: the prompt, the same with the adapter off
    /// when comparing, and (during a run) each watched prompt not already asked. Ids come from
    /// `next_id`; each answer is matched to its request by id.
    pub fn requests(&mut self, next_id: &mut u64, active: bool) -> Vec<Command> {
        let id = *next_id;
        *next_id += 2;
        self.pending = Some(id);
        let (prompt, chat, top_k) = (self.prompt.clone(), self.chat, self.top_k);
        let mut out = vec![Command::Probe { id, prompt: prompt.clone(), chat, top_k, base: false }];
        if self.compare_base && active {
            self.pending_base = Some(id + 1);
            out.push(Command::Probe { id: id + 1, prompt, chat, top_k, base: true });
        }
        // Watched prompts ride along while a run is active (their ids come after the pair).
        if active {
            for w in self.watch.iter_mut().filter(|w| w.pending.is_none()) {
                let wid = *next_id;
                *next_id += 1;
                w.pending = Some(wid);
                out.push(Command::Probe { id: wid, prompt: w.prompt.clone(), chat, top_k: 1, base: false });
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
            if let Ok(r) = result {
                self.pinned = Some(("base (adapter off)".into(), r));
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
        match self.watch.iter().position(|w| w.prompt == self.prompt) {
            Some(i) => {
                self.watch.remove(i);
            }
            None => self.watch.push(Watch { prompt: self.prompt.clone(), ..Default::default() }),
        }
    }

    /// Files a watch-probe answer; false when `id` is not a watch request.
    pub fn on_watch_result(&mut self, id: u64, step: u64, r: Result<&ProbeResult, &String>) -> bool {
        let Some(w) = self.watch.iter_mut().find(|w| w.pending == Some(id)) else { return false };
        w.pending = None;
        if let Ok(r) = r {
            if let Some(t) = r.top.first() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logits::TopToken;

    fn tok(id: u32, p: f64) -> TopToken {
        TopToken { id, piece: format!("t{id}"), text: format!("t{id}"), prob: p, logprob: p.ln() }
    }

    #[test]
    fn temperature_and_top_p_over_shown_tokens() {
        let mut e = ExplorerState::default();
        let r = ProbeResult {
            prompt_ids: vec![1],
            top: vec![tok(1, 0.5), tok(2, 0.25), tok(3, 0.25)],
            entropy: 1.0,
            cumulative: 1.0,
        };
        e.result = Some((0, r));
        let same = e.adjusted();
        assert!((same[0].1 - 0.5).abs() < 1e-12 && same.len() == 3);
        e.temperature = 0.5; // p² renormalised: 0.25, 0.0625, 0.0625 → 2/3, 1/6, 1/6
        let sharp = e.adjusted();
        assert!((sharp[0].1 - 2.0 / 3.0).abs() < 1e-12);
        e.top_p = 0.6;
        assert_eq!(e.adjusted(), vec![(1, 1.0)]);
    }
}
