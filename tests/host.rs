//! The detached engine host, on the real binary: `whet train --detach` starts pretrain-tiny
//! in a host of its own, and the tests talk to it over its socket as clients do. Two clients
//! share one run; a host killed with -9 leaves a stale run that resumes from its last
//! complete checkpoint; hostile clients cost the run nothing; another uid is refused; no TCP
//! port is opened. (The workbench's side, in tmux, is in `tui_e2e.rs`.)

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use whet::engine::host::conn::admit;
use whet::engine::protocol::Probe;
use whet::engine::run_lock::{alive, holder};
use whet::engine::wire::{self, MAX_FRAME};
use whet::engine::{remote, sockets, Command, EngineHandle, Event};

mod common;
use common::{metric_steps, wait_for};

/// A temp directory with pretrain-tiny (batch 4, so a debug build steps quickly), its corpus
/// and a state directory of its own.
struct Workspace {
    tmp: tempfile::TempDir,
    run: PathBuf,
    state: PathBuf,
}

impl Workspace {
    fn new() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("configs")).unwrap();
        std::fs::create_dir_all(dir.join("assets/data")).unwrap();
        std::fs::copy(root.join("assets/data/tiny-corpus.txt"), dir.join("assets/data/tiny-corpus.txt"))
            .unwrap();
        let cfg = std::fs::read_to_string(root.join("configs/pretrain-tiny.toml"))
            .unwrap()
            .replace("batch_size = 16", "batch_size = 4");
        std::fs::write(dir.join("configs/pretrain-tiny.toml"), cfg).unwrap();
        let run = dir.join("runs/pretrain-tiny");
        let state = dir.join("state");
        Self { tmp, run, state }
    }

    fn whet(&self, args: &[&str]) -> std::process::Output {
        Process::new(env!("CARGO_BIN_EXE_whet"))
            .args(args)
            .current_dir(self.tmp.path())
            .env("WHET_STATE_DIR", &self.state)
            .output()
            .unwrap()
    }

    /// `whet train --detach`: returns once the run has loaded, with its host.
    fn detach(&self, extra: &[&str]) -> Host {
        let mut args = vec!["train", "configs/pretrain-tiny.toml", "--cpu", "--detach"];
        args.extend_from_slice(extra);
        let out = self.whet(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("attach: whet attach"), "{stdout}");
        let pid = holder(&self.run).expect("the host holds the run's lock");
        assert!(alive(pid));
        Host(pid)
    }

    fn socket(&self) -> PathBuf {
        sockets::socket_path(&sockets::socket_dir(&self.state).unwrap(), &self.run).unwrap()
    }

    fn client(&self) -> EngineHandle {
        remote::connect(&self.socket()).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("whet.log")).unwrap_or_default()
    }

    fn steps(&self) -> usize {
        metric_steps(&self.run).len()
    }
}

/// Kills the host at the end of a test, whatever happened.
struct Host(i32);

