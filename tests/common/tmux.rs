//! The real binary in tmux, as a user drives it: a session, its screen, its keys.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
    }
}

impl Session {
    pub fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux").args(["send-keys", "-t", &self.0]).args(keys).status().unwrap();
        assert!(ok.success());
    }

    pub fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Waits for `cond` on the screen, failing with the screen after `secs`.
    pub fn wait(&self, what: &str, secs: u64, mut cond: impl FnMut(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if cond(&s) {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}; screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts `whet` in a detached 120×40 tmux session in `dir`.
pub fn launch(name: String, dir: &Path, shell: &str) -> Session {
    // A state directory of the test's own (the list of runs, the hosts' sockets).
    let shell = format!("export WHET_STATE_DIR='{}/state'; {shell}", dir.display());
    let status = Command::new("tmux")
        .args(["new-session", "-d", "-s", &name, "-x", "120", "-y", "40", "-c"])
        .arg(dir)
        .arg(shell)
        .status()
        .expect("tmux must be installed for this test");
    assert!(status.success());
    Session(name)
}

/// Kills the engine host at the end of a test, whatever happened.
pub struct HostGuard(pub i32);

impl Drop for HostGuard {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}
