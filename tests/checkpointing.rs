//! `optim.gradient_checkpointing`: the block-by-block backward with recomputation gives the
//! gradients of one whole backward (up to the order of float additions), for full
//! fine-tuning of a tied model (the lm_head's gradient adds into the embedding's) and for
//! LoRA, with dropout on, so a recomputed block must replay its masks.

mod common;

use candle_core::Device;
use common::*;
use whet::engine::config::RunConfig;
use whet::engine::trainer::Trainer;

fn losses_and_norms(method: &str, checkpointing: bool) -> Vec<(f64, f64)> {
    let tmp = tempfile::tempdir().unwrap();
    let ids: Vec<u16> = (0..3000u32).map(|i| ((i * 7 + i / 11) % 300) as u16).collect();
    let train = tmp.path().join("d.u16");
    std::fs::write(&train, ids.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let rest = format!(
        "format = \"tokens\"\nseq_len = 32\nshuffle = false\n[optim]\nbatch_size = 2\ngrad_accum = 2\n\
         max_steps = 4\ndropout = 0.1\ngradient_checkpointing = {checkpointing}\n\
         [schedule]\nkind = \"constant\"\nlr = 3e-3\n"
    );
    let cfg = RunConfig::from_toml(&tiny_config_text(method, &train, &rest)).unwrap();
    let mut t = Trainer::new(cfg, &tmp.path().join("run"), false, &Device::Cpu).unwrap();
    (0..4)
        .map(|_| {
            let s = t.train_step().unwrap();
            (s.loss, s.grad_norm)
        })
        .collect()
}

#[test]
fn checkpointed_backward_gives_the_same_gradients() {
    for method in ["kind = \"full\"", "kind = \"lora\"\nr = 4\nalpha = 8\ndropout = 0.1"] {
        let plain = losses_and_norms(method, false);
        let ckpt = losses_and_norms(method, true);
        // The first forward is the same computation, so the same bits.
        assert_eq!(plain[0].0, ckpt[0].0, "{method}");
        for (a, b) in plain.iter().zip(&ckpt) {
            assert!((a.0 - b.0).abs() < 1e-5 * a.0.abs(), "{method}: losses {plain:?} vs {ckpt:?}");
            assert!((a.1 - b.1).abs() < 1e-4 * a.1.abs(), "{method}: grad norms {plain:?} vs {ckpt:?}");
        }
    }
}
