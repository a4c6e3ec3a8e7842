//! The one writer of output directories (checkpoints, PEFT adapters, HF model directories):
//! fill a temp sibling, fsync every file and the directory, then rename it into place.
//!
//! What whet writes carries a marker file, and only a directory with the marker (or an empty
//! one) is ever replaced: `whet merge --out .` must not empty the current directory. There is
//! no `--force` past this: a person moves their own files, whet does not.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};

/// The marker file in every directory whet writes.
pub const MARKER: &str = ".whet-output";

/// Writes `target` atomically with `fill`, which writes the files into the directory it is
/// given. `kind` goes into the marker (`checkpoint`, `peft-adapter`, `hf-model`). `reading`
/// names inputs of the same job (the model being merged): the target may be none of them, nor
/// inside or around one.
pub fn write(
    target: &Path,
    kind: &str,
    reading: &[&Path],
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    check_target(target, reading)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: not a directory name whet can write", target.display()))?;
    std::fs::create_dir_all(&parent).with_context(|| format!("{}: create", parent.display()))?;
    let tmp = parent.join(format!(".tmp-{name}"));
    if tmp.exists() {
        // A leftover of an interrupted write of this same target: ours by its name.
        std::fs::remove_dir_all(&tmp).with_context(|| format!("{}: remove stale", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("{}: create", tmp.display()))?;
    fill(&tmp)?;
    let marker =
        serde_json::json!({"written_by": "whet", "version": env!("CARGO_PKG_VERSION"), "kind": kind});
    std::fs::write(tmp.join(MARKER), format!("{marker}\n"))
        .with_context(|| format!("{}: write", tmp.display()))?;
    sync_tree(&tmp)?;
    if target.exists() {
        // Move the old copy aside first, so a crash leaves one complete copy on disk.
        let old = parent.join(format!(".old-{name}"));
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("{}: remove stale", old.display()))?;
        }
        std::fs::rename(target, &old).with_context(|| format!("{}: move aside", target.display()))?;
        std::fs::rename(&tmp, target).with_context(|| format!("{}: rename", target.display()))?;
        std::fs::remove_dir_all(&old).with_context(|| format!("{}: remove", old.display()))?;
    } else {
        std::fs::rename(&tmp, target).with_context(|| format!("{}: rename", target.display()))?;
    }
    fsync(&parent)?;
    Ok(target.to_path_buf())
}

/// True when whet wrote `dir`: it has the marker, or it was written before markers existed and
/// is unmistakably whet's: a complete checkpoint (`state.json` is written last), or the
/// `adapter/` or `model/` export inside a run directory (beside `metrics.jsonl` and
/// `checkpoints/`), which a resumed old run replaces at its end.
pub fn written_by_whet(dir: &Path) -> bool {
    if dir.join(MARKER).is_file() {
        return true;
    }
    let checkpoint = ["state.json", "weights.safetensors", "optimizer.safetensors"];
    if checkpoint.iter().all(|f| dir.join(f).is_file()) {
        return true;
    }
    let export = dir.file_name().is_some_and(|n| n == "adapter" || n == "model");
    let run =
        dir.parent().is_some_and(|r| r.join("metrics.jsonl").is_file() && r.join("checkpoints").is_dir());
    export && run
}

/// Refuses a target whet may not write (see `write`). `write` calls it; a command may call it
/// first, to fail before its slow part.
pub fn check_target(target: &Path, reading: &[&Path]) -> Result<()> {
    let t = absolute(target)?;
    for r in reading {
        let r = absolute(r)?;
        if t == r || r.starts_with(&t) || t.starts_with(&r) {
            bail!(
                "{}: this is the model being read ({}); write somewhere else",
                target.display(),
                r.display()
            );
        }
    }
    if !target.exists() {
        return Ok(());
    }
    if !target.is_dir() {
        bail!("{}: exists and is not a directory", target.display());
    }
    let empty = std::fs::read_dir(target)
        .with_context(|| format!("{}: cannot list", target.display()))?
        .next()
        .is_none();
    if !empty && !written_by_whet(target) {
        bail!(
            "{}: exists and holds files whet did not write (no {MARKER}); whet only replaces its own \
             output, so choose a new or empty directory",
            target.display()
        );
    }
    Ok(())
}

/// The path made absolute with symlinks resolved as far as it exists.
fn absolute(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).with_context(|| format!("{}: cannot resolve", p.display()))?;
    let mut existing = abs.as_path();
    let mut rest = vec![];
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return Ok(abs),
        }
    }
    let mut out =
        existing.canonicalize().with_context(|| format!("{}: cannot resolve", existing.display()))?;
    out.extend(rest.iter().rev());
    Ok(out)
}

fn fsync(p: &Path) -> Result<()> {
    File::open(p).and_then(|f| f.sync_all()).with_context(|| format!("{}: fsync", p.display()))
}

/// fsyncs every file under `dir`, then `dir`.
fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let p = e.with_context(|| format!("{}: cannot list", dir.display()))?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            fsync(&p)?;
        }
    }
    fsync(dir)
}

/// Writes bytes to a file inside the directory being filled (`write` fsyncs it with the rest).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        // Every file whet writes is 0666 less the umask, as `File::create` makes them
        // (tempfile's own default, 0600, made some outputs unreadable to the group).
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .prefix(".tmp-whet-")
        .tempfile_in(&dir)
        .with_context(|| format!("{}: cannot create a temp file", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("{}: write", path.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("{}: fsync", path.display()))?;
    tmp.persist(path).map_err(|e| anyhow!("{}: rename into place: {e}", path.display()))?;
    Ok(())
}

/// Saves tensors (moved to the CPU) to a safetensors file.
pub fn write_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let cpu: HashMap<String, Tensor> =
        map.iter().map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?))).collect::<Result<_>>()?;
    candle_core::safetensors::save(&cpu, path).with_context(|| format!("{}: write", path.display()))?;
    // The safetensors writer makes its file 0600; whet's rule is 0666 less the umask.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666 & !umask()))
        .with_context(|| format!("{}: chmod", path.display()))
}

/// The process's umask, from /proc (reading it with umask(2) would change it for a moment for
/// every thread); 022 where /proc does not say.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:")).map(|u| u.trim().to_string()))
        .and_then(|u| u32::from_str_radix(&u, 8).ok())
        .unwrap_or(0o022)
}
