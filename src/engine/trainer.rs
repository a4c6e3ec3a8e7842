//! A training run: the model, optimizer, data cursor, schedule and counters, and the step.
//! The engine thread owns one of these; tests drive it directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use super::build::{self, Trainable};
use super::checkpoint::{self, Edit, State};
use super::config::{MethodKind, RunConfig, ScheduleConfig};
use super::dataset;
use super::export;
use super::protocol::{ModelInfo, StepStats};
use crate::data::{Batcher, DataReport, Window};
use crate::load::{self, TextSide};
use crate::model::lora::LoraSettings;
use crate::model::ops;
use crate::optim::adamw::{grad_norm, scale_grads};
use crate::optim::{AdamW, AdamWConfig, Schedule};
use crate::probe::ProbeResult;

pub struct Trainer {
    pub cfg: RunConfig,
    pub run_dir: PathBuf,
    dev: Device,
    t: Trainable,
    opt: AdamW,
    train: Batcher,
    eval: Vec<Window>,
    text: Option<TextSide>,
    /// The schedule in force, and every edit that led to it.
    schedule: ScheduleConfig,
    edits: Vec<Edit>,
    pub total_steps: u64,
    /// Optimizer steps done.
    pub step: u64,
    grad_clip: f64,
    skipped: u64,
    bad_in_row: u64,
    best_eval: Option<f64>,
    evals_since_best: u64,
    pub report: DataReport,
    started: Instant,
}

impl Trainer {
    /// Sets up a run in `run_dir`; with `resume`, continues from its newest checkpoint.
    pub fn new(cfg: RunConfig, run_dir: &Path, resume: bool, dev: &Device) -> Result<Self> {
        build::check_method(&cfg)?;
        let ckpt = if resume {
            let root = run_dir.join("checkpoints");
            let c = checkpoint::load_latest(&root, dev)?;
            if c.is_none() {
                bail!("{}: no complete checkpoint to resume from", root.display());
            }
            c
        } else {
            None
        };
        // A resumed run keeps the config it was started with (its data order and model depend
        // on it); only its length and the [run] cadence may change.
        let cfg = match &ckpt {
            Some(c) => {
                let mut saved = c.state.config.clone();
                saved.run = cfg.run.clone();
                saved.optim.max_steps = cfg.optim.max_steps;
                saved.optim.epochs = cfg.optim.epochs;
                saved
            }
            None => cfg,
        };
        std::fs::create_dir_all(run_dir).with_context(|| format!("{}: create", run_dir.display()))?;

        // 1) the text side: the model's tokenizer, a given one, or one trained now.
        let text = match (&cfg.model.path, cfg.method.kind) {
            (Some(p), MethodKind::Full | MethodKind::Lora) => Some(load::load_text(p)?),
            _ => {
                let saved = run_dir.join("tokenizer.json");
                let tok = match (&cfg.tokenizer.path, saved.exists()) {
                    (Some(p), _) => Some(
                        tokenizers::Tokenizer::from_file(p).map_err(|e| anyhow!("{}: {e}", p.display()))?,
                    ),
                    (None, true) => Some(
                        tokenizers::Tokenizer::from_file(&saved)
                            .map_err(|e| anyhow!("{}: {e}", saved.display()))?,
                    ),
                    (None, false) if cfg.data.format == super::config::DataFormat::Tokens => None,
                    (None, false) => {
                        let tok = dataset::train_tokenizer(&cfg.data.train, &cfg.tokenizer)?;
                        tok.save(&saved, false).map_err(|e| anyhow!("{}: {e}", saved.display()))?;
                        Some(tok)
                    }
                };
                tok.map(|t| dataset::text_side(t, &cfg.tokenizer))
            }
        };

        // 2) data.
        let mut report = DataReport::default();
        let mut train = dataset::load(&cfg.data.train, &cfg.data, text.as_ref(), &mut report)?;
        let eval = match &cfg.data.eval {
            Some(p) => dataset::load(p, &cfg.data, text.as_ref(), &mut report)?,
            None if cfg.data.eval_fraction > 0.0 => {
                let n = ((train.len() as f64) * cfg.data.eval_fraction).ceil() as usize;
                train.split_off(train.len() - n.min(train.len().saturating_sub(1)))
            }
            None => vec![],
        };
        let (bs, accum) = (cfg.optim.batch_size, cfg.optim.grad_accum.max(1));
        if train.len() < bs {
            bail!(
                "{}: {} windows of {} tokens, fewer than batch_size {bs}",
                cfg.data.train.display(),
                train.len(),
                cfg.data.seq_len
            );
        }

        // 3) the model.
        let t = Self::build(&cfg, text.as_ref(), ckpt.as_ref().map(|c| &c.weights), dev)?;
        let vocab = t.config.vocab_size;
        if let Some(bad) = train.iter().chain(&eval).flat_map(|w| &w.ids).find(|&&id| id as usize >= vocab) {
            bail!(
                "{}: token id {bad} is outside the model's vocabulary of {vocab}",
                cfg.data.train.display()
            );
        }
        if cfg.data.seq_len > t.config.max_position_embeddings {
            bail!(
                "data.seq_len {} exceeds the model's context {}",
                cfg.data.seq_len,
                t.config.max_position_embeddings
            );
        }
        let params = t.vars.iter().map(|(n, v)| (n.clone(), v.clone(), build::decays(n))).collect();
        let o = &cfg.optim;
        let mut opt = AdamW::new(
            params,
            AdamWConfig { beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weight_decay: o.weight_decay },
        )?;

        let train = Batcher::new(train, cfg.data.shuffle, cfg.optim.seed);
        let per_epoch = (train.batches_per_epoch(bs) / accum).max(1) as u64;
        let total_steps = match (cfg.optim.max_steps, cfg.optim.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => (e * per_epoch as f64).ceil() as u64,
            (None, None) => per_epoch,
        };
        cfg.schedule.resolve(total_steps).map_err(|e| anyhow!("[schedule] {e}"))?;

        if let Some(c) = &ckpt {
            opt.load_state(c.optimizer.clone(), c.state.optimizer_step)
                .map_err(|e| anyhow!("{}: {e}", c.path.display()))?;
        }
        let mut me = Self {
            schedule: cfg.schedule.clone(),
            grad_clip: cfg.optim.grad_clip,
            cfg,
            run_dir: run_dir.to_path_buf(),
            dev: dev.clone(),
            t,
            opt,
            train,
            eval,
            text,
            edits: vec![],
            total_steps,
            step: 0,
            skipped: 0,
            bad_in_row: 0,
            best_eval: None,
            evals_since_best: 0,
            report,
            started: Instant::now(),
        };
        if let Some(c) = ckpt {
            let s = c.state;
            me.step = s.step;
            me.train.seek(s.cursor);
            me.schedule = s.edits.last().map(|e| e.new.clone()).unwrap_or(me.schedule);
            me.edits = s.edits;
            me.grad_clip = s.grad_clip;
            me.skipped = s.skipped;
            me.bad_in_row = s.bad_in_row;
            me.best_eval = s.best_eval;
            me.evals_since_best = s.evals_since_best;
        }
        Ok(me)
    }

