//! `whet train` as a user runs it: SIGTERM finishes the step, saves and exits 0; `--resume`
//! continues from the checkpoint; the run directory holds what the README promises.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn write_config(dir: &std::path::Path, max_steps: u64) -> std::path::PathBuf {
    let rest = format!(
        r#"format = "tokens"
seq_len = 16
[optim]
batch_size = 2
max_steps = {max_steps}
[schedule]
kind = "linear"
lr = 1e-3
[run]
out_dir = "{out}"
"#,
        out = dir.join("run").display(),
    );
    let cfg = tiny_config_text(r#"kind = "full""#, &fixture("train/tokens.u16"), &rest);
    let p = dir.join("cfg.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

#[test]
fn sigterm_saves_and_resume_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), 100_000);
    let run = tmp.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_whet"))
        .args(["train", cfg.to_str().unwrap(), "--cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while metric_steps(&run).len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "training produced no steps");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("finished at step"), "{stdout}");
    let done = metric_steps(&run).len() as u64;
    assert!(run.join(format!("checkpoints/step-{done:08}/state.json")).exists());
    assert!(run.join("model/config.json").exists());

    // Starting again without --resume refuses to overwrite the run.
    let again = Command::new(env!("CARGO_BIN_EXE_whet"))
        .args(["train", cfg.to_str().unwrap(), "--cpu"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    // Resume for two more steps.
    let target = done + 2;
    let out = Command::new(env!("CARGO_BIN_EXE_whet"))
        .args(["train", cfg.to_str().unwrap(), "--resume", run.to_str().unwrap(), "--cpu"])
        .args(["--set", &format!("optim.max_steps={target}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let steps: Vec<u64> = metric_steps(&run).iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=target).collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("finished at step {target}")));
}

#[test]
fn bad_config_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, "[model]\npath = \"x\"\n[data]\ntrain = \"t\"\n[optim]\nlearning_rate = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_whet")).args(["train", p.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("learning_rate"), "{err}");
}

/// `whet train … | head -1`: stdout and stderr closed under a running job. Training goes on
/// to the end and writes its model; the progress lines are dropped, not fatal.
#[test]
fn a_closed_stdout_never_stops_training() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 12);
    let mut child = Command::new(env!("CARGO_BIN_EXE_whet"))
        .args(["train", cfg.to_str().unwrap(), "--cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line, as `head -1` does, then close both pipes.
    let mut first = [0u8; 1];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let run = dir.path().join("run");
    let steps: Vec<u64> = metric_steps(&run).iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>());
    assert!(run.join("model/config.json").exists(), "the final model was written");
}
