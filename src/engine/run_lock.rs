//! One writer per run directory: a lock file holding the writer's pid, taken with O_EXCL.
//! A lock whose pid is no longer alive (kill -9, OOM, reboot) is stale and is taken over, with
//! a log line; a live one refuses the second writer, naming its pid. Dropping the lock removes
//! the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const LOCK_FILE: &str = ".whet-lock";

#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// Whether a process with this pid exists (signal 0 probes without sending anything).
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the pid exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// When a process started, in seconds since the epoch, from /proc (Linux); None elsewhere.
fn started_at(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    // There, field 22 of the line (starttime, clock ticks after boot) is the 20th.
    let ticks: u64 = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| boot + ticks / hz as u64)
}

/// Whether the lock in `run_dir` is held: its pid is alive and is the process that wrote it.
/// After a reboot the pid may belong to another process, one started after the lock was
/// written; that lock is stale too.
pub fn held(run_dir: &Path) -> Option<i32> {
    let pid = holder(run_dir)?;
    if !alive(pid) {
        return None;
    }
    let written = std::fs::metadata(run_dir.join(LOCK_FILE))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    match (started_at(pid), written) {
        // One second of slack: the two clocks round differently.
        (Some(start), Some(written)) if start > written + 1 => None,
        _ => Some(pid),
    }
}

/// The pid recorded in `run_dir`'s lock, if there is a lock.
pub fn holder(run_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(run_dir.join(LOCK_FILE)).ok()?.trim().parse().ok()
}

impl RunLock {
    /// Takes `run_dir`'s lock for this process, or says who holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(LOCK_FILE);
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())
                        .with_context(|| format!("{}: write", path.display()))?;
                    f.sync_all().with_context(|| format!("{}: fsync", path.display()))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match held(run_dir) {
                    Some(pid) if pid as u32 != std::process::id() => bail!(
                        "{}: another whet (pid {pid}) is writing this run; attach to it, or stop it first",
                        run_dir.display()
                    ),
                    Some(_) => bail!("{}: this process already holds the run's lock", run_dir.display()),
                    None => {
                        let stale = holder(run_dir);
                        tracing::warn!(
                            "{}: taking over a stale lock (pid {stale:?} is gone, or is another process now)",
                            path.display()
                        );
                        std::fs::remove_file(&path)
                            .with_context(|| format!("{}: remove stale lock", path.display()))?;
                    }
                },
                Err(e) => return Err(e).with_context(|| format!("{}: create", path.display())),
            }
        }
        bail!("{}: could not take the lock", path.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Best effort: a lock left behind is stale once this process is gone.
        let _ = std::fs::remove_file(&self.path);
    }
}
