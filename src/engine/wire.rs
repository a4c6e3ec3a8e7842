//! The engine protocol on a byte stream (a Unix socket between an engine host and its
//! clients): frames of serde JSON, each behind a 4-byte little-endian length, and a version
//! handshake first. The length is checked against [`MAX_FRAME`] before anything is allocated,
//! so a garbage or hostile prefix costs nothing; every failure is a [`WireError`], never a panic.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The protocol version. A client speaking another is refused with both numbers; a rebuilt
/// whet that speaks the same one attaches to a run started by the old binary.
pub const PROTOCOL: u32 = 2;

/// The largest frame either side accepts: a probe answer or a replayed history is far below.
pub const MAX_FRAME: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("the other side stopped sending in the middle of a frame")]
    Stalled,
    #[error("protocol version {theirs} on the other side, {ours} here: use the same whet to attach")]
    Version { ours: u32, theirs: u32 },
}

/// The first frame each side sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// The sender's whet version, for messages.
    pub whet: String,
}

impl Hello {
    pub fn ours() -> Self {
        Self { protocol: PROTOCOL, whet: env!("CARGO_PKG_VERSION").to_string() }
    }
}

/// Writes one frame: the length, then the JSON.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), WireError> {
    let body = serde_json::to_vec(msg).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len() as u64));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame. A stream that ends before the length is `Closed`; one that ends inside
/// a frame is an i/o error (unexpected EOF).
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(WireError::TooLarge(n as u64));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Both sides send their [`Hello`] and read the other's; a different protocol is refused.
pub fn handshake(stream: &mut (impl Read + Write)) -> Result<Hello, WireError> {
    write_frame(stream, &Hello::ours())?;
    let theirs: Hello = read_frame(stream)?;
    if theirs.protocol != PROTOCOL {
        return Err(WireError::Version { ours: PROTOCOL, theirs: theirs.protocol });
    }
    Ok(theirs)
}

/// Reads one frame from a stream with a read timeout set: waiting for a frame to begin may
/// take any time (an attached client can be quiet for hours), but once its first byte has
/// come, a timeout before the frame ends is an error, so a client that stalls mid-frame is
/// dropped instead of holding its reader forever.
pub fn read_frame_patient<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, WireError> {
    let mut first = [0u8; 1];
    loop {
        match r.read(&mut first) {
            Ok(0) => return Err(WireError::Closed),
            Ok(_) => break,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    match read_frame(&mut first.as_slice().chain(r)) {
        Err(WireError::Io(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Err(WireError::Stalled)
        }
        other => other,
    }
}
