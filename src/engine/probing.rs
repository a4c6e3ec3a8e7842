//! The explorer's requests on the engine thread: probes and chat replies, on the live
//! weights, the base (adapter off), or a pinned checkpoint. Each runs between two training
//! steps, and each gets an answer, so a client never waits on a lost request.

use std::path::Path;

use anyhow::{anyhow, Result};
use candle_core::Device;

use super::config::MethodKind;
use super::protocol::{ChatRequest, Event, Probe, Weights};
use super::{build, checkpoint, emit, Engine};
use crate::data::dataset;
use crate::load::{LoadedModel, Source, TextSide};
use crate::model::Llama;

/// A model or a run directory opened for probing outside a run. A run opens at its newest
/// complete checkpoint, rebuilt as training built it (a LoRA run: its base with the adapter).
pub fn open(path: &Path, dev: &Device) -> Result<LoadedModel> {
    let root = path.join("checkpoints");
    if !root.is_dir() {
        return crate::load::load_model(path, dev);
    }
    // Read only: a run's leftovers are its own to clean up.
    let ck = checkpoint::newest(&root, dev)?
        .ok_or_else(|| anyhow!("{}: no complete checkpoint to open", path.display()))?;
    let cfg = ck.state.config;
    let base = cfg.model.path.clone().filter(|_| cfg.method.kind != MethodKind::Pretrain);
    let text = dataset::text_side_for(base.as_deref(), &cfg.data, &cfg.tokenizer, path, false)?
        .ok_or_else(|| anyhow!("{}: the run has no tokenizer to probe with", path.display()))?;
    let vocab = text.tokenizer.get_vocab_size(true);
    let t = build::trainable(&cfg, vocab, Some(&ck.weights), dev)?;
    tracing::info!("opened {} at {}", path.display(), ck.path.display());
    let source = Source::HfDir(base.unwrap_or_else(|| path.to_path_buf()));
    Ok(LoadedModel { model: t.model, text, source })
}

impl Engine {
    pub(super) fn probe(&mut self, p: &Probe) {
        let (step, result) = self.with_model(p.weights, |m, text| crate::infer::probe(m, text, p));
        let result = result.map_err(|e| format!("{e:#}"));
        emit(&self.events, Event::ProbeResult { id: p.id, step, result });
    }

    /// The whole reply between two steps, streamed token by token.
    pub(super) fn chat(&mut self, c: &ChatRequest) {
        let events = self.events.clone();
        let id = c.id;
        // The request's id seeds its draw: each reply samples anew, and a test can repeat one.
        let (step, result) = self.with_model(c.weights, |m, text| {
            crate::infer::chat(m, text, c, id, |token, alternatives| {
                emit(&events, Event::ChatToken { id, token, alternatives })
            })
        });
        let result = result.map_err(|e| format!("{e:#}"));
        emit(&self.events, Event::ChatDone { id, step, result });
    }

    /// Runs `f` on the model `w` names, with the step it is at.
    fn with_model<T>(
        &mut self,
        w: Weights,
        f: impl FnOnce(&Llama, &TextSide) -> Result<T>,
    ) -> (u64, Result<T>) {
        match (&mut self.run, &self.viewer) {
            (Some(r), _) => {
                let step = r.trainer.step();
                if let Weights::Checkpoint(s) = w {
                    if r.pinned.as_ref().map(|p| p.0) != Some(s) {
                        r.pinned = None; // one pinned model at a time
                        match r.trainer.checkpoint_model(s) {
                            Ok(m) => r.pinned = Some((s, m)),
                            Err(e) => return (step, Err(e)),
                        }
                    }
                }
                let model = match (w, &r.pinned) {
                    (Weights::Checkpoint(_), Some((_, m))) => Ok(m),
                    _ => r.trainer.model_for(w),
                };
                let run = || -> Result<T> { f(model?, r.trainer.text()?) };
                (step, run())
            }
            (None, Some(v)) if w == Weights::Live => (0, f(&v.model, &v.text)),
            (None, Some(_)) => (0, Err(anyhow!("no run is active: only the opened model can be probed"))),
            (None, None) => (0, Err(anyhow!("no run is active and no model is open"))),
        }
    }
}