    fn build(
        cfg: &RunConfig,
        text: Option<&TextSide>,
        resumed: Option<&HashMap<String, Tensor>>,
        dev: &Device,
    ) -> Result<Trainable> {
        let t = match cfg.method.kind {
            MethodKind::Pretrain => {
                let arch = cfg.model.arch.as_ref().ok_or_else(|| anyhow!("[model.arch] is missing"))?;
                let vocab = text.map(|t| t.tokenizer.get_vocab_size(true)).unwrap_or(0);
                let mc = build::config_from_arch(arch, vocab)?;
                let w = match resumed {
                    Some(w) => w.clone(),
                    None => build::random_init(&mc, arch.initializer_range, cfg.optim.seed, dev)?,
                };
                build::full(Path::new("[model.arch]"), mc, w, dev)?
            }
            MethodKind::Full => {
                let path = cfg.model.path.as_ref().ok_or_else(|| anyhow!("model.path is missing"))?;
                let (mc, mut w) = load::load_weights(path, dev)?;
                if let Some(r) = resumed {
                    w = r.clone();
                }
                build::full(path, mc, w, dev)?
            }
            MethodKind::Lora => {
                let path = cfg.model.path.as_ref().ok_or_else(|| anyhow!("model.path is missing"))?;
                let (mc, w) = load::load_weights(path, dev)?;
                let mut s = cfg.method.lora();
                let init = match (resumed, &cfg.method.init) {
                    (Some(r), _) => Some(r.clone()),
                    (None, Some(dir)) => {
                        let (peft, tensors) = crate::load::peft::read_adapter(dir, dev)?;
                        if (peft.r, peft.alpha, peft.rslora) != (s.r, s.alpha, s.rslora) {
                            tracing::warn!(
                                "method.init: using the adapter's r/alpha/rslora ({}, {}, {})",
                                peft.r,
                                peft.alpha,
                                peft.rslora
                            );
                        }
                        // The adapter's shapes fix r; keep the config's dropout.
                        s = LoraSettings { dropout: s.dropout, ..peft };
                        Some(tensors)
                    }
                    (None, None) => None,
                };
                build::lora(path, mc, w, &s, init, cfg.optim.seed, dev)?
            }
        };
        Ok(t)
    }

