//! A training run: the model, optimizer, data cursor, schedule and counters, and the step.
//! The engine thread owns one of these; tests drive it directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor, Var};

use super::build::{self, Trainable};
use super::checkpoint::{self, Edit, Progress, State};
use super::config::{MethodKind, RunConfig};
use super::protocol::{ModelInfo, StepStats, Weights};
use crate::data::batcher::Batch;
use crate::data::{dataset, Batcher, DataReport};
use crate::load::{self, TextSide};
use crate::logits::ProbeResult;
use crate::model::grad_sink::GradSink;
use crate::model::{flops, ops, Kernels, Llama};
use crate::optim::grads::{accumulate, clip_grad_norm};
use crate::optim::{AdamW, AdamWConfig, Schedule, SchedulePlan};

pub struct Trainer {
    pub cfg: RunConfig,
    pub run_dir: PathBuf,
    /// This process is the run directory's only writer while the trainer lives.
    _lock: super::run_lock::RunLock,
    dev: Device,
    t: Trainable,
    opt: AdamW,
    /// The weights' gradient buffers, written in place by the fused backwards.
    sink: GradSink,
    train: Batcher,
    eval: Batcher,
    text: Option<TextSide>,
    /// The schedule in force, resolved for this run's length.
    schedule: Schedule,
    progress: Progress,
    pub total_steps: u64,
    pub report: DataReport,
    started: Instant,
    /// Training FLOPs per token, for the achieved FLOP/s in each step's stats.
    flops_per_token: f64,
    /// The GPU's dense bf16 peak, for the MFU; None on the CPU.
    peak_flops: Option<f64>,
}

impl Trainer {
    /// Sets up a run in `run_dir`; with `resume`, continues from its newest checkpoint.
    pub fn new(cfg: RunConfig, run_dir: &Path, resume: bool, dev: &Device) -> Result<Self> {
        build::check_method(&cfg)?;
        if let Some(spec) = cfg.run.device.filter(|s| !s.is(dev)) {
            bail!(
                "[run] device = \"{spec}\", but this engine runs on {}: start whet with --device {spec}, \
                 or remove the key",
                super::device::name(dev)
            );
        }
        let ckpt = if resume { Some(latest_checkpoint(run_dir, dev)?) } else { None };
        // A resumed run keeps the config it was started with (its data order and model depend
        // on it); only its length and the [run] cadence may change.
        let cfg = match &ckpt {
            Some(c) => c.state.config.continued_as(&cfg),
            None => cfg,
        };
        std::fs::create_dir_all(run_dir).with_context(|| format!("{}: create", run_dir.display()))?;
        let lock = super::run_lock::RunLock::acquire(run_dir)?;
        // The user's list of runs (`whet runs`): best effort, a run trains without it.
        match super::sockets::state_dir(|k| std::env::var(k).ok()) {
            Ok(state) => {
                if let Err(e) = super::registry::register(&state, run_dir) {
                    tracing::warn!("could not add {} to the list of runs: {e:#}", run_dir.display());
                }
            }
            Err(e) => tracing::warn!("no state directory for the list of runs: {e:#}"),
        }

        // 1) the text side, 2) the data, 3) the model and its optimizer, 4) the checkpoint.
        let model_path = cfg.model.path.as_deref().filter(|_| cfg.method.kind != MethodKind::Pretrain);
        let text = dataset::run_text_side(model_path, &cfg.data, &cfg.tokenizer, run_dir)?;
        let (train, eval, report) = dataset::splits(&cfg.data, text.as_ref())?;
        // Before the model loads, so a config whose data cannot fill a batch fails at once.
        if train.len() < cfg.optim.batch_size {
            bail!(
                "{}: {} windows of {} tokens, fewer than batch_size {}",
                cfg.data.train.display(),
                train.len(),
                cfg.data.seq_len,
                cfg.optim.batch_size
            );
        }
        let vocab = text.as_ref().map(|t| t.tokenizer.get_vocab_size(true)).unwrap_or(0);
        let t = build::trainable(&cfg, vocab, ckpt.as_ref().map(|c| &c.weights), dev)?;
        build::check_data_fits(&cfg, &t, &train, &eval)?;
        let opt = optimizer(&cfg, &t)?;

        let (bs, accum) = (cfg.optim.batch_size, cfg.optim.grad_accum.max(1));
        let train = Batcher::new(train, cfg.data.shuffle, cfg.optim.seed);
        let per_epoch = (train.batches_per_epoch(bs) / accum).max(1) as u64;
        let total_steps = match (cfg.optim.max_steps, cfg.optim.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => (e * per_epoch as f64).ceil() as u64,
            (None, None) => per_epoch,
        };
        let adapters = cfg.method.kind.is_lora().then(|| t.vars.iter().map(|(_, v)| v.elem_count()).sum());
        let flops_per_token = flops::train_flops_per_token(&t.config, cfg.data.seq_len, adapters);
        let peak_flops = super::device::gpu_name(dev).and_then(|name| flops::gpu_peak_flops(&name));
        let mut me = Self {
            _lock: lock,
            flops_per_token,
            peak_flops,
            schedule: cfg.schedule.resolve(total_steps),
            progress: Progress::new(cfg.optim.grad_clip),
            cfg,
            run_dir: run_dir.to_path_buf(),
            dev: dev.clone(),
            sink: GradSink::new(t.vars.iter().map(|(_, v)| v)),
            t,
            opt,
            train,
            eval: Batcher::new(eval, false, 0),
            text,
            total_steps,
            report,
            started: Instant::now(),
        };
        if let Some(c) = ckpt {
            me.restore(c)?;
        }
        Ok(me)
    }

