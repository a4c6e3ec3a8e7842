//! The explorer's requests beyond the plain probe: chat turns, and the model compared beside
//! the live one.

use super::App;
use crate::engine::protocol::Weights;
use crate::tui::msg::Effect;
use crate::tui::state::explorer::ExplorerState;
use crate::tui::state::log::Level;

impl App {
    /// Sends the prompt as the user's turn in chat mode; the reply streams in as it is written.
    pub(super) fn send_chat(&mut self) -> Vec<Effect> {
        let active = self.active();
        if !active && self.opened.is_none() {
            self.explorer.error = Some("no model open: pick one in Models (Enter) or start a run".into());
            return vec![];
        }
        if self.explorer.conversation.busy() {
            self.log.push(Level::Warn, "the model is still replying".to_string());
            return vec![];
        }
        let e = &mut self.explorer;
        if e.prompt.trim().is_empty() {
            return vec![];
        }
        let text = std::mem::take(&mut e.prompt);
        let id = self.next_id;
        self.next_id += 1;
        // The compare toggle picks the weights: the base (adapter off) when it is on.
        let weights = match e.compare {
            Some(Weights::Base) if active => Weights::Base,
            _ => Weights::Live,
        };
        let (sampler, top_k) = (e.sampler(), e.top_k);
        vec![Effect::Engine(e.conversation.send(&text, id, sampler, top_k, weights))]
    }

    /// Compares the live distribution with `w` (None: stop comparing), probing both now.
    pub(super) fn compare_with(&mut self, w: Option<Weights>) -> Vec<Effect> {
        self.explorer.compare = w;
        match w {
            Some(w) => {
                self.log.push(Level::Info, format!("comparing with {}", ExplorerState::compare_label(w)));
                if !self.active() {
                    self.log.push(Level::Warn, "comparing needs a run: start or attach one".to_string());
                    return vec![];
                }
                self.probe()
            }
            None => {
                self.explorer.pinned = None;
                vec![]
            }
        }
    }

    /// `:pin base`, `:pin STEP` (a checkpoint), `:pin off`.
    pub(super) fn pin_command(&mut self, arg: &str) -> Vec<Effect> {
        match arg {
            "base" => self.compare_with(Some(Weights::Base)),
            "off" | "" => self.compare_with(None),
            s => match s.parse::<u64>() {
                Ok(step) => self.compare_with(Some(Weights::Checkpoint(step))),
                Err(_) => {
                    self.log.push(Level::Warn, format!(":pin {s}: give base, off or a checkpoint's step"));
                    vec![]
                }
            },
        }
    }
}