    pub fn info(&self) -> ModelInfo {
        let trainable: usize = self.t.vars.iter().map(|(_, v)| v.elem_count()).sum();
        let base: usize = self.t.base.values().map(|t| t.elem_count()).sum();
        ModelInfo {
            method: format!("{:?}", self.cfg.method.kind).to_lowercase(),
            params: base + trainable,
            trainable,
            layers: self.t.config.num_hidden_layers,
            vocab: self.t.config.vocab_size,
            total_steps: self.total_steps,
            start_step: self.step,
            train_windows: self.train.len(),
            eval_windows: self.eval.len(),
        }
    }

    pub fn done(&self) -> bool {
        self.step >= self.total_steps
    }

    /// The schedule as resolved for this run's length.
    pub fn schedule(&self) -> Result<Schedule> {
        self.schedule.resolve(self.total_steps).map_err(|e| anyhow!("[schedule] {e}"))
    }

    pub fn schedule_config(&self) -> &ScheduleConfig {
        &self.schedule
    }

    /// Replaces the schedule from the next optimizer step on; returns the edit.
    pub fn set_schedule(&mut self, new: ScheduleConfig) -> Result<Edit> {
        new.resolve(self.total_steps).map_err(|e| anyhow!("schedule edit rejected: {e}"))?;
        let edit = Edit { step: self.step, old: self.schedule.clone(), new: new.clone() };
        self.edits.push(edit.clone());
        self.schedule = new;
        Ok(edit)
    }

    pub fn set_grad_clip(&mut self, clip: f64) -> Result<f64> {
        if !(clip.is_finite() && clip >= 0.0) {
            bail!("grad clip must be a non-negative number, got {clip}");
        }
        Ok(std::mem::replace(&mut self.grad_clip, clip))
    }

    pub fn bad_in_row(&self) -> u64 {
        self.bad_in_row
    }

    fn vars(&self) -> impl Iterator<Item = &Var> {
        self.t.vars.iter().map(|(_, v)| v)
    }