    /// Continues from a checkpoint: optimizer moments, data cursor, counters and edits.
    fn restore(&mut self, c: checkpoint::Loaded) -> Result<()> {
        self.opt
            .load_state(c.optimizer, c.state.optimizer_step)
            .map_err(|e| anyhow!("{}: {e}", c.path.display()))?;
        self.train.seek(c.state.cursor);
        self.progress = c.state.progress;
        if let Some(e) = self.progress.edits.last() {
            self.schedule = e.new.resolve(self.total_steps);
        }
        Ok(())
    }

    pub fn info(&self) -> ModelInfo {
        let trainable: usize = self.t.vars.iter().map(|(_, v)| v.elem_count()).sum();
        let base: usize = self.t.base.values().map(|t| t.elem_count()).sum::<usize>()
            + self.t.quant.values().map(|q| q.dims().0 * q.dims().1).sum::<usize>();
        ModelInfo {
            method: format!("{:?}", self.cfg.method.kind).to_lowercase(),
            params: base + trainable,
            trainable,
            layers: self.t.config.num_hidden_layers,
            vocab: self.t.config.vocab_size,
            total_steps: self.total_steps,
            start_step: self.progress.step,
            train_windows: self.train.len(),
            eval_windows: self.eval.len(),
            schedule: self.schedule.plan.clone(),
            grad_clip: self.progress.grad_clip,
        }
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.progress.step
    }

    pub fn done(&self) -> bool {
        self.progress.step >= self.total_steps
    }

    /// The schedule in force, resolved for this run's length.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Replaces the schedule from the next optimizer step on; returns the edit.
    pub fn set_schedule(&mut self, new: SchedulePlan) -> Result<Edit> {
        new.validate().map_err(|e| anyhow!("schedule edit rejected: {e}"))?;
        let edit = Edit { step: self.progress.step, old: self.schedule.plan.clone(), new };
        self.schedule = edit.new.resolve(self.total_steps);
        self.progress.edits.push(edit.clone());
        Ok(edit)
    }

    pub fn set_grad_clip(&mut self, clip: f64) -> Result<f64> {
        crate::optim::grads::check_max_norm(clip).map_err(anyhow::Error::msg)?;
        Ok(std::mem::replace(&mut self.progress.grad_clip, clip))
    }

    pub fn bad_in_row(&self) -> u64 {
        self.progress.bad_in_row
    }

    pub fn edits(&self) -> &[Edit] {
        &self.progress.edits
    }

