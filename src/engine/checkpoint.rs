//! Checkpoints: `checkpoints/step-N/` holds the trainable weights, AdamW's moments and
//! `state.json`, written through the one atomic writer (`load::atomic_dir`). A directory
//! without `state.json` is incomplete and ignored.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::RunConfig;
use crate::data::Cursor;
use crate::load::atomic_dir;
use crate::optim::SchedulePlan;

/// One schedule edit: from `step` on, `new` replaced `old`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    pub step: u64,
    pub old: SchedulePlan,
    pub new: SchedulePlan,
}

/// What a run has counted and changed so far. The trainer keeps one and a checkpoint saves it
/// as it is (its fields sit at the top level of `state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: u64,
    /// Steps skipped for a non-finite loss or gradient, in all and in a row.
    pub skipped: u64,
    pub bad_in_row: u64,
    pub best_eval: Option<f64>,
    pub evals_since_best: u64,
    /// The clipping norm in force (it can be changed live).
    pub grad_clip: f64,
    /// Every schedule edit, oldest first; the last one's `new` is the plan in force.
    pub edits: Vec<Edit>,
}

impl Progress {
    /// Counts an optimizer step; `updated` is false when it was skipped for a non-finite loss
    /// or gradient.
    pub fn record_step(&mut self, updated: bool) {
        if updated {
            self.bad_in_row = 0;
        } else {
            self.skipped += 1;
            self.bad_in_row += 1;
        }
        self.step += 1;
    }

    pub fn new(grad_clip: f64) -> Self {
        Self {
            step: 0,
            skipped: 0,
            bad_in_row: 0,
            best_eval: None,
            evals_since_best: 0,
            grad_clip,
            edits: vec![],
        }
    }
}

/// Everything but tensors needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(flatten)]
    pub progress: Progress,
    pub optimizer_step: u64,
    pub cursor: Cursor,
    /// The data order of epoch e is a function of (seed, e): this is the whole RNG state.
    pub seed: u64,
    pub config: RunConfig,
    /// The byte size of each tensor file beside `state.json`, so a checkpoint whose file was
    /// truncated or lost after it was written is seen as incomplete. Checkpoints written
    /// before this field have none, and are taken as they are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, u64>,
}

const TENSOR_FILES: [&str; 2] = ["weights.safetensors", "optimizer.safetensors"];

pub struct Loaded {
    pub state: State,
    pub weights: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    pub path: PathBuf,
}

pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Writes a checkpoint atomically under `root` (the run's `checkpoints/`), then prunes to
/// `keep_last` complete checkpoints.
pub fn save(
    root: &Path,
    state: &State,
    weights: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    keep_last: usize,
) -> Result<PathBuf> {
    let dst = root.join(dir_name(state.progress.step));
    atomic_dir::write(&dst, "checkpoint", &[], |tmp| {
        atomic_dir::write_tensors(weights, &tmp.join(TENSOR_FILES[0]))?;
        atomic_dir::write_tensors(optimizer, &tmp.join(TENSOR_FILES[1]))?;
        let mut state = state.clone();
        for f in TENSOR_FILES {
            let p = tmp.join(f);
            let len = std::fs::metadata(&p).with_context(|| format!("{}: stat", p.display()))?.len();
            state.files.insert(f.to_string(), len);
        }
        // state.json last: its presence marks the checkpoint complete, its sizes verify it.
        atomic_dir::write_file(&tmp.join("state.json"), serde_json::to_string_pretty(&state)?.as_bytes())
    })?;
    prune(root, keep_last)?;
    Ok(dst)
}

/// Complete checkpoints, oldest first.
pub fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(root) else { return vec![] };
    let mut out: Vec<(u64, PathBuf)> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let step = p.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()?;
            p.join("state.json").exists().then_some((step, p))
        })
        .collect();
    out.sort();
    out
}

