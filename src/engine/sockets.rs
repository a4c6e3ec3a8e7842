//! Where an engine host listens, and who may talk to it.
//!
//! Sockets live in a per-user 0700 directory under whet's state directory, which survives
//! logout (`$XDG_RUNTIME_DIR` does not: logind removes it when the last session ends, the
//! very event a detached run must outlive). A run's socket is named by a short hash of its
//! run directory, so the path stays under the 107-byte limit of a Unix socket address
//! wherever the run is. The host accepts only peers with its own uid (`SO_PEERCRED`).

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// The longest socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// whet's per-user state directory: `$WHET_STATE_DIR`, else `$XDG_STATE_HOME/whet`, else
/// `~/.local/state/whet`.
pub fn state_dir(env: impl Fn(&str) -> Option<String>) -> Result<PathBuf> {
    if let Some(d) = env("WHET_STATE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = env("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("whet"));
    }
    let home = env("HOME").filter(|h| !h.is_empty()).ok_or_else(|| anyhow!("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".local/state/whet"))
}

/// `<state>/sockets`, created 0700 and checked: ours, and open to nobody else.
pub fn socket_dir(state: &Path) -> Result<PathBuf> {
    let dir = state.join("sockets");
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: create", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("{}: chmod 0700", dir.display()))?;
    let meta = std::fs::metadata(&dir).with_context(|| format!("{}: stat", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "{}: owned by uid {}, not by this user ({me}); refusing to listen there",
            dir.display(),
            meta.uid()
        );
    }
    Ok(dir)
}

/// FNV-1a, 64 bits: a stable short name for a run directory (not a security boundary).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The socket of the host of `run_dir`: `<dir>/<16 hex digits>.sock`, the digits a hash of the
/// run directory's absolute path, so the same run always finds the same socket.
pub fn socket_path(dir: &Path, run_dir: &Path) -> Result<PathBuf> {
    let abs =
        std::path::absolute(run_dir).with_context(|| format!("{}: absolute path", run_dir.display()))?;
    let abs = abs.canonicalize().unwrap_or(abs);
    let path = dir.join(format!("{:016x}.sock", fnv1a(abs.as_os_str().as_encoded_bytes())));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        bail!(
            "{}: {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of a socket path; set WHET_STATE_DIR to a shorter directory",
            path.display()
        );
    }
    Ok(path)
}

/// The uid of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `stream`; `cred` and `len` are valid for writes
    // of the size passed, as getsockopt(SO_PEERCRED) requires.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Whether `stream`'s peer may talk to this host: the same effective uid, and nobody else.
pub fn peer_allowed(stream: &UnixStream) -> std::io::Result<bool> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    Ok(peer_uid(stream)? == unsafe { libc::geteuid() })
}