    fn vars(&self) -> Vec<Var> {
        self.t.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// One optimizer step over `grad_accum` micro-batches, in nanoGPT's order.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let (t0, step, vars) = (Instant::now(), self.progress.step, self.vars());
        let lr = self.schedule.lr_at(step);
        // 1) batches; the step's loss is the mean over all their labels, so accumulation does
        //    not skew it.
        let (batches, n_labels) = self.next_batches()?;
        // 2) forward, loss, backward, accumulate.
        let (mut grads, mut loss) = (None, 0.0);
        let mut drops: Vec<_> = (0..batches.len()).map(|i| self.dropout(step, i)).collect();
        let lent = self.sink.lend();
        for (b, drop) in batches.iter().zip(&mut drops) {
            let m = &self.t.model;
            let t_fwd = Instant::now();
            let (part, g) = if self.cfg.optim.gradient_checkpointing {
                let (nll, g) =
                    m.train_grads_checkpointed(&b.ids, Some(&b.mask), drop, 1.0 / n_labels, &vars)?;
                ((nll / n_labels)?.to_scalar::<f32>()? as f64, g)
            } else {
                let part = (m.train_nll_sum(&b.ids, Some(&b.mask), drop)?.0 / n_labels)?;
                let t_bwd = Instant::now();
                let g = part.backward()?;
                tracing::debug!(forward = ?(t_bwd - t_fwd), backward = ?t_bwd.elapsed());
                (part.to_scalar::<f32>()? as f64, g)
            };
            loss += part;
            grads = Some(accumulate(grads, g, &vars)?);
        }
        drop(lent);
        let mut grads = grads.ok_or_else(|| anyhow!("no micro-batches"))?;
        self.sink.drain_into(&mut grads)?;
        // 3) clip, then step, unless the loss or the gradient is not finite.
        let t_opt = Instant::now();
        let norm = clip_grad_norm(&mut grads, &vars, self.progress.grad_clip)?;
        let t_step = Instant::now();
        let finite = loss.is_finite() && norm.is_finite();
        if finite {
            self.opt.step(&grads, lr)?;
        }
        tracing::debug!(clip = ?(t_step - t_opt), optimizer = ?t_step.elapsed());
        self.progress.record_step(finite);
        let tokens = batches.iter().map(|b| b.ids.elem_count() as u64).sum();
        Ok(self.stats(t0, loss, lr, norm, tokens))
    }

    /// The step's `grad_accum` micro-batches and their number of counted labels.
    fn next_batches(&mut self) -> Result<(Vec<Batch>, f64)> {
        let (bs, accum) = (self.cfg.optim.batch_size, self.cfg.optim.grad_accum.max(1));
        let batches =
            (0..accum).map(|_| self.train.next_batch(bs, &self.dev)).collect::<Result<Vec<_>, _>>()?;
        let n_labels: f64 = batches.iter().map(|b| b.n_labels).sum();
        if n_labels == 0.0 {
            bail!("step {}: every label in the batch is masked out", self.progress.step + 1);
        }
        Ok((batches, n_labels))
    }

    fn stats(&self, t0: Instant, loss: f64, lr: f64, grad_norm: f64, tokens: u64) -> StepStats {
        let tokens_per_s = tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        StepStats {
            step: self.progress.step,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s,
            flops_per_s: self.flops_per_token * tokens_per_s,
            mfu: self.peak_flops.map(|peak| self.flops_per_token * tokens_per_s / peak),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            skipped: self.progress.skipped,
        }
    }

    /// Dropout masks depend only on (seed, step, micro-batch): a resumed run draws the same ones.
    fn dropout(&self, step: u64, micro_batch: usize) -> ops::Dropout {
        let seed = self.cfg.optim.seed ^ (step << 16) ^ micro_batch as u64 ^ 0xD50F;
        ops::Dropout::new(seed, self.cfg.method.dropout, self.cfg.optim.dropout)
    }

