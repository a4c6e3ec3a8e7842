//! QLoRA's quantized base: NF4 bit for bit against bitsandbytes, GGUF types round trip, the
//! `keep` path's row permutation, and the quantized linear against dense LoRA on the
//! dequantized base (the same weights, so only float summation order may differ).

mod common;

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use common::*;
use whet::engine::build::lora_modules;
use whet::load;
use whet::model::lora::{Adapters, LoraSettings};
use whet::model::quant::{nf4, quant_linear, QWeight, QuantKind};
use whet::model::{Kernels, Llama};

fn nf4_fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("nf4").join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn u8s(t: &Tensor) -> Vec<u8> {
    t.to_vec1::<u8>().unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_vec1::<f32>().unwrap()
}

#[test]
fn nf4_code_books_are_bitsandbytes() {
    let f = nf4_fixture();
    assert_eq!(f32s(&f["nf4_code"]), nf4::NF4.to_vec());
    let dynamic = f32s(&f["dynamic_code"]);
    assert_eq!(
        dynamic.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        nf4::dynamic_code().map(f32::to_bits)
    );
}

#[test]
fn nf4_quantizes_bit_for_bit_as_bitsandbytes() {
    let f = nf4_fixture();
    let w = f32s(&f["weight"]);
    // With bitsandbytes' own offset (its f32 mean), every code and scale is its.
    let bnb_offset = f32s(&f["bnb_offset"])[0];
    let p = nf4::quantize(&w, Some(bnb_offset));
    assert_eq!(p.packed, u8s(&f["bnb_packed"]), "4-bit codes");
    assert_eq!(p.absmax_q, u8s(&f["bnb_absmax_q"]), "8-bit scale codes");
    assert_eq!(p.nested_absmax, f32s(&f["bnb_nested_absmax"]), "nested absmax");
    let d = nf4::dequantize(&p, w.len());
    assert_eq!(d, f32s(&f["bnb_dequantized"]), "dequantized");
    // Our own offset is the f64 mean: the NumPy replica's, within an ulp of bitsandbytes'.
    let ours = nf4::quantize(&w, None);
    assert_eq!(ours.offset, f32s(&f["offset"])[0]);
    assert!((ours.offset - bnb_offset).abs() <= bnb_offset * f32::EPSILON);
    assert_eq!(ours.packed, u8s(&f["packed"]));
    assert_eq!(ours.absmax_q, u8s(&f["absmax_q"]));
    assert_eq!(ours.nested_absmax, f32s(&f["nested_absmax"]));
}

#[test]
fn nf4_on_a_device_dequantizes_to_the_reference_bits() {
    let f = nf4_fixture();
    let w = f32s(&f["weight"]);
    // 19232 = 601 rows of 32: blocks of 64 cross rows, and the last is short.
    let t = Tensor::from_vec(w.clone(), (601, 32), &Device::Cpu).unwrap();
    let q = QWeight::quantize(&t, QuantKind::Nf4, "w").unwrap();
    let d = q.dequantize().unwrap();
    assert_eq!(d.dims(), &[601, 32]);
    let (got, want) = (f32s(&d.flatten_all().unwrap()), f32s(&f["dequantized"]));
    // The composed form a GPU runs gives the same bits.
    let QWeight::Nf4(t) = &q else { panic!("nf4") };
    assert_eq!(f32s(&t.dequantize_composed().unwrap().flatten_all().unwrap()), want);
    let bad: Vec<_> = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).take(5).collect();
    let show: Vec<_> = bad.iter().map(|&i| (i, got[i], want[i])).collect();
    assert!(bad.is_empty(), "differs at (index, ours, reference): {show:?}");
    // 4.127 bits a weight, as the QLoRA paper counts (plus our pad to whole blocks).
    let bits = q.bytes() as f64 * 8.0 / w.len() as f64;
    assert!((4.12..4.2).contains(&bits), "{bits} bits a weight");
}

/// Every GGUF type QLoRA offers quantizes and dequantizes within its own error scale.
#[test]
fn gguf_types_round_trip() {
    let dev = Device::Cpu;
    let w = (Tensor::randn(0f32, 0.05, (16, 256), &dev).unwrap()).contiguous().unwrap();
    let rms = |t: &Tensor| t.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let scale = rms(&w);
    for (name, bound) in [
        ("q8_0", 0.01),
        ("q6k", 0.03),
        ("q5_0", 0.06),
        ("q5_1", 0.06),
        ("q5k", 0.06),
        ("q4_0", 0.13),
        ("q4_1", 0.13),
        ("q4k", 0.13),
        ("nf4", 0.13),
        ("q3k", 0.25),
        ("q2k", 0.5),
    ] {
        let kind: QuantKind = name.parse().unwrap();
        let q = QWeight::quantize(&w, kind, "w").unwrap();
        assert_eq!(q.type_name(), name);
        let err = rms(&(q.dequantize().unwrap() - &w).unwrap()) / scale;
        assert!(err < bound, "{name}: relative RMS error {err} >= {bound}");
        assert!(err > 0.0, "{name}: no error at all is not quantization");
    }
}