impl Drop for Host {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// The next event matching `f`, skipping others.
fn next_matching<T>(h: &EngineHandle, what: &str, mut f: impl FnMut(Event) -> Option<T>) -> T {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        match h.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => {
                if let Some(t) = f(e) {
                    return t;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn two_clients_share_a_run_and_probes_answer_the_client_that_asked() {
    let ws = Workspace::new();
    let _host = ws.detach(&["--set", "optim.max_steps=5000"]);
    wait_for("2 steps", 120, || (ws.steps() >= 2).then_some(()));
    let (a, b) = (ws.client(), ws.client());
    // Each is given the whole picture first: the run's model and schedule, then its steps.
    let plan = next_matching(&a, "Loaded", |e| match e {
        Event::Loaded(i) => Some(i.schedule),
        _ => None,
    });
    let first = next_matching(&b, "a replayed step", |e| match e {
        Event::Step(s) => Some(s.step),
        _ => None,
    });
    assert_eq!(first, 1, "the replay starts at step 1");

    // An LR edit from one client reaches both, and the edit log once.
    let mut new = plan.clone();
    new.lr = 5e-4;
    a.send(Command::SetSchedule(new));
    let edited = |e: Event| match e {
        Event::ScheduleEdited { step, new, .. } => Some((step, new.lr)),
        _ => None,
    };
    let (at_a, lr_a) = next_matching(&a, "the edit on a", edited);
    let (at_b, lr_b) = next_matching(&b, "the edit on b", edited);
    assert_eq!((at_a, lr_a), (at_b, lr_b));
    assert_eq!(lr_b, 5e-4);
    let edits = std::fs::read_to_string(ws.run.join("edits.jsonl")).unwrap();
    assert_eq!(edits.lines().count(), 1, "{edits}");
    // b's LR chart: the steps after the edit follow the new plan.
    let lr_after = next_matching(&b, "a step after the edit", |e| match e {
        Event::Step(s) if s.step > at_b + 1 => Some(s.lr),
        _ => None,
    });
    assert!(lr_after <= 5e-4, "lr {lr_after} after the edit to 5e-4");

    // The same probe id from both: each gets one answer, to its own prompt.
    let probe = |prompt: &str| Command::Probe(Probe::new(1, prompt, 5));
    a.send(probe("How are"));
    b.send(probe("Once upon a time there was a"));
    let answer = |h: &EngineHandle| {
        next_matching(h, "a probe answer", |e| match e {
            Event::ProbeResult { id, result, .. } => Some((id, result.unwrap().prompt_ids.len())),
            _ => None,
        })
    };
    let ((id_a, len_a), (id_b, len_b)) = (answer(&a), answer(&b));
    assert_eq!((id_a, id_b), (1, 1));
    assert!(len_a < len_b, "a asked the shorter prompt: {len_a} vs {len_b} tokens");
    eprintln!("edit at step {at_b} seen by both (lr {lr_b}); probe id 1 answered to each: {len_a} and {len_b} prompt tokens");
    // Nobody gets a second answer.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if let Ok(Event::ProbeResult { .. }) = a.recv_timeout(Duration::from_millis(100)) {
            panic!("a got a second probe answer");
        }
    }
    // Detaching both leaves the run training.
    let before = ws.steps();
    a.shutdown();
    b.shutdown();
    wait_for("steps after both detached", 60, || (ws.steps() > before + 2).then_some(()));
}

/// The newest checkpoint with its state.json (complete).
fn last_checkpoint(run: &Path) -> u64 {
    whet::engine::checkpoint::list(&run.join("checkpoints")).last().map(|(s, _)| *s).unwrap_or(0)
}

#[test]
fn a_killed_host_leaves_a_stale_run_that_resumes_from_its_last_checkpoint() {
    let ws = Workspace::new();
    let host = ws.detach(&["--set", "optim.max_steps=5000", "--set", "run.save_every=4"]);
    wait_for("a checkpoint and steps past it", 180, || {
        (last_checkpoint(&ws.run) >= 8 && ws.steps() as u64 > last_checkpoint(&ws.run) + 1).then_some(())
    });
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(host.0, libc::SIGKILL) }, 0);
    wait_for("the host to die", 30, || (!alive(host.0)).then_some(()));
    let ckpt = last_checkpoint(&ws.run);
    let runs = String::from_utf8(ws.whet(&["runs"]).stdout).unwrap();
    let line = runs.lines().find(|l| l.contains("pretrain-tiny")).unwrap_or_default();
    assert!(line.starts_with("stale"), "{runs}");
    assert!(runs.contains(&format!("resume (from checkpoint step {ckpt})")), "{runs}");