fn prune(root: &Path, keep_last: usize) -> Result<()> {
    let all = list(root);
    if keep_last == 0 || all.len() <= keep_last {
        return Ok(());
    }
    for (_, p) in &all[..all.len() - keep_last] {
        // Renamed out of the list first, in one step, so a prune cut short leaves an `.old-`
        // directory (removed at the next resume), never a `step-` one without its files.
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let old = root.join(format!(".old-{name}"));
        std::fs::rename(p, &old).with_context(|| format!("{}: prune", p.display()))?;
        std::fs::remove_dir_all(&old).with_context(|| format!("{}: prune", old.display()))?;
    }
    Ok(())
}

/// Loads the newest complete checkpoint; leftovers of an interrupted save are removed.
pub fn load_latest(root: &Path, dev: &Device) -> Result<Option<Loaded>> {
    if let Ok(rd) = std::fs::read_dir(root) {
        for p in rd.filter_map(|e| e.ok().map(|e| e.path())) {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(".tmp-") || name.starts_with(".old-") {
                tracing::warn!("{}: removing an incomplete checkpoint", p.display());
                if let Err(e) = std::fs::remove_dir_all(&p) {
                    tracing::warn!("{}: {e}", p.display());
                }
            }
        }
    }
    newest(root, dev)
}

/// The newest checkpoint under `root` that verifies: one whose file was lost or cut since is
/// skipped, with a warning, for the one before it. Reads only (`load_latest` also cleans up).
pub fn newest(root: &Path, dev: &Device) -> Result<Option<Loaded>> {
    let mut errors = vec![];
    for (_, path) in list(root).into_iter().rev() {
        match load(&path, dev) {
            Ok(c) => {
                if !errors.is_empty() {
                    tracing::warn!("using {}, not the newer: {}", path.display(), errors.join("; "));
                }
                return Ok(Some(c));
            }
            Err(e) => {
                tracing::warn!("{e:#}; trying the checkpoint before it");
                errors.push(format!("{e:#}"));
            }
        }
    }
    if errors.is_empty() {
        return Ok(None);
    }
    bail!("{}: no checkpoint verifies: {}", root.display(), errors.join("; "))
}

/// Reads one checkpoint, checking its files against the sizes its `state.json` recorded.
pub fn load(path: &Path, dev: &Device) -> Result<Loaded> {
    let state_path = path.join("state.json");
    let text =
        std::fs::read_to_string(&state_path).with_context(|| format!("{}: read", state_path.display()))?;
    let state: State = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", state_path.display()))?;
    for (f, want) in &state.files {
        let p = path.join(f);
        let got = std::fs::metadata(&p).map(|m| m.len()).map_err(|e| anyhow!("{}: {e}", p.display()))?;
        if got != *want {
            bail!("{}: {got} bytes, but the checkpoint recorded {want}: incomplete", p.display());
        }
    }
    let load = |f: &str| {
        let p = path.join(f);
        candle_core::safetensors::load(&p, dev).map_err(|e| anyhow!("{}: {e}", p.display()))
    };
    Ok(Loaded {
        weights: load(TENSOR_FILES[0])?,
        optimizer: load(TENSOR_FILES[1])?,
        state,
        path: path.to_path_buf(),
    })
}

/// A resumed run's logs made to agree with its checkpoint: `metrics.jsonl` loses the lines
/// after `step` (steps the checkpoint never saw, which are about to be redone), and
/// `edits.jsonl` is rewritten from the checkpoint's edits. Both are replaced atomically.
pub fn trim_logs(run_dir: &Path, step: u64, edits: &[Edit]) -> Result<()> {
    let metrics = run_dir.join("metrics.jsonl");
    if let Ok(text) = std::fs::read_to_string(&metrics) {
        let kept: String = text
            .lines()
            .filter(|l| {
                let v: Option<serde_json::Value> = serde_json::from_str(l).ok();
                v.and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if kept.len() != text.len() {
            tracing::info!(
                "{}: dropped the lines after step {step}, the checkpoint resumed",
                metrics.display()
            );
            atomic_dir::write_file(&metrics, kept.as_bytes())?;
        }
    }
    let mut lines = String::new();
    for e in edits {
        lines.push_str(&serde_json::to_string(e)?);
        lines.push('\n');
    }
    atomic_dir::write_file(&run_dir.join("edits.jsonl"), lines.as_bytes())
}