#[test]
fn a_shape_the_blocks_do_not_fit_names_the_layer() {
    let w = Tensor::zeros((8, 96), DType::F32, &Device::Cpu).unwrap();
    let e = QWeight::quantize(&w, "q4k".parse().unwrap(), "model.layers.3.mlp.up_proj.weight").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("model.layers.3.mlp.up_proj.weight") && msg.contains("256"), "{msg}");
    assert!("q4_z".parse::<QuantKind>().unwrap_err().contains("q4_0"));
    assert_eq!("Q4_K_M".parse::<QuantKind>().unwrap(), QuantKind::Ggml(GgmlDType::Q4K));
}

/// `keep` reads a GGUF's Q8_0 projections as they are, undoing llama.cpp's Q/K permutation
/// on whole quantized rows: the same weights as dequantizing first, bit for bit.
#[test]
fn keep_undoes_the_qk_permutation_on_quantized_rows() {
    let dev = Device::Cpu;
    let path = fixture("tiny-llama-gqa.q8_0.gguf");
    let qb = load::quantized::load(&path, QuantKind::Keep, &dev).unwrap();
    assert_eq!(qb.quant.len(), 2 * 7);
    assert!(qb.quant.values().all(|q| q.type_name() == "q8_0"));
    let (_, dense) = load::load_weights(&path, &dev).unwrap();
    let kept = qb.dequantized().unwrap();
    assert_eq!(kept.len(), dense.len());
    for (name, t) in &dense {
        assert_eq!(max_abs_diff(t, &kept[name]), 0.0, "{name}");
    }
    // And they are the HF model's weights within Q8_0's error.
    let (_, hf) = load::load_weights(&fixture("tiny-llama-gqa"), &dev).unwrap();
    let q = "model.layers.1.self_attn.k_proj.weight";
    assert!(max_abs_diff(&hf[q], &kept[q]) < 0.01, "{}", max_abs_diff(&hf[q], &kept[q]));
}

#[test]
fn keep_on_an_hf_directory_is_refused() {
    let e = load::quantized::load(&fixture("tiny-llama-gqa"), QuantKind::Keep, &Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("GGUF"), "{e}");
}

#[test]
fn quant_linear_gives_dx_only_the_dense_frozen_linears() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.1, (48, 64), &dev).unwrap();
    let q = QWeight::quantize(&w, QuantKind::Nf4, "w").unwrap();
    let wd = q.dequantize().unwrap();
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 64), &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1.0, (2, 3, 48), &dev).unwrap();
    let y = quant_linear(x.as_tensor(), &q).unwrap();
    let dense = x.as_tensor().broadcast_matmul(&wd.t().unwrap()).unwrap();
    assert!(max_abs_diff(&y, &dense) < 1e-5);
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = g.get(&x).unwrap();
    assert!(!dx.track_op(), "a custom op's gradient keeps no graph");
    let want = r.broadcast_matmul(&wd).unwrap();
    assert!(max_abs_diff(dx, &want) < 1e-5);
}

