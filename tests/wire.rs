//! The engine protocol on a socket (issue 10's foundation): frames round-trip every message,
//! a hostile length or random bytes cost nothing and never panic, the handshake refuses
//! another protocol naming both versions, and the socket directory and peer check hold.

use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use whet::engine::protocol::Probe;
use whet::engine::sockets;
use whet::engine::wire::{self, Hello, WireError, MAX_FRAME, PROTOCOL};
use whet::engine::{Command, Event};

fn frame_bytes<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut buf = vec![];
    wire::write_frame(&mut buf, msg).unwrap();
    buf
}

#[test]
fn commands_and_events_round_trip_in_frames() {
    let cfg = whet::engine::config::RunConfig::from_toml(
        "[model]\npath = \"m.gguf\"\n[method]\nkind = \"qlora\"\nquant = \"nf4\"\n[data]\ntrain = \"t.jsonl\"",
    )
    .unwrap();
    let commands = vec![
        Command::Start { config: Box::new(cfg), run_dir: PathBuf::from("runs/x"), resume: false },
        Command::Probe(Probe { chat: true, ..Probe::new(7, "How are", 5) }),
        Command::SetGradClip(0.5),
        Command::Stop { save: true },
    ];
    let mut stream = vec![];
    for c in &commands {
        wire::write_frame(&mut stream, c).unwrap();
    }
    let mut r = Cursor::new(stream);
    for c in &commands {
        assert_eq!(&wire::read_frame::<Command>(&mut r).unwrap(), c);
    }
    assert!(matches!(wire::read_frame::<Command>(&mut r), Err(WireError::Closed)));
    let e = Event::Eval { step: 3, loss: 1.25 };
    assert_eq!(wire::read_frame::<Event>(&mut Cursor::new(frame_bytes(&e))).unwrap(), e);
}

#[test]
fn a_hostile_length_is_refused_before_any_allocation() {
    // A 1 GB length prefix with nothing behind it.
    let mut r = Cursor::new((1u32 << 30).to_le_bytes().to_vec());
    match wire::read_frame::<Command>(&mut r) {
        Err(WireError::TooLarge(n)) => assert_eq!(n, 1 << 30),
        other => panic!("{other:?}"),
    }
    // Just over the limit is refused; a frame cut short is an error, not a hang or a panic.
    let over = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    assert!(matches!(wire::read_frame::<Command>(&mut Cursor::new(over)), Err(WireError::TooLarge(_))));
    let mut cut = frame_bytes(&Command::Pause);
    cut.truncate(cut.len() - 2);
    assert!(matches!(wire::read_frame::<Command>(&mut Cursor::new(cut)), Err(WireError::Io(_))));
    let unknown = frame_bytes(&serde_json::json!({"Launch": {"missiles": true}}));
    assert!(matches!(wire::read_frame::<Command>(&mut Cursor::new(unknown)), Err(WireError::Malformed(_))));
}

/// Random bytes, and valid frames with random bytes flipped: the decoder returns an error or a
/// message, never panics, and never reads past what it was given.
#[test]
fn the_frame_decoder_survives_random_bytes() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let valid = frame_bytes(&Command::Probe(Probe::new(1, "How are", 3)));
    let (mut ok, mut err) = (0, 0);
    for i in 0..20_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            let n = rng.random_range(0..64);
            (0..n).map(|_| rng.random()).collect()
        } else {
            let mut b = valid.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
            }
            b
        };
        let mut r = Cursor::new(bytes.clone());
        match wire::read_frame::<Command>(&mut r) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
        assert!(r.position() as usize <= bytes.len());
    }
    assert!(err > 10_000 && ok > 0, "{ok} decoded, {err} refused");
}

