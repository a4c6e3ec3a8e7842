//! Exact resume: N steps straight equal N/2 + checkpoint + resume + N/2, bitwise on CPU,
//! across a gradient-accumulation boundary and an epoch boundary, with a schedule edit before
//! the break; and a leftover partial checkpoint is ignored.

mod common;

use candle_core::Device;
use common::*;
use whet::engine::config::RunConfig;
use whet::engine::trainer::Trainer;
use whet::model::Kernels;
use whet::optim::SchedulePlan;

fn config(method: &str) -> RunConfig {
    // 677 tokens → 42 windows of 16; batch 4 × accum 2 = 5 steps an epoch, so 12 steps cross
    // two epoch boundaries, each with a fresh shuffled order.
    let rest = r#"format = "tokens"
seq_len = 16
shuffle = true
[optim]
batch_size = 4
grad_accum = 2
max_steps = 12
weight_decay = 0.1
seed = 7
[schedule]
kind = "cosine"
lr = 5e-3
warmup_steps = 2
"#;
    RunConfig::from_toml(&tiny_config_text(method, &fixture("train/tokens.u16"), rest)).unwrap()
}

fn edit() -> SchedulePlan {
    toml::from_str("kind = \"wsd\"\nlr = 2e-3\nmin_lr_ratio = 0.1").unwrap()
}

/// Losses and LRs of steps 1..=12, with the schedule edited after step 3 and, when
/// `break_at` is set, a checkpoint + fresh resume after that step.
fn run(method: &str, break_at: Option<u64>) -> Vec<(u64, u64)> {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(config(method), dir.path(), false, &Device::Cpu).unwrap();
    let mut out = vec![];
    while !t.done() {
        if t.step() == 3 {
            t.set_schedule(edit()).unwrap();
        }
        let s = t.train_step().unwrap();
        out.push((s.loss.to_bits(), s.lr.to_bits()));
        if Some(t.step()) == break_at {
            t.save_checkpoint().unwrap();
            // A save interrupted later must not be picked up.
            std::fs::create_dir_all(dir.path().join("checkpoints/.tmp-step-00000099")).unwrap();
            drop(t);
            t = Trainer::new(config(method), dir.path(), true, &Device::Cpu).unwrap();
            assert_eq!(t.step(), break_at.unwrap());
            assert_eq!(t.edits().len(), 1, "the edit log comes back with the checkpoint");
        }
    }
    assert_eq!(out.len(), 12);
    out
}

