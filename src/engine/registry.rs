//! Every run this user started on this machine: a small list of run directories in whet's
//! state directory (`runs.json`), since an `out_dir` can be anywhere. Directories that no
//! longer exist are pruned when it is read. A run's status, step, loss and ETA are read from
//! the run directory itself, so the list is right whoever wrote it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::config::RunConfig;
use super::run_lock::{held, LOCK_FILE};

const FILE: &str = "runs.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// A live process holds the run's lock.
    Running,
    /// The run wrote its product (`adapter/` or `model/`).
    Finished,
    /// Stopped with a checkpoint to resume from.
    Stopped,
    /// The run stopped on an error (its host left the reason in `.whet-failed`).
    Failed,
    /// Its writer died (kill -9, OOM, reboot): the lock names a dead pid.
    Stale,
    /// Nothing to resume: no checkpoint and no product.
    Empty,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub status: RunStatus,
    pub step: Option<u64>,
    pub loss: Option<f64>,
    pub max_steps: Option<u64>,
    /// Seconds to go at the run's average pace so far.
    pub eta_s: Option<f64>,
    /// The step of its newest complete checkpoint: where a resume continues from.
    pub checkpoint: Option<u64>,
}

fn read_list(state: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string(state.join(FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<PathBuf>>(&t).ok())
        .unwrap_or_default()
}

fn write_list(state: &Path, dirs: &[PathBuf]) -> Result<()> {
    std::fs::create_dir_all(state).with_context(|| format!("{}: create", state.display()))?;
    let text = serde_json::to_string_pretty(dirs)?;
    crate::load::atomic_dir::write_file(&state.join(FILE), text.as_bytes())
}

/// Adds `run_dir` (absolute) to the list, pruning directories that are gone.
pub fn register(state: &Path, run_dir: &Path) -> Result<()> {
    let abs =
        std::path::absolute(run_dir).with_context(|| format!("{}: absolute path", run_dir.display()))?;
    let mut dirs: Vec<PathBuf> = read_list(state).into_iter().filter(|d| d.is_dir()).collect();
    if !dirs.contains(&abs) {
        dirs.push(abs);
    }
    write_list(state, &dirs)
}

/// The registered runs that still exist, oldest registration first.
pub fn list(state: &Path) -> Vec<RunSummary> {
    read_list(state).into_iter().filter(|d| d.is_dir()).map(|d| summary(&d)).collect()
}

/// What a run directory says about its run.
pub fn summary(dir: &Path) -> RunSummary {
    let status = match held(dir) {
        Some(_) => RunStatus::Running,
        _ if dir.join(LOCK_FILE).exists() => RunStatus::Stale,
        _ if dir.join(super::host::hub::FAILED_FILE).exists() => RunStatus::Failed,
        _ if dir.join("adapter").is_dir() || dir.join("model").is_dir() => RunStatus::Finished,
        _ if dir.join("checkpoints").is_dir() => RunStatus::Stopped,
        _ => RunStatus::Empty,
    };
    let last = tail(&dir.join("metrics.jsonl"), 64 << 10).and_then(|t| {
        t.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("loss").is_some())
    });
    let step = last.as_ref().and_then(|v| v["step"].as_u64());
    let loss = last.as_ref().and_then(|v| v["loss"].as_f64());
    let elapsed = last.as_ref().and_then(|v| v["elapsed_s"].as_f64());
    let max_steps = std::fs::read_to_string(dir.join("config.toml"))
        .ok()
        .and_then(|t| RunConfig::from_toml(&t).ok())
        .and_then(|c| c.optim.max_steps);
    let eta_s = match (step, max_steps, elapsed, status) {
        (Some(s), Some(m), Some(e), RunStatus::Running) if s > 0 => {
            Some(e / s as f64 * m.saturating_sub(s) as f64)
        }
        _ => None,
    };
    let checkpoint = super::checkpoint::list(&dir.join("checkpoints")).last().map(|(s, _)| *s);
    RunSummary { dir: dir.to_path_buf(), status, step, loss, max_steps, eta_s, checkpoint }
}

/// The last `n` bytes of a file as text (the first, likely cut, line dropped when the file is
/// longer): the Runs list is re-read every few seconds, and a long run's metrics are large.
fn tail(path: &Path, n: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(n);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Some(match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    })
}
