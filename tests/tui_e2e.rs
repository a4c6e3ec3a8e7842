//! The real binary in tmux, as a user drives it: start pretrain-tiny from the workbench, watch
//! the loss fall, edit the LR mid-run, probe "How are", pause, resume, checkpoint and quit.
//! Asserts on `capture-pane` text and on the run directory. Needs tmux (.ci/run installs it).

use std::path::PathBuf;
use std::time::Duration;

use whet::engine::config::RunConfig;

mod common;
use common::tmux::{launch, HostGuard};
use common::{metric_steps, wait_for};

/// A temp working directory holding pretrain-tiny (batch 4, so a debug build steps quickly)
/// and its corpus; returns it, the config text and the run directory.
fn workspace() -> (tempfile::TempDir, RunConfig, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("configs")).unwrap();
    std::fs::create_dir_all(dir.join("assets/data")).unwrap();
    std::fs::copy(root.join("assets/data/tiny-corpus.txt"), dir.join("assets/data/tiny-corpus.txt")).unwrap();
    let cfg_text = std::fs::read_to_string(root.join("configs/pretrain-tiny.toml"))
        .unwrap()
        .replace("batch_size = 16", "batch_size = 4")
        // Long enough that no test sees the end, with checkpoints often enough to resume.
        .replace("max_steps = 800", "max_steps = 20000")
        .replace("save_every = 200", "save_every = 20");
    std::fs::write(dir.join("configs/pretrain-tiny.toml"), &cfg_text).unwrap();
    let cfg = RunConfig::from_toml(&cfg_text).unwrap();
    let run = dir.join(&cfg.run.out_dir);
    (tmp, cfg, run)
}

#[test]
fn workbench_session_end_to_end() {
    let (tmp, cfg, run) = workspace();
    let cmd =
        format!("{} --cpu --config configs/pretrain-tiny.toml 2> stderr.txt", env!("CARGO_BIN_EXE_whet"));
    let s = launch(format!("whet-e2e-{}", std::process::id()), tmp.path(), &cmd);
    s.wait("the workbench", 30, |t| t.contains("1 Models") && t.contains("pretrain-tiny (scratch)"));

    // Start the run; loss lines appear and fall.
    s.keys(&["s"]);
    s.wait("training", 60, |t| t.contains("[training]"));
    let first = wait_for("10 steps", 120, || {
        let v = metric_steps(&run);
        (v.len() >= 10).then_some(v)
    });
    let losses: Vec<f64> = first.iter().map(|v| v["loss"].as_f64().unwrap()).collect();
    assert!(losses[losses.len() - 1] < losses[0] - 0.3, "loss did not fall: {losses:?}");
    s.wait("a loss figure", 10, |t| t.contains("loss ") && t.contains("grad-norm"));

    // Edit the LR mid-run from the command line.
    s.keys(&[":", "lr 5e-4", "Enter"]);
    let edit: serde_json::Value = wait_for("edits.jsonl", 30, || {
        let t = std::fs::read_to_string(run.join("edits.jsonl")).ok()?;
        t.lines().next().and_then(|l| serde_json::from_str(l).ok())
    });
    let at = edit["step"].as_u64().unwrap();
    assert_eq!(edit["new"]["lr"].as_f64(), Some(5e-4));
    let next = wait_for("the step after the edit", 60, || {
        metric_steps(&run).into_iter().find(|v| v["step"].as_u64() == Some(at + 1))
    });
    let mut new_sched = cfg.schedule.clone();
    new_sched.lr = 5e-4;
    let want = new_sched.resolve(cfg.optim.max_steps.unwrap()).lr_at(at);
    assert_eq!(next["lr"].as_f64().unwrap(), want, "metrics.jsonl shows the new LR from the next step");
    s.wait("the edit in the log", 10, |t| t.contains("schedule edited at step"));

    // Probe "How are" on the weights being trained.
    s.keys(&[":", "probe How are", "Enter"]);
    s.wait("a probe answer", 30, |t| t.contains("prompt: How are") && t.contains("entropy"));

    // Pause, resume, checkpoint.
    s.keys(&["Space"]);
    s.wait("paused", 30, |t| t.contains("[paused]"));
    s.keys(&["Space"]);
    s.wait("resumed", 30, |t| t.contains("[training]"));
    s.keys(&["C"]);
    s.wait("a checkpoint", 30, |t| t.contains("checkpoint step"));

    // Quit: it asks detach or stop; stop saves, and both the app and its host exit.
    s.keys(&["q"]);
    s.wait("the quit question", 10, |t| t.contains("d = detach") && t.contains("s = stop"));
    s.keys(&["s"]);
    wait_for("the app to exit", 60, || (!s.alive()).then_some(()));
    wait_for("the host to exit", 30, || (!run.join(".whet-lock").exists()).then_some(()));
    assert!(run.join("model/config.json").exists(), "the final model was written");
    let ckpts: Vec<_> = std::fs::read_dir(run.join("checkpoints")).unwrap().collect();
    assert!(!ckpts.is_empty());
    let stderr = std::fs::read_to_string(tmp.path().join("stderr.txt")).unwrap_or_default();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The loss chart's x-axis as drawn (`1 … N`, then the LR chart's `0 … total`): N, the