    let done = ws.steps() as u64;
    assert!(done > ckpt, "steps {done} ran past checkpoint {ckpt}");
    // Resumed as `whet runs` says, from another directory: the run's data paths are relative
    // to where it started, and its host runs there again.
    let run = ws.run.display().to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Process::new(env!("CARGO_BIN_EXE_whet"))
        .args(["train", &format!("{run}/config.toml"), "--cpu", "--detach", "--resume", &run])
        .args(["--set", "optim.max_steps=5000"])
        .current_dir(elsewhere.path())
        .env("WHET_STATE_DIR", &ws.state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resumed = Host(holder(&ws.run).unwrap());
    assert_ne!(resumed.0, host.0);
    wait_for("steps past the old end", 180, || (ws.steps() as u64 > done + 2).then_some(()));
    // metrics.jsonl was cut back to the checkpoint and continues from it: every step once.
    let steps: Vec<u64> = metric_steps(&ws.run).iter().map(|v| v["step"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=steps.len() as u64).collect();
    assert_eq!(steps, want, "each step once, in order, from 1");
    assert!(ws.log().contains(&format!("dropped the lines after step {ckpt}")), "{}", ws.log());
    let runs = String::from_utf8(ws.whet(&["runs"]).stdout).unwrap();
    assert!(runs.lines().any(|l| l.starts_with("running") && l.contains("pretrain-tiny")), "{runs}");
    // A second host for the same run is refused.
    let again = ws.whet(&["train", "configs/pretrain-tiny.toml", "--cpu", "--detach", "--resume", &run]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("whet attach"));
}

/// A run that fails to start: `--detach` says why and fails, and the run shows as failed.
#[test]
fn a_run_that_fails_in_its_host_says_why_and_shows_as_failed() {
    let ws = Workspace::new();
    let out = ws.whet(&[
        "train",
        "configs/pretrain-tiny.toml",
        "--cpu",
        "--detach",
        "--set",
        "data.train=\"assets/data/missing.txt\"",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.txt"), "{err}");
    wait_for("the host to leave", 30, || (!ws.socket().exists()).then_some(()));
    let runs = String::from_utf8(ws.whet(&["runs"]).stdout).unwrap();
    assert!(runs.lines().any(|l| l.starts_with("failed") && l.contains("pretrain-tiny")), "{runs}");
    let reason = std::fs::read_to_string(ws.run.join(".whet-failed")).unwrap();
    assert!(reason.contains("missing.txt"), "{reason}");
}

/// Reads (and drops) what the host sends until it closes the connection; panics if it
/// does not within `secs`.
fn closed_within(s: &mut UnixStream, secs: u64, what: &str) {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let t0 = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return, // reset: closed too
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "the host kept the {what} client open");
    }
}

fn greeted(ws: &Workspace) -> UnixStream {
    let mut s = UnixStream::connect(ws.socket()).unwrap();
    wire::handshake(&mut s).unwrap();
    s
}

#[test]
fn hostile_clients_cost_the_run_nothing() {
    let ws = Workspace::new();
    let host = ws.detach(&["--set", "optim.max_steps=5000"]);
    wait_for("2 steps", 120, || (ws.steps() >= 2).then_some(()));

    // Each of these, at once: garbage, a 1 GB length, an unknown command, random bytes
    // instead of a hello, a client that stalls mid-frame, one that never speaks.
    let mut garbage = greeted(&ws);
    garbage.write_all(&[9, 0, 0, 0]).unwrap();
    garbage.write_all(b"not json!").unwrap();
    let mut huge = greeted(&ws);
    huge.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
    const { assert!(1 << 30 > MAX_FRAME) };
    let mut unknown = greeted(&ws);
    wire::write_frame(&mut unknown, &serde_json::json!({"Explode": {"now": true}})).unwrap();
    let mut noise = UnixStream::connect(ws.socket()).unwrap();
    noise.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let mut stalled = greeted(&ws);
    stalled.write_all(&100u32.to_le_bytes()).unwrap();
    stalled.write_all(b"{\"Pause").unwrap();
    let mut silent = UnixStream::connect(ws.socket()).unwrap();
    for (s, what) in [
        (&mut garbage, "garbage"),
        (&mut huge, "1 GB"),
        (&mut unknown, "unknown command"),
        (&mut noise, "random bytes"),
        (&mut stalled, "stalled"),
        (&mut silent, "silent"),
    ] {
        closed_within(s, 20, what);
    }
    let log = ws.log();
    for line in ["malformed frame", "exceeds the", "unknown variant `Explode`", "in the middle of a frame"] {
        assert!(log.contains(line), "no log line with {line:?}:\n{log}");
    }
    assert!(log.matches("handshake failed").count() >= 2, "{log}");
    assert!(log.contains("no hello within 5s"), "the silent client: {log}");
    for l in log.lines().filter(|l| l.contains("closing") || l.contains("handshake failed")) {
        eprintln!("{}", l.split_once("  ").map_or(l, |(_, rest)| rest));
    }

    // Training went on, and a well-behaved client still gets answers.
    let before = ws.steps();
    wait_for("more steps", 60, || (ws.steps() > before + 2).then_some(()));
    assert!(alive(host.0));
    let c = ws.client();
    c.send(Command::Probe(Probe::new(9, "How are", 3)));
    let ok = next_matching(&c, "a probe answer", |e| match e {
        Event::ProbeResult { id: 9, result, .. } => Some(result.is_ok()),
        _ => None,
    });
    assert!(ok);

    // No TCP port: none of the host's sockets is a listening TCP socket.
    let listening = tcp_listen_inodes();
    let mut unix = 0;
    for fd in std::fs::read_dir(format!("/proc/{}/fd", host.0)).unwrap().flatten() {
        let target = std::fs::read_link(fd.path()).map(|p| p.display().to_string()).unwrap_or_default();
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            assert!(!listening.contains(&inode.to_string()), "the host listens on TCP (inode {inode})");
            unix += 1;
        }
    }
    assert!(unix >= 1, "the host has its Unix socket");
    let ss = Process::new("ss").args(["-ltnp"]).output();
    if let Ok(out) = ss {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(&format!("pid={},", host.0)), "ss shows a TCP port of the host:\n{text}");
    }

