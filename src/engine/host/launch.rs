//! Starting an engine host for a run: `whet host` in its own session (setsid), its output on
//! the run's `host.log`, the run handed over on its stdin; then waiting for its socket.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::engine::{remote, Command};

/// The host's own output (panics, anything before its log is set up).
pub const HOST_LOG: &str = "host.log";
/// Where a run was first started (its relative data paths start there), written by its host.
pub const CWD_FILE: &str = ".whet-cwd";
/// How long a new host has to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts a host for `start` (a `Command::Start`) and returns its socket once it listens.
/// The host is this same executable, so the launcher must be the `whet` binary.
pub fn launch(start: &Command) -> Result<PathBuf> {
    let Command::Start { config, run_dir, resume } = start else { bail!("launch: not a Start command") };
    std::fs::create_dir_all(run_dir).with_context(|| format!("{}: create", run_dir.display()))?;
    // A run's data paths are relative to where it was first started: a resume runs its host
    // there (the host records it), wherever the resume was asked from.
    let run_dir =
        &std::path::absolute(run_dir).with_context(|| format!("{}: absolute path", run_dir.display()))?;
    let cwd = resume
        .then(|| std::fs::read_to_string(run_dir.join(CWD_FILE)).ok())
        .flatten()
        .map(PathBuf::from)
        .filter(|d| d.is_dir());
    let start = &Command::Start { config: config.clone(), run_dir: run_dir.clone(), resume: *resume };
    // The lock alone says whether a live process trains it (no need to read its metrics).
    if crate::engine::run_lock::held(run_dir).is_some() {
        bail!("{}: this run is already training; attach with `whet attach {0}`", run_dir.display());
    }
    let sock = remote::socket_for(run_dir)?;
    if sock.exists() {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            bail!("{}: an engine host already runs it; attach with `whet attach {0}`", run_dir.display());
        }
        // Left by a host that died: the new one binds afresh.
        std::fs::remove_file(&sock).with_context(|| format!("{}: remove stale socket", sock.display()))?;
    }
    let log_path = run_dir.join(HOST_LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("{}: open", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the whet executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("host").env("WHET_LOG_DIR", run_dir).stdin(Stdio::piped()).stdout(log.try_clone()?).stderr(log);
    if let Some(dir) = &cwd {
        cmd.current_dir(dir);
    }
    // SAFETY: setsid is async-signal-safe, as code between fork and exec must be. A new
    // session has no controlling terminal, so a hang-up there never reaches the host.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = cmd.spawn().context("starting the engine host")?;
    let pid = child.id();
    let json = serde_json::to_vec(start)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&json).context("handing the run to the engine host")?;
    }
    let t0 = Instant::now();
    let result = loop {
        // The host binds and listens in one call, so the file's existence means it listens.
        if sock.exists() {
            break Ok(sock);
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow!(
                "the engine host for {} exited ({status}) before it listened:\n{}",
                run_dir.display(),
                log_tail(&log_path, 20)
            ));
        }
        if t0.elapsed() > START_TIMEOUT {
            break Err(anyhow!(
                "the engine host (pid {pid}) did not open {} within {}s; see {}",
                sock.display(),
                START_TIMEOUT.as_secs(),
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Reap it when it exits, so it does not linger as a zombie under a long-lived workbench.
    let _ = std::thread::Builder::new().name("whet-host-reaper".into()).spawn(move || child.wait());
    tracing::info!("engine host pid {pid} for {}", run_dir.display());
    result
}

/// The last `n` lines of a file, for an error message.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