/// last step it covers; None if not on screen.
fn chart_span(screen: &str) -> Option<u64> {
    screen.lines().find_map(|l| {
        let t: Vec<&str> =
            l.split(|c: char| c == '│' || c.is_whitespace()).filter(|t| !t.is_empty()).collect();
        t.windows(3).find_map(|w| match w {
            ["1", n, "0"] => n.parse().ok(),
            _ => None,
        })
    })
}

/// SIGHUP (the SSH connection dropped, here tmux kill-session) while training: the
/// workbench goes, the run trains on in its host. `whet attach` in a new session brings
/// back the loss chart from step 1, and the explorer probes the live weights.
#[test]
fn sighup_leaves_the_run_training_and_attach_brings_it_all_back() {
    use whet::engine::run_lock::{alive, holder};
    let (tmp, _cfg, run) = workspace();
    let whet = env!("CARGO_BIN_EXE_whet");
    let cmd = format!("{whet} --cpu --config configs/pretrain-tiny.toml 2> stderr.txt");
    let s = launch(format!("whet-hup-{}", std::process::id()), tmp.path(), &cmd);
    s.wait("the workbench", 30, |t| t.contains("1 Models"));
    s.keys(&["s"]);
    wait_for("3 steps", 120, || (metric_steps(&run).len() >= 3).then_some(()));
    let host = HostGuard(holder(&run).expect("the host holds the run's lock"));
    drop(s); // tmux kill-session: the workbench gets SIGHUP
    let before = metric_steps(&run).len() as u64;
    std::thread::sleep(Duration::from_secs(10));
    assert!(alive(host.0), "the host outlived the terminal");
    let after = metric_steps(&run).len() as u64;
    assert!(after > before, "metrics.jsonl grew after the hang-up: {before} -> {after}");
    eprintln!("SIGHUP at step {before}; 10 s later step {after}; host pid {} alive", host.0);

    let s = launch(
        format!("whet-attach-{}", std::process::id()),
        tmp.path(),
        // No directory: the newest running run.
        &format!("{whet} attach 2> stderr2.txt"),
    );
    let screen = s.wait("the loss chart from step 1", 60, |t| chart_span(t).is_some_and(|n| n >= after));
    assert!(screen.contains("[training]"), "{screen}");
    eprintln!("attached: the loss chart covers steps 1..{}", chart_span(&screen).unwrap_or(0));
    s.keys(&[":", "probe How are", "Enter"]);
    s.wait("a probe answer", 30, |t| t.contains("prompt: How are") && t.contains("entropy"));
    // q, then d: detach; the run still trains.
    s.keys(&["q"]);
    s.wait("the quit question", 10, |t| t.contains("d = detach"));
    s.keys(&["d"]);
    wait_for("the app to exit", 30, || (!s.alive()).then_some(()));
    assert!(alive(host.0), "detaching left the run training");

    // kill -9 the host: the Runs list shows the run stale, and Enter resumes it from its last
    // complete checkpoint. The kill lands a few steps past a checkpoint (saved every 20), so
    // metrics.jsonl holds steps the checkpoint never saw, which the resume must drop. Killed
    // right after a save, there would be nothing to drop and nothing to check.
    let last_step = || metric_steps(&run).last().and_then(|v| v["step"].as_u64()).unwrap_or(0);
    wait_for("a step 3-15 past a checkpoint", 60, || (3..=15).contains(&(last_step() % 20)).then_some(()));
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(host.0, libc::SIGKILL) }, 0);
    wait_for("the host to die", 30, || (!alive(host.0)).then_some(()));
    let ckpt = whet::engine::checkpoint::list(&run.join("checkpoints")).last().map(|(s, _)| *s);
    let killed_at = last_step();
    assert!(ckpt.is_some_and(|c| c < killed_at), "checkpoint {ckpt:?}, last logged step {killed_at}");
    let s = launch(
        format!("whet-resume-{}", std::process::id()),
        tmp.path(),
        &format!("{whet} --cpu 2> stderr3.txt"),
    );
    s.wait("the stale run", 30, |t| t.contains("run stale"));
    for _ in 0..20 {
        if s.screen().contains("Enter: resume") {
            break;
        }
        s.keys(&["Down"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    s.wait("the resume hint", 5, |t| t.contains("Enter: resume from its last checkpoint"));
    let done = metric_steps(&run).len() as u64;
    s.keys(&["Enter"]);
    s.wait("training again", 60, |t| t.contains("[training]"));
    let resumed =
        HostGuard(wait_for("the new host", 30, || holder(&run).filter(|&p| p != host.0 && alive(p))));
    wait_for("steps past the old end", 60, || (metric_steps(&run).len() as u64 > done).then_some(()));
    let steps: Vec<u64> = metric_steps(&run).iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>(), "each step once, from 1");
    let log = std::fs::read_to_string(run.join("whet.log")).unwrap();
    match ckpt {
        Some(c) => assert!(log.contains(&format!("dropped the lines after step {c}")), "{log}"),
        None => panic!("no checkpoint was written before the kill"),
    }
    eprintln!(
        "kill -9 at step {done}; Enter on the stale run resumed from checkpoint {ckpt:?}; now step {}",
        steps.len()
    );
    drop(resumed);
    for f in ["stderr.txt", "stderr2.txt", "stderr3.txt"] {
        let e = std::fs::read_to_string(tmp.path().join(f)).unwrap_or_default();
        assert!(!e.contains("panicked"), "{e}");
    }
}

/// The terminal dies under the workbench (stderr on the same terminal, as a user runs it):
/// restoring it fails with EIO, and the workbench exits 0 without a panic, while the run
/// trains on in its host.
#[test]
fn a_dead_terminal_is_left_without_a_panic() {
    use whet::engine::run_lock::{alive, holder};
    let (tmp, _cfg, run) = workspace();
    // The wrapper ignores the hang-up so it can record whet's exit status; whet installs its
    // own handlers.
    let cmd = format!(
        "trap '' HUP; {} --cpu --config configs/pretrain-tiny.toml; echo $? > rc.txt",
        env!("CARGO_BIN_EXE_whet")
    );
    let s = launch(format!("whet-eio-{}", std::process::id()), tmp.path(), &cmd);
    s.wait("the workbench", 30, |t| t.contains("1 Models"));
    s.keys(&["s"]);
    wait_for("3 steps", 120, || (metric_steps(&run).len() >= 3).then_some(()));
    let host = HostGuard(holder(&run).expect("the host holds the run's lock"));
    drop(s); // kill-session: the terminal is gone
    let rc = wait_for("the exit status", 30, || std::fs::read_to_string(tmp.path().join("rc.txt")).ok());
    assert_eq!(rc.trim(), "0", "whet exited {rc} (101 is a panic)");
    assert!(alive(host.0), "the run goes on");
}