    // The host's socket is 0600 in a 0700 directory, so another user cannot even reach it.
    let sock = ws.socket();
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(sock.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    if is_root() {
        let out = connect_as_nobody(&sock, 0).output().unwrap();
        assert!(!out.status.success(), "nobody connected to the host's socket");
    }
}

/// The inodes of listening TCP sockets (IPv4 and IPv6), from /proc/net.
fn tcp_listen_inodes() -> Vec<String> {
    let mut out = vec![];
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // st is the 4th column; 0A is LISTEN. The inode is the 10th.
            if f.len() > 9 && f[3] == "0A" {
                out.push(f[9].to_string());
            }
        }
    }
    out
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A process as uid 65534 (nobody) that connects to `sock` and holds the connection
/// `hold` seconds. Perl is part of every Debian/Ubuntu base system.
fn connect_as_nobody(sock: &Path, hold: u32) -> Process {
    use std::os::unix::process::CommandExt;
    let mut p = Process::new("/usr/bin/perl");
    p.args([
        "-MIO::Socket::UNIX",
        "-e",
        "IO::Socket::UNIX->new(Peer => $ARGV[0]) or die qq(connect: $!\\n); sleep $ARGV[1]",
    ])
    .arg(sock)
    .arg(hold.to_string())
    .uid(65534)
    .gid(65534);
    p
}

/// The peer-uid check on its own: a socket in an open directory, where another user can
/// connect; the host's admission refuses that user and admits its own.
#[test]
fn the_host_admits_only_its_own_user() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.path().join("open.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();

    let _mine = UnixStream::connect(&sock).unwrap();
    let (ours, _) = listener.accept().unwrap();
    assert_eq!(admit(&ours), Ok(()));

    if !is_root() {
        eprintln!("not root: cannot start a process as another uid; the same-uid half ran");
        return;
    }
    let mut child = connect_as_nobody(&sock, 5).spawn().unwrap();
    let (theirs, _) = listener.accept().unwrap();
    assert_eq!(sockets::peer_uid(&theirs).unwrap(), 65534);
    let why = admit(&theirs).unwrap_err();
    assert!(why.contains("uid 65534"), "{why}");
    let _ = child.kill();
    let _ = child.wait();
}