/// The host's reader: a quiet client is waited for, one that stops mid-frame is refused,
/// and random bytes never panic it.
#[test]
fn the_patient_reader_waits_between_frames_but_not_inside_one() {
    use std::io::Write;
    use std::time::Duration;
    let (mut host, mut client) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let frame = frame_bytes(&Command::Pause);
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300)); // quiet for six timeouts
        client.write_all(&frame).unwrap();
        client.write_all(&frame[..3]).unwrap(); // then stalls inside the length
        std::thread::sleep(Duration::from_millis(500));
        client
    });
    assert_eq!(wire::read_frame_patient::<Command>(&mut host).unwrap(), Command::Pause);
    assert!(matches!(wire::read_frame_patient::<Command>(&mut host), Err(WireError::Stalled)));
    drop(writer.join().unwrap());
    assert!(matches!(wire::read_frame_patient::<Command>(&mut host), Err(WireError::Closed)));

    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..5_000 {
        let n = rng.random_range(0..48);
        let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        let mut r = Cursor::new(bytes.clone());
        let _ = wire::read_frame_patient::<Command>(&mut r);
        assert!(r.position() as usize <= bytes.len());
    }
}

/// A resumed run's history starts at step 1: the host seeds it from the run's own logs, up to
/// the checkpoint it resumed from.
#[test]
fn a_resumed_runs_history_is_seeded_from_its_logs() {
    use whet::engine::history::History;
    use whet::optim::SchedulePlan;
    let dir = tempfile::tempdir().unwrap();
    let mut metrics = String::new();
    for n in 1..=10u64 {
        metrics.push_str(&format!(
            "{{\"step\":{n},\"loss\":{}.0,\"lr\":0.001,\"grad_norm\":1.0,\"tokens\":1,\"tokens_per_s\":1.0,\"elapsed_s\":1.0,\"skipped\":0}}\n",
            20 - n
        ));
        if n == 4 {
            metrics.push_str("{\"step\":4,\"eval_loss\":3.5}\n");
        }
    }
    metrics.push_str("{\"step\":11,\"lo"); // a line cut by kill -9
    std::fs::write(dir.path().join("metrics.jsonl"), metrics).unwrap();
    let (old, new) = (SchedulePlan::default(), SchedulePlan { lr: 5e-4, ..Default::default() });
    let edit = serde_json::json!({"step": 3, "old": old, "new": new});
    std::fs::write(dir.path().join("edits.jsonl"), format!("{edit}\n")).unwrap();
    let mut h = History::default();
    h.seed_from_run(dir.path(), 8);
    let steps: Vec<u64> = h.steps().iter().map(|s| s.step).collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());
    assert_eq!(h.steps()[0].loss, 19.0);
    assert_eq!(h.evals(), &[(4, 3.5)]);
    let replay = h.replay();
    let edit_at = replay.iter().position(|e| matches!(e, Event::ScheduleEdited { step: 3, .. })).unwrap();
    assert!(matches!(replay[edit_at - 1], Event::Step(s) if s.step == 3), "the edit after step 3");
}

#[test]
fn the_handshake_refuses_another_protocol_naming_both() {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        wire::write_frame(&mut b, &Hello { protocol: PROTOCOL + 1, whet: "9.9.9".into() }).unwrap();
        let _: Hello = wire::read_frame(&mut b).unwrap();
    });
    let e = wire::handshake(&mut a).unwrap_err().to_string();
    peer.join().unwrap();
    assert!(e.contains(&PROTOCOL.to_string()) && e.contains(&(PROTOCOL + 1).to_string()), "{e}");
    // The same protocol from a rebuilt binary (another version string) attaches.
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        wire::write_frame(&mut b, &Hello { protocol: PROTOCOL, whet: "0.0.0-rebuilt".into() }).unwrap();
        let _: Hello = wire::read_frame(&mut b).unwrap();
    });
    assert_eq!(wire::handshake(&mut a).unwrap().whet, "0.0.0-rebuilt");
    peer.join().unwrap();
}

