//! Logits, loss and gradient parity with HF transformers on tiny random models.
//! Fixtures: scripts/reference/make_tiny_models.py.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use whet::load;
use whet::model::{ops, RopeLayout};

/// Loads a fixture, runs the reference batch, and checks logits and loss to 1e-4 and every
/// parameter's gradient norm to 1e-3 relative.
fn check(name: &str) {
    let dir = fixture(name);
    let r = reference(&dir);
    let dev = Device::Cpu;
    let (cfg, w) = load::load_weights(&dir, &dev).unwrap();
    let (vars, tensors) = as_vars(w, DType::F32);
    let model = load::build_model(&dir, &cfg, tensors, &dev).unwrap();

    let logits = model.forward(&r.ids, None).unwrap();
    let d = max_abs_diff(&logits, &r.logits);
    assert!(d < 1e-4, "{name}: logits differ from HF by {d}");

    let (loss, n) = ops::causal_lm_loss(&logits, &r.ids, None).unwrap();
    let loss_v = loss.to_scalar::<f32>().unwrap();
    assert_eq!(n as usize, r.ids.dims()[0] * (r.ids.dims()[1] - 1));
    assert!((loss_v - r.loss).abs() < 1e-4, "{name}: loss {loss_v} vs HF {}", r.loss);

    let grads = loss.backward().unwrap();
    assert_eq!(vars.len(), r.grad_norms.len(), "{name}: parameter count");
    for (k, want) in &r.grad_norms {
        let v = vars.get(k).unwrap_or_else(|| panic!("{name}: no var {k}"));
        let g = grads.get(v).unwrap_or_else(|| panic!("{name}: {k} got no gradient"));
        let got = g.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap() as f64;
        let rel = (got - want).abs() / want.max(1e-12);
        assert!(rel < 1e-3, "{name}: grad norm of {k}: {got} vs HF {want} (rel {rel:.2e})");
    }
}

#[test]
fn llama_gqa_tied_matches_hf() {
    check("tiny-llama-gqa");
}

#[test]
fn llama_untied_llama3_rope_sharded_matches_hf() {
    check("tiny-llama-untied");
}

#[test]
fn qwen2_qkv_bias_matches_hf() {
    check("tiny-qwen2-bias");
}

/// The GGUF written the way llama.cpp converts (Q/K rows permuted) loads back to HF's logits.
#[test]
fn gguf_unpermutes_qk_to_match_hf() {
    let r = reference(&fixture("tiny-llama-gqa"));
    let path = fixture("tiny-llama-gqa.gguf");
    let (cfg, w) = load::load_weights(&path, &Device::Cpu).unwrap();
    assert!(cfg.tie_word_embeddings);
    let model = load::build_model(&path, &cfg, w, &Device::Cpu).unwrap();
    let d = max_abs_diff(&model.forward(&r.ids, None).unwrap(), &r.logits);
    assert!(d < 1e-4, "GGUF logits differ from HF by {d}");
}

/// llama.cpp's row permutation, applied to HF weights.
fn permute(w: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    // (rows, cols) -> (nh, 2, hs/2, cols) -> (nh, hs/2, 2, cols)
    w.reshape((n_head, 2, rows / n_head / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// Interleaved rope on permuted Q/K rows is the same function as rotate-half rope on HF rows.
#[test]
fn interleaved_rope_on_permuted_weights_matches_hf() {
    let dir = fixture("tiny-llama-gqa");
    let r = reference(&dir);
    let (mut cfg, mut w) = load::load_weights(&dir, &Device::Cpu).unwrap();
    cfg.rope_layout = RopeLayout::Interleaved;
    for (k, t) in w.iter_mut() {
        if k.ends_with("q_proj.weight") {
            *t = permute(t, cfg.num_attention_heads);
        } else if k.ends_with("k_proj.weight") {
            *t = permute(t, cfg.num_key_value_heads);
        }
    }
    let model = load::build_model(&dir, &cfg, w, &Device::Cpu).unwrap();
    let d = max_abs_diff(&model.forward(&r.ids, None).unwrap(), &r.logits);
    assert!(d < 1e-4, "interleaved rope logits differ from HF by {d}");
}

/// Incremental decoding with the KV cache gives the same logits as one full forward pass.
#[test]
fn kv_cache_matches_full_forward() {
    let dir = fixture("tiny-qwen2-bias");
    let r = reference(&dir);
    let (cfg, w) = load::load_weights(&dir, &Device::Cpu).unwrap();
    let model = load::build_model(&dir, &cfg, w, &Device::Cpu).unwrap();
    let mut cache = whet::model::KvCache::new(cfg.num_hidden_layers);
    let t = r.ids.dims()[1];
    let first = model.forward(&r.ids.narrow(1, 0, 5).unwrap(), Some(&mut cache)).unwrap();
    let mut parts = vec![first];
    for i in 5..t {
        parts.push(model.forward(&r.ids.narrow(1, i, 1).unwrap(), Some(&mut cache)).unwrap());
    }
    assert_eq!(cache.len(), t);
    let inc = Tensor::cat(&parts, 1).unwrap();
    let d = max_abs_diff(&inc, &r.logits);
    assert!(d < 1e-4, "cached logits differ from HF by {d}");
}
