//! An HF directory end to end: tokenizer, chat template, EOS ids, and greedy generation,
//! against transformers (fixture: tests/fixtures/tiny-llama-gqa/chat_generate.json).

mod common;

use candle_core::Device;
use common::*;
use serde_json::Value;
use whet::generate::{generate, Sampling};
use whet::load;

fn reference() -> Value {
    let p = fixture("tiny-llama-gqa/chat_generate.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn chat_template_and_eos_list() {
    let lm = load::load_model(&fixture("tiny-llama-gqa"), &Device::Cpu).unwrap();
    let r = reference();
    let prompt = r["prompt"].as_str().unwrap();
    assert_eq!(lm.encode_prompt(prompt, false).unwrap(), ids(&r["plain_ids"]));
    assert_eq!(lm.encode_prompt(prompt, true).unwrap(), ids(&r["chat_ids"]));
    // generation_config.json's [0, 2] and tokenizer_config's "<|im_end|>" (id 2).
    assert_eq!(lm.text.eos_ids, vec![0, 2]);
}

#[test]
fn greedy_generation_matches_hf_generate() {
    let lm = load::load_model(&fixture("tiny-llama-gqa"), &Device::Cpu).unwrap();
    let r = reference();
    let s = Sampling { temperature: 0.0, top_p: 1.0, seed: 0, ignore_eos: true };
    let got = generate(&lm, &ids(&r["plain_ids"]), 8, &s, |_| {}).unwrap();
    assert_eq!(got, ids(&r["greedy_ids"]));
}

#[test]
fn sampling_is_reproducible_per_seed() {
    let lm = load::load_model(&fixture("tiny-llama-gqa"), &Device::Cpu).unwrap();
    let prompt = ids(&reference()["plain_ids"]);
    let run = |seed| {
        let s = Sampling { temperature: 1.0, top_p: 0.95, seed, ignore_eos: true };
        generate(&lm, &prompt, 12, &s, |_| {}).unwrap()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8), "different seeds should sample differently on a random model");
}

#[test]
fn cli_generate_and_probe_on_hf_dir() {
    let bin = env!("CARGO_BIN_EXE_whet");
    let out = std::process::Command::new(bin)
        .args(["generate", "--model"])
        .arg(fixture("tiny-llama-gqa"))
        .args(["--prompt", "How are", "--max-tokens", "5", "--temperature", "0", "--cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());

    let out = std::process::Command::new(bin)
        .args(["probe", "--model"])
        .arg(fixture("tiny-llama-gqa"))
        .args(["--prompt", "How are", "--chat", "--top-k", "3", "--temperature", "0.5", "--json", "--cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["top"].as_array().unwrap().len(), 3);
    let chat_ids = ids(&v["prompt_ids"]);
    assert_eq!(chat_ids[0], 1, "starts with <|im_start|>");

    // A bad temperature is a clear error, not a panic.
    let out = std::process::Command::new(bin)
        .args(["probe", "--model"])
        .arg(fixture("tiny-llama-gqa"))
        .args(["--prompt", "x", "--temperature", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--temperature must be a positive number"));
}