#[test]
fn sockets_live_in_a_private_directory_under_the_path_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let env = |k: &str| (k == "WHET_STATE_DIR").then(|| tmp.path().display().to_string());
    let state = sockets::state_dir(env).unwrap();
    let dir = sockets::socket_dir(&state).unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    // A deep run directory still gets a short socket path, the same one each time.
    let deep = tmp.path().join("a".repeat(200)).join("run");
    let p = sockets::socket_path(&dir, &deep).unwrap();
    assert!(p.as_os_str().len() <= sockets::MAX_SOCKET_PATH, "{}", p.display());
    assert_eq!(p, sockets::socket_path(&dir, &deep).unwrap());
    assert_ne!(p, sockets::socket_path(&dir, &tmp.path().join("other")).unwrap());
    // Without WHET_STATE_DIR: XDG_STATE_HOME, then HOME.
    let xdg = |k: &str| (k == "XDG_STATE_HOME").then(|| "/x".to_string());
    assert_eq!(sockets::state_dir(xdg).unwrap(), PathBuf::from("/x/whet"));
    let home = |k: &str| (k == "HOME").then(|| "/h".to_string());
    assert_eq!(sockets::state_dir(home).unwrap(), PathBuf::from("/h/.local/state/whet"));
}

#[test]
fn the_peer_check_reads_the_other_ends_uid() {
    let (a, _b) = UnixStream::pair().unwrap();
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!(sockets::peer_uid(&a).unwrap(), me);
    assert!(sockets::peer_allowed(&a).unwrap());
}

/// The host's history over a synthetic million-step run: flat memory (at most MAX_STEPS step
/// points, however long the run), step 1 and the latest step kept, every eval and edit kept,
/// and a replay a new client can redraw from.
#[test]
fn the_history_stays_flat_over_a_million_steps() {
    use whet::engine::history::{History, LOG_TAIL, MAX_STEPS};
    use whet::engine::{ModelInfo, StepStats};
    let info = ModelInfo {
        method: "full".into(),
        params: 1,
        trainable: 1,
        layers: 1,
        vocab: 1,
        total_steps: 1_000_000,
        start_step: 0,
        train_windows: 1,
        eval_windows: 1,
        schedule: Default::default(),
        grad_clip: 1.0,
    };
    let mut h = History::default();
    h.record(&Event::Loaded(info));
    let step = |n: u64| StepStats {
        step: n,
        loss: 10.0 / n as f64,
        lr: 1e-3,
        grad_norm: 1.0,
        tokens: 1,
        tokens_per_s: 1.0,
        flops_per_s: 0.0,
        mfu: None,
        elapsed_s: n as f64,
        skipped: 0,
    };
    let mut most = 0;
    for n in 1..=1_000_000u64 {
        h.record(&Event::Step(step(n)));
        if n % 10_000 == 0 {
            h.record(&Event::Eval { step: n, loss: 1.0 / n as f64 });
            h.record(&Event::Log(format!("step {n}")));
        }
        if n == 500_000 {
            h.record(&Event::GradClipSet { step: n, old: 1.0, new: 0.5 });
        }
        most = most.max(h.steps().len());
    }
    assert!(most <= MAX_STEPS, "{most} step points held at once");
    let s = h.steps();
    assert_eq!((s[0].step, s[s.len() - 1].step), (1, 1_000_000));
    assert!(s.windows(2).all(|w| w[0].step < w[1].step));
    // The recent quarter is at full resolution.
    assert!(s[s.len() - MAX_STEPS / 4..].windows(2).all(|w| w[1].step == w[0].step + 1));
    assert_eq!(h.evals().len(), 100);
    let replay = h.replay();
    assert!(matches!(replay[0], Event::Loaded(_)));
    let logs = replay.iter().filter(|e| matches!(e, Event::Log(_))).count();
    assert_eq!(logs, LOG_TAIL.min(100));
    let edit_at = replay.iter().position(|e| matches!(e, Event::GradClipSet { .. })).unwrap();
    let before = replay[..edit_at].iter().rev().find_map(|e| match e {
        Event::Step(s) => Some(s.step),
        _ => None,
    });
    assert!(before.is_some_and(|b| b <= 500_000), "the edit replays after the steps before it");
    // A new run starts a new history.
    h.record(&replay[0]);
    assert!(h.steps().is_empty() && h.evals().is_empty());
}

