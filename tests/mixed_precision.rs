//! `[run] dtype = "bf16"`: mixed precision. On the CPU (candle computes bf16 matmuls there
//! too) the same code path as on a GPU runs: bf16 weights, activations and matmuls, with f32
//! master weights and AdamW moments. Its losses track an f32 run's closely without being
//! equal, and everything a checkpoint holds stays f32.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::*;
use whet::engine::config::RunConfig;
use whet::engine::trainer::Trainer;

/// Tokens with structure to learn (a repeating pattern), inside the tiny model's vocabulary.
fn tokens(dir: &Path) -> std::path::PathBuf {
    let ids: Vec<u16> = (0..4000u32).map(|i| ((i * 7 + i / 13) % 300) as u16).collect();
    let f = dir.join("d.u16");
    std::fs::write(&f, ids.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    f
}

fn config(method: &str, train: &Path, dtype: &str) -> Result<RunConfig, String> {
    let rest = format!(
        "format = \"tokens\"\nseq_len = 32\nshuffle = false\n[optim]\nbatch_size = 4\nmax_steps = 6\n\
         [schedule]\nkind = \"constant\"\nlr = 3e-3\n[run]\ndtype = \"{dtype}\"\n"
    );
    RunConfig::from_toml(&tiny_config_text(method, train, &rest))
}

/// Six steps; the losses and the last checkpoint's tensors (weights and optimizer state).
fn run(method: &str, dtype: &str) -> (Vec<f64>, Vec<(String, DType)>) {
    let tmp = tempfile::tempdir().unwrap();
    let train = tokens(tmp.path());
    let cfg = config(method, &train, dtype).unwrap();
    let mut t = Trainer::new(cfg, &tmp.path().join("run"), false, &Device::Cpu).unwrap();
    let losses: Vec<f64> = (0..6).map(|_| t.train_step().unwrap().loss).collect();
    // The explorer's probe reads f32 logits whatever the forward's dtype.
    let p = t.next_token("How are", false, 5, false).unwrap();
    assert!(p.top.iter().all(|x| x.prob.is_finite() && x.prob > 0.0) && p.cumulative <= 1.0 + 1e-9, "{p:?}");
    let ckpt = t.save_checkpoint().unwrap();
    let mut dtypes = Vec::new();
    for f in ["weights.safetensors", "optimizer.safetensors"] {
        for (name, x) in candle_core::safetensors::load(ckpt.join(f), &Device::Cpu).unwrap() {
            dtypes.push((format!("{f}:{name}"), x.dtype()));
        }
    }
    (losses, dtypes)
}

#[test]
fn bf16_tracks_f32_and_keeps_f32_master_weights_and_moments() {
    for method in [r#"kind = "full""#, "kind = \"lora\"\nr = 8\nalpha = 16"] {
        let (l32, _) = run(method, "f32");
        let (l16, saved) = run(method, "bf16");
        assert_ne!(l32, l16, "{method}: bf16 computed exactly what f32 did, so it did not run in bf16");
        for (a, b) in l32.iter().zip(&l16) {
            assert!(b.is_finite() && (a - b).abs() / a < 2e-2, "{method}: f32 {l32:?} vs bf16 {l16:?}");
        }
        assert!(l16[5] < l16[0], "{method}: bf16 did not learn: {l16:?}");
        assert!(!saved.is_empty() && saved.iter().all(|(_, d)| *d == DType::F32), "{method}: {saved:?}");
    }
}

#[test]
fn unknown_dtype_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let e = config(r#"kind = "full""#, &tokens(tmp.path()), "fp16").unwrap_err();
    assert!(e.contains("fp16") && e.contains("f32") && e.contains("bf16"), "{e}");
}
