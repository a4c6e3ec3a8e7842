//! One thread per client connection, and the accept loop that starts them.
//!
//! Nothing a client does can cost the host more than its own connection: the peer's uid is
//! checked before a byte is read; a client that never says hello, sends a malformed,
//! oversized or unknown frame, or stalls mid-frame is logged and dropped. Events go out
//! through a bounded queue and a writer with a write timeout, so a client that stops reading
//! is dropped too, and the hub never waits on anyone.

use std::io::ErrorKind;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::time::Duration;

use super::hub::HubMsg;
use crate::engine::sockets::{peer_allowed, peer_uid};
use crate::engine::wire::{self, WireError};
use crate::engine::{Command, Event};

/// A client has this long to say hello, and to finish a frame once it has begun one.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that cannot take an event for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Batches of events queued for one client before it counts as not reading.
pub const QUEUE: usize = 1024;

/// Whether the peer may talk to this host (the same uid). A refusal is logged with the uid.
pub fn admit(stream: &UnixStream) -> Result<(), String> {
    match peer_allowed(stream) {
        Ok(true) => Ok(()),
        Ok(false) => {
            let uid = peer_uid(stream).map(|u| u.to_string()).unwrap_or_else(|_| "?".into());
            let why = format!("refused a connection from uid {uid}: only this user may attach");
            tracing::warn!("{why}");
            Err(why)
        }
        Err(e) => {
            let why = format!("refused a connection: cannot read the peer's credentials ({e})");
            tracing::warn!("{why}");
            Err(why)
        }
    }
}

/// Accepts clients for as long as the process lives.
pub fn accept_loop(listener: UnixListener, hub: Sender<HubMsg>) {
    let mut next = 1u64;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        if admit(&stream).is_err() {
            continue;
        }
        let (id, hub) = (next, hub.clone());
        next += 1;
        let spawned = std::thread::Builder::new()
            .name(format!("whet-client-{id}"))
            .spawn(move || serve(id, stream, hub));
        if let Err(e) = spawned {
            tracing::warn!("client {id}: no thread for it: {e}");
        }
    }
}

/// One client, from hello to goodbye.
fn serve(id: u64, mut stream: UnixStream, hub: Sender<HubMsg>) {
    let timeouts = stream
        .set_read_timeout(Some(STALL_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(WRITE_TIMEOUT)));
    if let Err(e) = timeouts {
        tracing::warn!("client {id}: {e}");
        return;
    }
    match wire::handshake(&mut stream) {
        Ok(h) => tracing::info!("client {id} attached (whet {})", h.whet),
        Err(WireError::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            tracing::warn!(
                "client {id}: handshake failed, closing: no hello within {}s",
                STALL_TIMEOUT.as_secs()
            );
            return;
        }
        Err(e) => {
            tracing::warn!("client {id}: handshake failed, closing: {e}");
            if let WireError::Version { .. } = e {
                // Say why before closing, in a frame an older client can read.
                let _ = wire::write_frame(&mut stream, &Event::Failed(e.to_string()));
            }
            return;
        }
    }
    let (out_tx, out_rx) = mpsc::sync_channel::<Vec<Event>>(QUEUE);
    let Ok(mut writer) = stream.try_clone() else { return };
    let spawned = std::thread::Builder::new().name(format!("whet-client-{id}-out")).spawn(move || {
        for batch in out_rx {
            for e in &batch {
                if let Err(err) = wire::write_frame(&mut writer, e) {
                    tracing::warn!("client {id}: cannot write to it, closing: {err}");
                    let _ = writer.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
        // The hub let go of this client (it left, or stopped reading): end the connection.
        let _ = writer.shutdown(std::net::Shutdown::Both);
    });
    if spawned.is_err() || hub.send(HubMsg::Join { id, out: out_tx }).is_err() {
        return;
    }
    read_commands(id, &mut stream, &hub);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = hub.send(HubMsg::Left(id));
}

fn read_commands(id: u64, stream: &mut UnixStream, hub: &Sender<HubMsg>) {
    loop {
        match wire::read_frame_patient::<Command>(stream) {
            Ok(cmd) => {
                if hub.send(HubMsg::Command { id, cmd }).is_err() {
                    return;
                }
            }
            Err(WireError::Closed) => {
                tracing::info!("client {id} detached");
                return;
            }
            Err(e) => {
                tracing::warn!("client {id}: {e}; closing its connection (training goes on)");
                return;
            }
        }
    }
}

/// Hands a batch to a client's writer without waiting: false when the client is gone or has
/// stopped reading.
pub fn offer(out: &SyncSender<Vec<Event>>, batch: Vec<Event>) -> bool {
    out.try_send(batch).is_ok()
}
