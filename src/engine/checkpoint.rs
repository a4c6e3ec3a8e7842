//! Atomic checkpoints: written into `checkpoints/.tmp-step-N`, fsynced, then renamed to
//! `checkpoints/step-N`. A directory without `state.json` is incomplete and ignored.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::{RunConfig, ScheduleConfig};
use crate::data::Cursor;

/// One schedule edit: from `step` on, `new` replaced `old`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    pub step: u64,
    pub old: ScheduleConfig,
    pub new: ScheduleConfig,
}

/// Everything but tensors needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub step: u64,
    pub optimizer_step: u64,
    pub cursor: Cursor,
    /// Micro-batches of the current optimizer step already consumed (always 0 at a step boundary,
    /// where checkpoints are taken).
    pub accum_phase: usize,
    pub edits: Vec<Edit>,
    pub grad_clip: f64,
    pub skipped: u64,
    pub bad_in_row: u64,
    pub best_eval: Option<f64>,
    pub evals_since_best: u64,
    /// The data order of epoch e is a function of (seed, e): this is the whole RNG state.
    pub seed: u64,
    pub config: RunConfig,
}

pub struct Loaded {
    pub state: State,
    pub weights: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    pub path: PathBuf,
}

pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn fsync_dir(p: &Path) -> Result<()> {
    File::open(p).and_then(|f| f.sync_all()).with_context(|| format!("{}: fsync", p.display()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = File::create(path).with_context(|| format!("{}: create", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("{}: write", path.display()))
}

/// Saves tensors to a safetensors file and fsyncs it.
pub fn save_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let cpu: HashMap<String, Tensor> =
        map.iter().map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?))).collect::<Result<_>>()?;
    candle_core::safetensors::save(&cpu, path).with_context(|| format!("{}: write", path.display()))?;
    File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("{}: fsync", path.display()))
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
    std::fs::create_dir_all(root).with_context(|| format!("{}: create", root.display()))?;
    let name = dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("{}: remove stale", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("{}: create", tmp.display()))?;
    save_tensors(weights, &tmp.join("weights.safetensors"))?;
    save_tensors(optimizer, &tmp.join("optimizer.safetensors"))?;
    // state.json last: its presence marks the checkpoint complete.
    write_synced(&tmp.join("state.json"), serde_json::to_string_pretty(state)?.as_bytes())?;
    fsync_dir(&tmp)?;
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).with_context(|| format!("{}: replace", dst.display()))?;
    }
    std::fs::rename(&tmp, &dst).with_context(|| format!("{} -> {}: rename", tmp.display(), dst.display()))?;
    fsync_dir(root)?;
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
        std::fs::remove_dir_all(p).with_context(|| format!("{}: prune", p.display()))?;
    }
    Ok(())
}

/// Loads the newest complete checkpoint; leftovers of an interrupted save are removed.
pub fn load_latest(root: &Path, dev: &Device) -> Result<Option<Loaded>> {
    if let Ok(rd) = std::fs::read_dir(root) {
        for p in rd.filter_map(|e| e.ok().map(|e| e.path())) {
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".tmp-")) {
                tracing::warn!("{}: removing an incomplete checkpoint", p.display());
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
    let Some((_, path)) = list(root).pop() else { return Ok(None) };
    let state_path = path.join("state.json");
    let text =
        std::fs::read_to_string(&state_path).with_context(|| format!("{}: read", state_path.display()))?;
    let state: State = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", state_path.display()))?;
    let load = |f: &str| {
        let p = path.join(f);
        candle_core::safetensors::load(&p, dev).map_err(|e| anyhow!("{}: {e}", p.display()))
    };
    Ok(Some(Loaded {
        weights: load("weights.safetensors")?,
        optimizer: load("optimizer.safetensors")?,
        state,
        path,
    }))
}