/// One writer per run directory: a second trainer on a live run is refused naming the pid;
/// a lock left by a dead process is taken over; dropping the trainer releases it.
#[test]
fn a_run_directory_has_one_writer() {
    use whet::engine::run_lock::{holder, RunLock, LOCK_FILE};
    let tmp = tempfile::tempdir().unwrap();
    let lock = RunLock::acquire(tmp.path()).unwrap();
    assert_eq!(holder(tmp.path()), Some(std::process::id() as i32));
    let e = RunLock::acquire(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("already holds"), "{e}");
    drop(lock);
    assert!(!tmp.path().join(LOCK_FILE).exists());
    // Another live process's lock (pid 1 is always alive) refuses; a dead pid's is stale.
    std::fs::write(tmp.path().join(LOCK_FILE), "1\n").unwrap();
    let e = RunLock::acquire(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("pid 1") && e.contains("attach"), "{e}");
    std::fs::write(tmp.path().join(LOCK_FILE), "2147483000\n").unwrap();
    let taken = RunLock::acquire(tmp.path()).unwrap();
    assert_eq!(holder(tmp.path()), Some(std::process::id() as i32));
    drop(taken);
}

/// The user's list of runs: registered by the trainer, pruned of directories that are gone,
/// each with its status, step and loss read from the run directory.
#[test]
fn the_run_list_shows_status_step_and_loss() {
    use whet::engine::registry::{self, RunStatus};
    use whet::engine::run_lock::LOCK_FILE;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let (a, b, gone) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("gone"));
    for d in [&a, &b, &gone] {
        std::fs::create_dir_all(d).unwrap();
        registry::register(&state, d).unwrap();
    }
    registry::register(&state, &a).unwrap(); // once only
    std::fs::remove_dir_all(&gone).unwrap();
    std::fs::create_dir_all(a.join("checkpoints/step-00000002")).unwrap();
    std::fs::write(a.join("metrics.jsonl"), "{\"step\":1,\"loss\":2.5,\"elapsed_s\":1.0}\n{\"step\":2,\"loss\":2.0,\"elapsed_s\":2.0}\n{\"step\":2,\"eval_loss\":2.2}\n").unwrap();
    // b's writer died: its lock names a pid that is gone.
    std::fs::write(b.join(LOCK_FILE), "2147483000\n").unwrap();
    let runs = registry::list(&state);
    let dirs: Vec<_> = runs.iter().map(|r| r.dir.clone()).collect();
    assert_eq!(dirs, vec![a.clone(), b.clone()]);
    assert_eq!((runs[0].status, runs[0].step, runs[0].loss), (RunStatus::Stopped, Some(2), Some(2.0)));
    assert_eq!(runs[1].status, RunStatus::Stale);
    std::fs::remove_file(b.join(LOCK_FILE)).unwrap();
    std::fs::create_dir_all(b.join("adapter")).unwrap();
    assert_eq!(registry::summary(&b).status, RunStatus::Finished);
    // A live writer: this process holds a's lock.
    let lock = whet::engine::run_lock::RunLock::acquire(&a).unwrap();
    assert_eq!(registry::summary(&a).status, RunStatus::Running);
    drop(lock);
    // A long run: only the file's tail is read, and it still finds the last step.
    let mut long = String::new();
    for n in 1..=20_000u64 {
        long.push_str(&format!("{{\"step\":{n},\"loss\":{}.5,\"elapsed_s\":{n}.0}}\n", n % 7));
    }
    assert!(long.len() > 64 << 10);
    std::fs::write(a.join("metrics.jsonl"), long).unwrap();
    let s = registry::summary(&a);
    assert_eq!((s.step, s.loss, s.checkpoint), (Some(20_000), Some((20_000 % 7) as f64 + 0.5), None));
    // After a reboot a lock's pid may be alive as another process, started after the lock
    // was written: the lock is stale, and is taken over.
    let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(a.join(LOCK_FILE), format!("{}\n", other.id())).unwrap();
    assert_eq!(registry::summary(&a).status, RunStatus::Running, "written after the process started");
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(a.join(LOCK_FILE)).unwrap().set_modified(an_hour_ago).unwrap();
    assert_eq!(registry::summary(&a).status, RunStatus::Stale, "the pid is another process now");
    drop(whet::engine::run_lock::RunLock::acquire(&a).unwrap());
    other.kill().unwrap();
    other.wait().unwrap();
    // A failed run (its host left the reason).
    std::fs::write(b.join(".whet-failed"), "data: missing").unwrap();
    assert_eq!(registry::summary(&b).status, RunStatus::Failed);
}
