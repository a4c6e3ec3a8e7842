//! Training step for step against PyTorch: torch.optim.AdamW (full fine-tuning) and PEFT (LoRA)
//! over 10 steps, and every schedule kind against transformers' schedulers.
//! Fixtures: scripts/reference/make_training_reference.py.

mod common;

use candle_core::Device;
use common::*;
use serde_json::Value;
use whet::engine::config::RunConfig;
use whet::engine::trainer::Trainer;
use whet::optim::SchedulePlan;

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn config(method: &str, batch: usize, accum: usize) -> RunConfig {
    let rest = format!(
        r#"format = "tokens"
seq_len = 16
shuffle = false
[optim]
batch_size = {batch}
grad_accum = {accum}
max_steps = 10
weight_decay = 0.1
grad_clip = 1.0
[schedule]
kind = "cosine"
lr = 1e-2
warmup_steps = 2
"#
    );
    RunConfig::from_toml(&tiny_config_text(method, &fixture("train/tokens.u16"), &rest)).unwrap()
}

fn run(cfg: RunConfig) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(cfg, dir.path(), false, &Device::Cpu).unwrap();
    let (mut loss, mut lr, mut gn) = (vec![], vec![], vec![]);
    while !t.done() {
        let s = t.train_step().unwrap();
        loss.push(s.loss);
        lr.push(s.lr);
        gn.push(s.grad_norm);
    }
    (loss, lr, gn)
}

fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: step count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let r = (g - w).abs() / w.abs().max(1e-12);
        assert!(r < rel, "{what} step {}: {g} vs torch {w} (rel {r:.2e})", i + 1);
    }
}

#[test]
fn full_finetune_matches_torch_adamw() {
    let want = json("train/full.json");
    let (loss, lr, gn) = run(config(r#"kind = "full""#, 4, 1));
    assert_close("loss", &loss, &floats(&want["loss"]), 1e-4);
    assert_close("lr", &lr[1..], &floats(&want["lr"])[1..], 1e-9);
    assert_eq!(lr[0], 0.0, "warmup starts at 0 as in HF");
    assert_close("grad norm", &gn, &floats(&want["grad_norm"]), 1e-3);
}

#[test]
fn grad_accumulation_gives_the_same_curve() {
    let want = json("train/full.json");
    let (loss, _, _) = run(config(r#"kind = "full""#, 2, 2));
    assert_close("loss (batch 2 x accum 2)", &loss, &floats(&want["loss"]), 1e-4);
}

#[test]
fn lora_from_peft_init_matches_peft() {
    let want = json("train/lora.json");
    let method = format!(
        "kind = \"lora\"\nr = 4\nalpha = 8\ninit = \"{}\"\ntargets = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]",
        fixture("train/lora_init").display()
    );
    let (loss, _, gn) = run(config(&method, 4, 1));
    assert_close("lora loss", &loss, &floats(&want["loss"]), 1e-4);
    assert_close("lora grad norm", &gn, &floats(&want["grad_norm"]), 1e-3);
}

#[test]
fn every_schedule_matches_transformers() {
    for case in json("train/schedules.json").as_array().unwrap() {
        // The case is a plan plus the run length it is resolved against.
        let mut plan = case["schedule"].clone();
        let total = plan.as_object_mut().unwrap().remove("total_steps").unwrap().as_u64().unwrap();
        let s = serde_json::from_value::<SchedulePlan>(plan).unwrap().resolve(total);
        for (step, want) in floats(&case["lrs"]).iter().enumerate() {
            let got = s.lr_at(step as u64);
            assert!((got - want).abs() < 1e-9, "{:?} step {step}: {got} vs HF {want}", case["schedule"]);
        }
    }
}