    /// Mean next-token loss over the eval windows; None without eval data.
    pub fn evaluate(&mut self) -> Result<Option<f64>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let (mut sum, mut n) = (0.0, 0.0);
        for b in self.eval.in_order(self.cfg.optim.batch_size.max(1), &self.dev) {
            let b = b?;
            let (s, c) = self.t.model.eval_nll_sum(&b.ids, Some(&b.mask))?;
            sum += s.to_scalar::<f32>()? as f64;
            n += c;
        }
        let loss = sum / n.max(1.0);
        let p = &mut self.progress;
        if p.best_eval.is_none_or(|b| loss < b) {
            p.best_eval = Some(loss);
            p.evals_since_best = 0;
        } else {
            p.evals_since_best += 1;
        }
        Ok(Some(loss))
    }

    /// True when early stopping's patience has run out.
    pub fn should_stop_early(&self) -> bool {
        let p = self.cfg.run.early_stopping_patience;
        p > 0 && self.progress.evals_since_best >= p
    }

    /// The next-token distribution on the current weights; `base` switches a LoRA adapter off.
    pub fn next_token(&self, prompt: &str, chat: bool, top_k: usize, base: bool) -> Result<ProbeResult> {
        let model = self.model_for(if base { Weights::Base } else { Weights::Live })?;
        crate::infer::next_token(model, self.text()?, prompt, chat, top_k, 1.0)
    }

    /// The tokenizer and template side, for probing.
    pub fn text(&self) -> Result<&TextSide> {
        self.text.as_ref().ok_or_else(|| anyhow!("this run has no tokenizer to probe with"))
    }

    /// The live model, or its base with the adapter off (a checkpoint is `checkpoint_model`).
    pub fn model_for(&self, w: Weights) -> Result<&Llama> {
        match (w, &self.t.base_model) {
            (Weights::Base, Some(m)) => Ok(m),
            (Weights::Base, None) => bail!("this run has no adapter to switch off (it trains every weight)"),
            (Weights::Live, _) => Ok(&self.t.model),
            (Weights::Checkpoint(s), _) => bail!("checkpoint {s} is not the live model"),
        }
    }

    /// The model as this run's checkpoint of `step` saved it (to compare with the live one).
    pub fn checkpoint_model(&self, step: u64) -> Result<Llama> {
        let dir = self.run_dir.join("checkpoints").join(checkpoint::dir_name(step));
        let saved = checkpoint::load(&dir, &self.dev)
            .with_context(|| format!("checkpoint {step}: save one there first (C), or pick another"))?;
        let vocab = self.text.as_ref().map(|t| t.tokenizer.get_vocab_size(true)).unwrap_or(0);
        Ok(build::trainable(&self.cfg, vocab, Some(&saved.weights), &self.dev)?.model)
    }

    fn trainable_tensors(&self) -> HashMap<String, Tensor> {
        self.t.vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    }

    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let state = State {
            progress: self.progress.clone(),
            optimizer_step: self.opt.steps_taken(),
            cursor: self.train.cursor(),
            seed: self.cfg.optim.seed,
            config: self.cfg.clone(),
            files: Default::default(),
        };
        let root = self.run_dir.join("checkpoints");
        let (weights, moments) = (self.trainable_tensors(), self.opt.state_tensors());
        checkpoint::save(&root, &state, &weights, &moments, self.cfg.run.keep_last)
    }

    /// Writes the run's product: `adapter/` (LoRA, PEFT format) or `model/` (an HF directory).
    pub fn export(&self) -> Result<PathBuf> {
        let weights = self.trainable_tensors();
        match self.cfg.method.kind {
            MethodKind::Lora | MethodKind::Qlora => {
                let base = self.cfg.model.path.as_deref();
                load::peft::write_adapter(
                    &self.run_dir.join("adapter"),
                    &self.cfg.method.lora(),
                    &weights,
                    base,
                )
            }
            MethodKind::Full | MethodKind::Pretrain => {
                // The run may not overwrite the model it fine-tunes (`model.path = runs/x/model`).
                let reading: Vec<&Path> = self.cfg.model.path.iter().map(PathBuf::as_path).collect();
                let out = self.run_dir.join("model");
                load::hf::write_dir(&out, &self.t.config, &weights, self.text.as_ref(), &reading)
            }
        }
    }
}

fn latest_checkpoint(run_dir: &Path, dev: &Device) -> Result<checkpoint::Loaded> {
    let root = run_dir.join("checkpoints");
    checkpoint::load_latest(&root, dev)?
        .ok_or_else(|| anyhow!("{}: no complete checkpoint to resume from", root.display()))
}

/// AdamW over the trainable tensors, with HF's no-decay rule for biases and norms.
fn optimizer(cfg: &RunConfig, t: &Trainable) -> Result<AdamW> {
    let params = t.vars.iter().map(|(n, v)| (n.clone(), v.clone(), build::decays(n))).collect();
    let o = &cfg.optim;
    let c = AdamWConfig { beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weight_decay: o.weight_decay };
    Ok(AdamW::new(params, c)?.with_fused(cfg.run.kernels == Kernels::Fused))
}
