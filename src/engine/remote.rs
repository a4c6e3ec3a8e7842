//! A client's [`EngineHandle`] on an engine host's socket: the same handle the in-process
//! engine gives, so the workbench's `update`/`render` do not know which they talk to.
//!
//! Two threads carry the frames: a reader turns event frames into the handle's event channel
//! (it ends, closing the channel, when the host goes), and a writer turns the command channel
//! into frames. `Shutdown` on a remote handle means "detach": the writer closes the
//! connection and the run goes on in the host.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::wire::{self, WireError};
use super::{sockets, CommandHandle, EngineHandle};
use crate::engine::{Command, Event};

/// How long a host has to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket of `run_dir`'s host, in this user's socket directory.
pub fn socket_for(run_dir: &Path) -> Result<std::path::PathBuf> {
    let state = sockets::state_dir(|k| std::env::var(k).ok())?;
    sockets::socket_path(&sockets::socket_dir(&state)?, run_dir)
}

/// Attaches to the host running `run_dir`.
pub fn attach(run_dir: &Path) -> Result<EngineHandle> {
    let sock = socket_for(run_dir)?;
    connect(&sock).with_context(|| format!("{}: no engine host answers for this run", run_dir.display()))
}

/// Connects to a host's socket, shakes hands, and starts the two frame threads.
pub fn connect(sock: &Path) -> Result<EngineHandle> {
    let mut stream = UnixStream::connect(sock).with_context(|| format!("{}: connect", sock.display()))?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let theirs = wire::handshake(&mut stream).map_err(|e| anyhow!("{}: {e}", sock.display()))?;
    stream.set_read_timeout(None)?;
    tracing::info!("attached to {} (host whet {})", sock.display(), theirs.whet);

    let (etx, erx) = mpsc::channel::<Event>();
    let mut reader = stream.try_clone()?;
    std::thread::Builder::new().name("whet-remote-read".into()).spawn(move || loop {
        match wire::read_frame::<Event>(&mut reader) {
            Ok(e) => {
                if etx.send(e).is_err() {
                    return;
                }
            }
            Err(WireError::Closed) => return,
            Err(e) => {
                tracing::warn!("engine host connection: {e}");
                return;
            }
        }
    })?;

    let (ctx, crx) = mpsc::channel::<Command>();
    let mut writer = stream;
    let join = std::thread::Builder::new().name("whet-remote-write".into()).spawn(move || {
        for c in crx {
            if c == Command::Shutdown {
                break; // detach: the host's run goes on
            }
            if let Err(e) = wire::write_frame(&mut writer, &c) {
                tracing::warn!("engine host connection: {e}");
                break;
            }
        }
        let _ = writer.shutdown(std::net::Shutdown::Both);
    })?;
    Ok(EngineHandle { commands: CommandHandle { commands: ctx, join: Some(join) }, events: erx })
}
