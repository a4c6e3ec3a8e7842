//! The engine host: the process that owns a run started from the workbench or by
//! `whet train --detach`, so that the run outlives the terminal that started it.
//!
//! It is `whet host` (hidden), spawned by [`launch::launch`] in its own session with stdin
//! on /dev/null and stdout/stderr on the run's `host.log`; SIGHUP is ignored. It listens on
//! the run's socket (`sockets::socket_path`, 0600 in the 0700 socket directory), runs the
//! engine thread, and routes between them in [`hub::Hub`]. A client that drops costs the
//! run nothing. When the run ends the host lingers briefly for its clients, removes its
//! socket and exits. SIGTERM or SIGINT stops the run with a checkpoint, as `whet train` does.

pub mod conn;
pub mod hub;
pub mod launch;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;

use super::{device, remote, Command};
use hub::{Hub, HubMsg};

/// `whet host`: reads its `Command::Start` (JSON) from stdin, then serves the run.
pub fn main() -> Result<()> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("reading the run to host from stdin")?;
    let start: Command = serde_json::from_str(&text).context("the run to host (stdin)")?;
    let Command::Start { config, run_dir, resume } = start else {
        bail!("whet host: expected a Start command on stdin");
    };
    // stdin was the launcher's pipe; from here on the host reads nothing from a terminal.
    if let Ok(null) = std::fs::File::open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are open; dup2 onto fd 0 replaces the pipe.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    if !resume {
        if let Ok(cwd) = std::env::current_dir() {
            let _ = std::fs::create_dir_all(&run_dir);
            if let Err(e) = std::fs::write(run_dir.join(launch::CWD_FILE), cwd.as_os_str().as_encoded_bytes())
            {
                tracing::warn!("{}: cannot record where the run started: {e}", run_dir.display());
            }
        }
    }
    let dev = device::device(config.run.device)?;
    serve(&run_dir, Command::Start { config, run_dir: run_dir.clone(), resume }, dev)
}

/// Listens on `run_dir`'s socket, starts the run with `start`, and routes until it ends.
pub fn serve(run_dir: &Path, start: Command, dev: Device) -> Result<()> {
    let sock = remote::socket_for(run_dir)?;
    let listener = bind(&sock, run_dir)?;
    let _socket = RemoveOnDrop(sock.clone());
    tracing::info!("engine host pid {} for {} on {}", std::process::id(), run_dir.display(), sock.display());

    let engine = super::spawn(dev);
    let stop = engine.sender();
    let (commands, events) = engine.into_parts();
    let (hub_tx, hub_rx) = mpsc::channel();
    let tx = hub_tx.clone();
    std::thread::Builder::new().name("whet-host-events".into()).spawn(move || {
        for e in events {
            if tx.send(HubMsg::Event(e)).is_err() {
                return;
            }
        }
    })?;
    std::thread::Builder::new()
        .name("whet-host-accept".into())
        .spawn(move || conn::accept_loop(listener, hub_tx))?;
    // SIGTERM / SIGINT: stop with a checkpoint. SIGHUP cannot reach a process in its own
    // session from a terminal, but ignore it anyway: losing a terminal never stops a run.
    let term = ctrlc::set_handler(move || {
        tracing::info!("signal: stopping the run with a checkpoint");
        let _ = stop.send(Command::Stop { save: true });
    });
    if let Err(e) = term {
        tracing::warn!("no signal handler: {e}");
    }
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };

    commands.send(start);
    Hub::new(run_dir).run(hub_rx, &commands);
    commands.shutdown();
    tracing::info!("engine host for {} exits", run_dir.display());
    Ok(())
}

/// Binds the run's socket, 0600. A socket that answers belongs to a live host, which is
/// refused; one that does not is left over from a dead host and is replaced.
fn bind(sock: &Path, run_dir: &Path) -> Result<UnixListener> {
    if sock.exists() {
        if UnixStream::connect(sock).is_ok() {
            bail!("{}: an engine host already runs it; attach with `whet attach {0}`", run_dir.display());
        }
        std::fs::remove_file(sock).with_context(|| format!("{}: remove stale socket", sock.display()))?;
    }
    let listener = UnixListener::bind(sock).with_context(|| format!("{}: bind", sock.display()))?;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow!("{}: chmod 0600: {e}", sock.display()))?;
    Ok(listener)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