    /// One optimizer step over `grad_accum` micro-batches. The loss is the mean over every
    /// counted prediction of the step.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let t0 = Instant::now();
        let lr = self.schedule()?.lr_at(self.step);
        let (bs, accum) = (self.cfg.optim.batch_size, self.cfg.optim.grad_accum.max(1));
        let batches = (0..accum)
            .map(|_| self.train.next_batch(bs, &self.dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let n_total: f64 = batches.iter().map(|b| b.n_labels).sum();
        if n_total == 0.0 {
            bail!("step {}: every label in the batch is masked out", self.step + 1);
        }
        let mut grads: Option<GradStore> = None;
        let mut loss_sum = 0.0;
        let mut tokens = 0u64;
        for (i, b) in batches.iter().enumerate() {
            // Masks depend only on (seed, step, micro-batch): resume draws the same ones.
            let seed = self.cfg.optim.seed ^ (self.step << 16) ^ i as u64 ^ 0xD50F;
            let mut drop = ops::Dropout::new(seed, self.cfg.method.dropout, self.cfg.optim.dropout);
            let logits = self.t.model.forward_train(&b.ids, &mut drop)?;
            let (sum, _) = ops::causal_lm_nll_sum(&logits, &b.ids, Some(&b.mask))?;
            let loss = (sum / n_total)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            tokens += b.ids.elem_count() as u64;
            let g = loss.backward()?;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    for v in self.vars() {
                        if let Some(gi) = g.get(v.as_tensor()) {
                            let sum = match acc.remove(v.as_tensor()) {
                                Some(a) => (a + gi)?,
                                None => gi.clone(),
                            };
                            acc.insert(v.as_tensor(), sum);
                        }
                    }
                    acc
                }
            });
        }
        let mut grads = grads.ok_or_else(|| anyhow!("no micro-batches"))?;
        let norm = grad_norm(&grads, self.vars())?;
        if !(loss_sum.is_finite() && norm.is_finite()) {
            self.skipped += 1;
            self.bad_in_row += 1;
        } else {
            self.bad_in_row = 0;
            // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is < 1.
            if self.grad_clip > 0.0 {
                let coef = self.grad_clip / (norm + 1e-6);
                if coef < 1.0 {
                    let vars: Vec<Var> = self.vars().cloned().collect();
                    scale_grads(&mut grads, vars.iter(), coef)?;
                }
            }
            self.opt.step(&grads, lr)?;
        }
        self.step += 1;
        let secs = t0.elapsed().as_secs_f64();
        Ok(StepStats {
            step: self.step,
            loss: loss_sum,
            lr,
            grad_norm: norm,
            tokens,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            skipped: self.skipped,
        })
    }

    /// Mean next-token loss over the eval windows; None without eval data.
    pub fn evaluate(&mut self) -> Result<Option<f64>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let (mut sum, mut n) = (0.0, 0.0);
        for chunk in self.eval.chunks(self.cfg.optim.batch_size.max(1)) {
            let t = chunk[0].ids.len();
            let ids: Vec<u32> = chunk.iter().flat_map(|w| w.ids.iter().copied()).collect();
            let mask: Vec<f32> = chunk.iter().flat_map(|w| w.mask.iter().copied()).collect();
            let ids = Tensor::from_vec(ids, (chunk.len(), t), &self.dev)?;
            let mask = Tensor::from_vec(mask, (chunk.len(), t), &self.dev)?;
            let logits = self.t.model.forward(&ids, None)?.detach();
            let (s, c) = ops::causal_lm_nll_sum(&logits, &ids, Some(&mask))?;
            sum += s.to_scalar::<f32>()? as f64;
            n += c;
        }
        let loss = sum / n.max(1.0);
        if self.best_eval.is_none_or(|b| loss < b) {
            self.best_eval = Some(loss);
            self.evals_since_best = 0;
        } else {
            self.evals_since_best += 1;
        }
        Ok(Some(loss))
    }

    /// True when early stopping's patience has run out.
    pub fn should_stop_early(&self) -> bool {
        let p = self.cfg.run.early_stopping_patience;
        p > 0 && self.evals_since_best >= p
    }

    /// The next-token distribution on the current weights; `base` switches a LoRA adapter off.
    pub fn probe(&self, prompt: &str, chat: bool, top_k: usize, base: bool) -> Result<ProbeResult> {
        let text = self.text.as_ref().ok_or_else(|| anyhow!("this run has no tokenizer to probe with"))?;
        let model = match (&self.t.base_model, base) {
            (Some(m), true) => m,
            _ => &self.t.model,
        };
        crate::infer::probe_model(model, text, prompt, chat, top_k, 1.0)
    }

    fn trainable_tensors(&self) -> HashMap<String, Tensor> {
        self.t.vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    }

    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let state = State {
            step: self.step,
            optimizer_step: self.opt.steps_taken(),
            cursor: self.train.cursor(),
            accum_phase: 0,
            edits: self.edits.clone(),
            grad_clip: self.grad_clip,
            skipped: self.skipped,
            bad_in_row: self.bad_in_row,
            best_eval: self.best_eval,
            evals_since_best: self.evals_since_best,
            seed: self.cfg.optim.seed,
            config: self.cfg.clone(),
        };
        checkpoint::save(
            &self.run_dir.join("checkpoints"),
            &state,
            &self.trainable_tensors(),
            &self.opt.state_tensors(),
            self.cfg.run.keep_last,
        )
    }

    /// Writes the run's product: `adapter/` (LoRA, PEFT format) or `model/` (an HF directory).
    pub fn export(&self) -> Result<PathBuf> {
        match self.cfg.method.kind {
            MethodKind::Lora => export::write_adapter(
                &self.run_dir.join("adapter"),
                &self.cfg.method.lora(),
                &self.trainable_tensors(),
                self.cfg.model.path.as_deref(),
            ),
            MethodKind::Full | MethodKind::Pretrain => {
                let files = self.text.as_ref().map(|text| export::TokenizerFiles {
                    tokenizer: &text.tokenizer,
                    chat_template: text.chat_template.as_deref(),
                    bos_token: text.bos_token.as_deref(),
                    eos_token: text.eos_token.as_deref(),
                });
                let eos = self.text.as_ref().map(|t| t.eos_ids.clone()).unwrap_or_default();
                export::write_hf_dir(
                    &self.run_dir.join("model"),
                    &self.t.config,
                    &self.trainable_tensors(),
                    files.as_ref(),
                    &eos,
                )
            }
        }
    }

    pub fn edits(&self) -> &[Edit] {
        &self.edits
    }
}