/// A QLoRA model and dense LoRA on the dequantized weights: the same loss, the same A/B
/// gradients to f32 rounding (the weights are identical; only summation order differs).
#[test]
fn qlora_matches_dense_lora_on_the_dequantized_base() {
    let dev = Device::Cpu;
    for (kind, kernels) in [("nf4", Kernels::Fused), ("q8_0", Kernels::Composed), ("q4_0", Kernels::Fused)] {
        let mut qb = load::quantized::load(&fixture("tiny-llama-gqa"), kind.parse().unwrap(), &dev).unwrap();
        qb.config.kernels = kernels;
        let s = LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
            rslora: false,
        };
        let mut vars = HashMap::new();
        for (module, d_in, d_out) in lora_modules(&qb.config, &s).unwrap() {
            let a = Tensor::randn(0f32, 0.2, (s.r, d_in), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.2, (d_out, s.r), &dev).unwrap();
            vars.insert(format!("{module}.lora_A.weight"), Var::from_tensor(&a).unwrap());
            vars.insert(format!("{module}.lora_B.weight"), Var::from_tensor(&b).unwrap());
        }
        let tensors: HashMap<String, Tensor> =
            vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        let ad_vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let build = |weights: HashMap<String, Tensor>, quant| {
            let ad = Adapters { vb: ad_vb.clone(), settings: &s, quant };
            Llama::load_with_adapters(
                VarBuilder::from_tensors(weights, DType::F32, &dev),
                &qb.config,
                Some(&ad),
            )
            .unwrap()
        };
        let quantized = build(qb.floats.clone(), Some(&qb.quant));
        let dense = build(qb.dequantized().unwrap(), None);
        let ids = reference(&fixture("tiny-llama-gqa")).ids;
        let (lq, ld) = (quantized.loss(&ids, None).unwrap(), dense.loss(&ids, None).unwrap());
        let (fq, fd) = (lq.to_scalar::<f32>().unwrap(), ld.to_scalar::<f32>().unwrap());
        assert!((fq - fd).abs() < 1e-5 * fd.abs(), "{kind}: loss {fq} vs {fd}");
        let (gq, gd) = (lq.backward().unwrap(), ld.backward().unwrap());
        for (name, v) in &vars {
            let (a, b) = (gq.get(v).unwrap(), gd.get(v).unwrap());
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                max_abs_diff(a, b) <= 1e-4 * scale,
                "{kind}: {name}: {} (scale {scale})",
                max_abs_diff(a, b)
            );
        }
    }
}

/// `qlora` with a type whose blocks do not fit the model names the layer and the file.
#[test]
fn qlora_with_unblockable_shapes_names_the_layer() {
    let path = fixture("tiny-llama-gqa");
    let e = load::quantized::load(&path, "q4k".parse().unwrap(), &Device::Cpu).err().unwrap();
    let msg = format!("{e:#}");
    assert!(msg.contains("tiny-llama-gqa") && msg.contains("model.layers.") && msg.contains("256"), "{msg}");
}

/// A checkpoint bitsandbytes saved in 4-bit loads as it is: the NF4 blocks dequantize to
/// bitsandbytes' own values bit for bit, and the model gives the logits of those weights.
#[test]
fn a_bitsandbytes_4bit_directory_loads_directly() {
    let dir = fixture("tiny-llama-gqa-bnb4");
    let dev = Device::Cpu;
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &dev).unwrap();
    let qb = load::quantized::load(&dir, QuantKind::Nf4, &dev).unwrap();
    assert_eq!(qb.quant.len(), 14);
    for (name, q) in &qb.quant {
        assert_eq!(max_abs_diff(&q.dequantize().unwrap(), &r[name]), 0.0, "{name}");
    }
    // Float use (probe, LoRA) dequantizes the same blocks.
    let lm = load::load_model(&dir, &dev).unwrap();
    let ids = reference(&fixture("tiny-llama-gqa")).ids;
    let logits = lm.model.forward(&ids, None).unwrap();
    assert!(max_abs_diff(&logits, &r["logits"]) < 1e-4, "{}", max_abs_diff(&logits, &r["logits"]));
}

/// The k-quants on the 256-wide fixture: every projection takes the type asked.
#[test]
fn k_quants_block_the_wide_fixture() {
    for (kind, bound) in [("q4k", 0.13), ("q6k", 0.03)] {
        let qb =
            load::quantized::load(&fixture("tiny-llama-256"), kind.parse().unwrap(), &Device::Cpu).unwrap();
        assert_eq!(qb.quant.len(), 7);
        let (_, dense) = load::load_weights(&fixture("tiny-llama-256"), &Device::Cpu).unwrap();
        for (name, q) in &qb.quant {
            assert_eq!(q.type_name(), kind);
            let rms = |t: &Tensor| t.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            let e = rms(&(q.dequantize().unwrap() - &dense[name]).unwrap()) / rms(&dense[name]);
            assert!(e > 0.0 && e < bound, "{kind} {name}: {e}");
        }
    }
}

/// A QLoRA base read tensor by tensor: a truncated file or a hostile header length is an error
/// naming the file, never a panic or a huge allocation.
#[test]
fn a_damaged_safetensors_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tiny-llama-gqa").join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(fixture("tiny-llama-gqa").join("model.safetensors")).unwrap();
    let mut hostile = u64::MAX.to_le_bytes().to_vec();
    hostile.extend_from_slice(&bytes[8..]);
    for damaged in [bytes[..bytes.len() / 2].to_vec(), hostile, bytes[..5].to_vec()] {
        std::fs::write(dir.join("model.safetensors"), damaged).unwrap();
        let e = format!("{:#}", load::quantized::load(&dir, QuantKind::Nf4, &Device::Cpu).err().unwrap());
        assert!(e.contains("model.safetensors") && e.contains("safetensors file"), "{e}");
    }
}