#[test]
fn full_resume_is_bitwise_exact() {
    let straight = run(r#"kind = "full""#, None);
    // Step 7 is mid-epoch (epoch 2 starts at step 6) and after the edit at step 4.
    assert_eq!(run(r#"kind = "full""#, Some(7)), straight);
    // The edit changed the curve from step 4 on.
    assert_ne!(straight[3].1, run_without_edit()[3].1);
}

#[test]
fn lora_resume_is_bitwise_exact() {
    let m = "kind = \"lora\"\nr = 4\nalpha = 8\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]";
    assert_eq!(run(m, Some(5)), run(m, None));
}

#[test]
fn qlora_resume_is_bitwise_exact() {
    for quant in ["nf4", "q8_0"] {
        let m = format!("kind = \"qlora\"\nquant = \"{quant}\"\nr = 4\nalpha = 8");
        let straight = run(&m, None);
        assert_eq!(run(&m, Some(5)), straight, "{quant}");
        // The quantized base is not the float one: the curve differs from LoRA's.
        assert_ne!(straight, run("kind = \"lora\"\nr = 4\nalpha = 8", None));
    }
}

fn run_without_edit() -> Vec<(u64, u64)> {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(config(r#"kind = "full""#), dir.path(), false, &Device::Cpu).unwrap();
    (0..4).map(|_| t.train_step().unwrap()).map(|s| (s.loss.to_bits(), s.lr.to_bits())).collect()
}

/// Dropout masks come from (seed, step, micro-batch), so a resumed run draws the same ones.
#[test]
fn dropout_resume_is_bitwise_exact_and_dropout_is_active() {
    let plain = "kind = \"lora\"\nr = 4\nalpha = 8\ntargets = [\"q_proj\", \"v_proj\"]";
    let with_dropout = format!("{plain}\ndropout = 0.2");
    let straight = run(&with_dropout, None);
    assert_eq!(run(&with_dropout, Some(6)), straight);
    // Step 1 runs with B = 0 and AdamW's first update is ±lr whatever the mask, so the
    // difference shows from step 3 on.
    let no_drop = run(plain, None);
    assert_eq!(straight[..2], no_drop[..2]);
    assert!(
        straight[2..].iter().zip(&no_drop[2..]).all(|(a, b)| a.0 != b.0),
        "LoRA dropout changes the loss"
    );
}

/// A run directory written by the pre-refactor whet (`tests/fixtures/old-run`: its own
/// `config.toml`, an `edits.jsonl` and `state.json` in the old schedule spelling with `null`s,
/// a checkpoint after step 6) resumes with today's code, bit for bit as the old binary went on.
#[test]
fn old_run_directory_resumes_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("old-run");
    copy_dir(&fixture("old-run"), &run);
    // The old edit log still parses.
    let edits = std::fs::read_to_string(run.join("edits.jsonl")).unwrap();
    let edit: whet::engine::checkpoint::Edit = serde_json::from_str(edits.lines().next().unwrap()).unwrap();
    assert_eq!((edit.step, edit.old.kind.name(), edit.new.kind.name()), (3, "cosine", "wsd"));
    // Paths in the old config are relative to the repository root, where `cargo test` runs.
    let mut cfg = RunConfig::from_toml(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    // The composed kernels are the arithmetic the old binary used; the default fused
    // kernels are checked to the last bits below.
    cfg.run.kernels = Kernels::Composed;
    let mut t = Trainer::new(cfg.clone(), &run, true, &Device::Cpu).unwrap();
    assert_eq!(t.step(), 6);
    assert_eq!(t.edits(), &[edit]);
    let want: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(run.join("continuation.json")).unwrap()).unwrap();
    let mut got = vec![];
    while !t.done() {
        let s = t.train_step().unwrap();
        got.push((s.step, format!("{:016x}", s.loss.to_bits()), format!("{:016x}", s.lr.to_bits())));
    }
    let want: Vec<(u64, String, String)> = want
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (v["step"].as_u64().unwrap(), s("loss_bits"), s("lr_bits"))
        })
        .collect();
    assert_eq!(got.len(), 4);
    assert_eq!(got, want);
    // With the fused kernels (the default) the same resume differs from the old
    // binary only in the last bits of f32 accumulation; the schedule stays bit-exact.
    let fused_run = dir.path().join("old-run-fused");
    copy_dir(&fixture("old-run"), &fused_run);
    cfg.run.kernels = Kernels::Fused;
    let mut f = Trainer::new(cfg, &fused_run, true, &Device::Cpu).unwrap();
    for (step, loss_bits, lr_bits) in &want {
        let s = f.train_step().unwrap();
        let old = f64::from_bits(u64::from_str_radix(loss_bits, 16).unwrap());
        assert_eq!((s.step, format!("{:016x}", s.lr.to_bits())), (*step, lr_bits.clone()));
        assert!(
            (s.loss - old).abs() <= 4.0 * f32::EPSILON as f64 * old.abs(),
            "step {step}: {} vs {old}",
            s.loss
        );
    }
    // The new checkpoint writes today's spelling: no nulls in the edit log it carries.
    let p = t.save_checkpoint().unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("state.json")).unwrap()).unwrap();
    let new = state["edits"][0]["new"].as_object().unwrap();
    assert_eq!(new["kind"], "wsd");
    assert!(new.values().all(|v| !v.is_null()), "{new:?}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

/// A checkpoint whose tensor file was cut or lost after it was written does not verify
/// against the sizes in its `state.json`: resume takes the newest one that does, and says
/// which files are wrong when none does. Pruning leaves no `step-` directory behind.
#[test]
fn resume_takes_the_newest_checkpoint_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(r#"kind = "full""#);
    cfg.run.keep_last = 2;
    let mut t = Trainer::new(cfg.clone(), dir.path(), false, &Device::Cpu).unwrap();
    for _ in 0..6 {
        t.train_step().unwrap();
        if t.step().is_multiple_of(2) {
            t.save_checkpoint().unwrap();
        }
    }
    drop(t);
    let root = dir.path().join("checkpoints");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["step-00000004", "step-00000006"], "pruned to two, nothing left behind");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("step-00000006/state.json")).unwrap())
            .unwrap();
    let weights = root.join("step-00000006/weights.safetensors");
    let size = std::fs::metadata(&weights).unwrap().len();
    assert_eq!(state["files"]["weights.safetensors"].as_u64(), Some(size));

    // The newest one's weights cut in half: resume falls back to step 4.
    std::fs::OpenOptions::new().write(true).open(&weights).unwrap().set_len(size / 2).unwrap();
    let t = Trainer::new(cfg.clone(), dir.path(), true, &Device::Cpu).unwrap();
    assert_eq!(t.step(), 4);
    drop(t);
    // Step 4's optimizer state lost too: nothing verifies, and the error names both files.
    std::fs::remove_file(root.join("step-00000004/optimizer.safetensors")).unwrap();
    let err = Trainer::new(cfg, dir.path(), true, &Device::Cpu).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("no checkpoint verifies"), "{msg}");
    assert!(msg.contains("step-00000006/weights.safetensors") && msg.contains("incomplete"), "{msg}");
    assert!(msg.contains("step-00000004/optimizer.safetensors"), "{msg}");
}
