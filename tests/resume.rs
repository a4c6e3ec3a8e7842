//! Exact resume: N steps straight equal N/2 + checkpoint + resume + N/2, bitwise on CPU,
//! across a gradient-accumulation boundary and an epoch boundary, with a schedule edit before
//! the break; and a leftover partial checkpoint is ignored.

mod common;

use candle_core::Device;
use common::*;
use whet::engine::config::{RunConfig, ScheduleConfig};
use whet::engine::trainer::Trainer;

fn config(method: &str) -> RunConfig {
    // 677 tokens → 42 windows of 16; batch 4 × accum 2 = 5 steps an epoch, so 12 steps cross
    // two epoch boundaries, each with a fresh shuffled order.
    let text = format!(
        r#"
[model]
path = "{model}"
[method]
{method}
[data]
train = "{tokens}"
format = "tokens"
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
"#,
        model = fixture("tiny-llama-gqa").display(),
        tokens = fixture("train/tokens.u16").display(),
    );
    RunConfig::from_toml(&text).unwrap()
}

fn edit() -> ScheduleConfig {
    ScheduleConfig { kind: "wsd".into(), lr: 2e-3, min_lr_ratio: Some(0.1), ..ScheduleConfig::default() }
}

/// Losses and LRs of steps 1..=12, with the schedule edited after step 3 and, when
/// `break_at` is set, a checkpoint + fresh resume after that step.
fn run(method: &str, break_at: Option<u64>) -> Vec<(u64, u64)> {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(config(method), dir.path(), false, &Device::Cpu).unwrap();
    let mut out = vec![];
    while !t.done() {
        if t.step == 3 {
            t.set_schedule(edit()).unwrap();
        }
        let s = t.train_step().unwrap();
        out.push((s.loss.to_bits(), s.lr.to_bits()));
        if Some(t.step) == break_at {
            t.save_checkpoint().unwrap();
            // A save interrupted later must not be picked up.
            std::fs::create_dir_all(dir.path().join("checkpoints/.tmp-step-00000099")).unwrap();
            drop(t);
            t = Trainer::new(config(method), dir.path(), true, &Device::Cpu).unwrap();
            assert_eq!(t.step, break_at.unwrap());
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
