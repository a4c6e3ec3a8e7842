//! `whet export`: every format loads back with the logits of what was exported; the GGUF's
//! Q/K rows are in llama.cpp's own order (byte for byte what its converter wrote for the same
//! model); bad requests are refused before anything is written.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::*;
use whet::engine::config::RunConfig;
use whet::engine::trainer::Trainer;
use whet::export::{run, ExportArgs, Format};
use whet::load::{self, gguf, gguf_file::GgufFile};

fn args(source: &Path, format: Format, out: &Path) -> ExportArgs {
    ExportArgs {
        source: source.to_path_buf(),
        format,
        quant: None,
        out: out.to_path_buf(),
        adapter: None,
        force: false,
        ollama: false,
        max_shard_bytes: load::hf::DEFAULT_SHARD,
    }
}

fn export(a: &ExportArgs) -> PathBuf {
    run(a, &mut |_| {}).unwrap()
}

fn logits(path: &Path, adapter: Option<&Path>) -> Tensor {
    let lm = match adapter {
        Some(a) => load::load_model_with_adapter(path, a, &Device::Cpu).unwrap(),
        None => load::load_model(path, &Device::Cpu).unwrap(),
    };
    let ids = reference(&fixture("tiny-llama-gqa")).ids;
    lm.model.forward(&ids, None).unwrap()
}

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    max_abs_diff(a, b) / scale
}

#[test]
fn qk_permutation_round_trips_bit_exactly_with_gqa() {
    let w = Tensor::randn(0f32, 1.0, (2 * 8, 32), &Device::Cpu).unwrap();
    for heads in [1, 2] {
        let p = gguf::permute(&w, heads).unwrap();
        assert!(max_abs_diff(&p, &w) > 0.0);
        assert_eq!(max_abs_diff(&gguf::unpermute(&p, heads).unwrap(), &w), 0.0);
    }
}

/// An f32 GGUF export of the tiny HF model holds, for every tensor, the bytes llama.cpp's
/// Python converter wrote for it (`scripts/reference/make_tiny_models.py`).
#[test]
fn gguf_tensors_are_the_converters_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t.gguf");
    export(&ExportArgs { quant: Some("f32".into()), ..args(&fixture("tiny-llama-gqa"), Format::Gguf, &out) });
    let (ours, theirs) =
        (GgufFile::open(&out).unwrap(), GgufFile::open(&fixture("tiny-llama-gqa.gguf")).unwrap());
    assert_eq!(ours.version, 3);
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    for t in &theirs.tensors {
        let o = ours.tensor_info(&t.name).unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!((&o.shape, o.dtype), (&t.shape, t.dtype), "{}", t.name);
        assert!(ours.raw(o) == theirs.raw(t), "{}: bytes differ", t.name);
    }
    // Same logits as the HF directory, through whet's GGUF loader.
    assert!(rel(&logits(&out, None), &logits(&fixture("tiny-llama-gqa"), None)) < 1e-6);
}

#[test]
fn gguf_quant_types_load_back_within_their_error() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = logits(&fixture("tiny-llama-gqa"), None);
    // The tiny model's weights are wide (N(0, 0.2)) and every matrix, embeddings included,
    // is quantized: the errors grow as the types shrink.
    let mut last = 0.0;
    for (q, bound) in [("f16", 5e-3), ("q8_0", 0.08)] {
        let out = tmp.path().join(format!("{q}.gguf"));
        export(&ExportArgs { quant: Some(q.into()), ..args(&fixture("tiny-llama-gqa"), Format::Gguf, &out) });
        let e = rel(&logits(&out, None), &hf);
        assert!(e < bound && e > last, "{q}: relative logit error {e} (the type before: {last})");
        last = e;
    }
    // At 4 bits the tiny random model's logits are noise; its weights are not.
    let out = tmp.path().join("q4_0.gguf");
    export(&ExportArgs {
        quant: Some("q4_0".into()),
        ..args(&fixture("tiny-llama-gqa"), Format::Gguf, &out)
    });
    let (_, w4) = load::load_weights(&out, &Device::Cpu).unwrap();
    let (_, w) = load::load_weights(&fixture("tiny-llama-gqa"), &Device::Cpu).unwrap();
    let name = "model.layers.1.self_attn.q_proj.weight";
    let rms = |t: &Tensor| t.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let e = rms(&(&w4[name] - &w[name]).unwrap()) / rms(&w[name]);
    assert!(e > 0.01 && e < 0.13, "q4_0: relative RMS weight error {e}");
    // k-quants need rows of 256: the 256-wide fixture takes q4k/q6k as asked, and the tiny
    // one falls back as llama.cpp does (q4k -> q5_0).
    let out = tmp.path().join("wide.gguf");
    export(&ExportArgs { quant: Some("q4k".into()), ..args(&fixture("tiny-llama-256"), Format::Gguf, &out) });
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(format!("{:?}", g.tensor_info("blk.0.attn_q.weight").unwrap().dtype), "Q4K");
    assert_eq!(format!("{:?}", g.tensor_info("blk.0.attn_norm.weight").unwrap().dtype), "F32");
    let out = tmp.path().join("narrow.gguf");
    export(&ExportArgs { quant: Some("q4k".into()), ..args(&fixture("tiny-llama-gqa"), Format::Gguf, &out) });
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(format!("{:?}", g.tensor_info("blk.0.attn_q.weight").unwrap().dtype), "Q5_0");
}

#[test]
fn merged_export_equals_the_model_with_its_adapter_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = fixture("train/lora_init");
    let out = tmp.path().join("merged");
    let a = ExportArgs {
        adapter: Some(adapter.clone()),
        max_shard_bytes: 40_000,
        ..args(&fixture("tiny-llama-gqa"), Format::Merged, &out)
    };
    export(&a);
    assert!(out.join("model.safetensors.index.json").is_file(), "sharded at 40 kB");
    assert!(out.join("generation_config.json").is_file());
    let want = logits(&fixture("tiny-llama-gqa"), Some(&adapter));
    assert!(rel(&logits(&out, None), &want) < 1e-5);
}

fn qlora_run(dir: &Path) {
    let rest =
        "format = \"tokens\"\nseq_len = 16\n[optim]\nbatch_size = 4\nmax_steps = 3\n[schedule]\nlr = 1e-2";
    let method = "kind = \"qlora\"\nquant = \"q8_0\"\nr = 4\nalpha = 8";
    let cfg = RunConfig::from_toml(&tiny_config_text(method, &fixture("train/tokens.u16"), rest)).unwrap();
    let mut t = Trainer::new(cfg, dir, false, &Device::Cpu).unwrap();
    while !t.done() {
        t.train_step().unwrap();
    }
    t.save_checkpoint().unwrap();
}

/// A QLoRA run exports as a PEFT adapter, a merged directory and a GGUF, all computing what
/// the run computes: the adapter on the base dequantized as it was trained against.
#[test]
fn a_qlora_run_exports_to_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("run");
    let e =
        format!("{:#}", run(&args(&runs, Format::Merged, &tmp.path().join("x")), &mut |_| {}).unwrap_err());
    assert!(e.contains("run") || e.contains("no such"), "{e}");
    std::fs::create_dir_all(runs.join("checkpoints")).unwrap();
    let e =
        format!("{:#}", run(&args(&runs, Format::Merged, &tmp.path().join("x")), &mut |_| {}).unwrap_err());
    assert!(e.contains("no complete checkpoint"), "{e}");
    qlora_run(&runs);

    let peft = export(&args(&runs, Format::Peft, &tmp.path().join("adapter")));
    let merged = export(&args(&runs, Format::Merged, &tmp.path().join("merged")));
    let gguf = export(&ExportArgs {
        quant: Some("f32".into()),
        ollama: true,
        ..args(&runs, Format::Gguf, &tmp.path().join("gguf/m.gguf"))
    });
    assert!(tmp.path().join("gguf/Modelfile").is_file());
    // The run's base, dequantized, with the adapter: what training computed.
    let qb =
        load::quantized::load(&fixture("tiny-llama-gqa"), "q8_0".parse().unwrap(), &Device::Cpu).unwrap();
    let base_dir = tmp.path().join("base");
    load::hf::write_dir(&base_dir, &qb.config, &qb.dequantized().unwrap(), None, &[]).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tiny-llama-gqa").join(f), base_dir.join(f)).unwrap();
    }
    let want = logits(&base_dir, Some(&peft));
    assert!(rel(&logits(&merged, None), &want) < 1e-5);
    assert!(rel(&logits(&gguf, None), &want) < 1e-5);
    // The adapter trained: it is not the float base's answer.
    assert!(rel(&want, &logits(&fixture("tiny-llama-gqa"), None)) > 1e-4);
}

#[test]
fn bad_requests_are_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama-gqa");
    let out = tmp.path().join("t.gguf");
    std::fs::write(&out, "mine").unwrap();
    let e = format!("{:#}", run(&args(&model, Format::Gguf, &out), &mut |_| {}).unwrap_err());
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "mine");
    let bad =
        ExportArgs { quant: Some("q9_9".into()), ..args(&model, Format::Gguf, &tmp.path().join("n.gguf")) };
    let e = format!("{:#}", run(&bad, &mut |_| {}).unwrap_err());
    assert!(e.contains("q9_9") && e.contains("q4_0"), "{e}");
    let e =
        format!("{:#}", run(&args(&model, Format::Peft, &tmp.path().join("p")), &mut |_| {}).unwrap_err());
    assert!(e.contains("LoRA"), "{e}");
    assert!(!tmp.path().join("n.gguf").exists() && !tmp.path().join("p").exists());
    // --force replaces the file, atomically: no temp file is left beside it.
    export(&ExportArgs { force: true, ..args(&model, Format::Gguf, &out) });
    assert!(GgufFile::open(&out).is_ok());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

/// The GGUF adapter is what llama.cpp's `--lora` adds to the base GGUF: for every adapted
/// tensor, merged = base + alpha / r · B A, in llama.cpp's row order (B permuted for q and k).
#[test]
fn gguf_adapter_plus_the_base_gguf_is_the_merged_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama-gqa");
    let adapter = fixture("train/lora_init");
    let f32 = |a: ExportArgs| ExportArgs { quant: Some("f32".into()), ..a };
    let base = export(&f32(args(&model, Format::Gguf, &tmp.path().join("base.gguf"))));
    let merged = export(&f32(ExportArgs {
        adapter: Some(adapter.clone()),
        ..args(&model, Format::Gguf, &tmp.path().join("merged.gguf"))
    }));
    let lora = export(&ExportArgs {
        adapter: Some(adapter.clone()),
        ..args(&model, Format::GgufAdapter, &tmp.path().join("adapter.gguf"))
    });
    let (base, merged, lora) =
        (GgufFile::open(&base).unwrap(), GgufFile::open(&merged).unwrap(), GgufFile::open(&lora).unwrap());
    assert_eq!(lora.get("general.type").and_then(|v| v.as_str()), Some("adapter"));
    assert_eq!(lora.get("adapter.type").and_then(|v| v.as_str()), Some("lora"));
    let alpha = lora.get("adapter.lora.alpha").and_then(|v| v.as_f64()).unwrap();
    let dev = Device::Cpu;
    let t = |g: &GgufFile, n: &str| {
        g.dequantize(g.tensor_info(n).unwrap_or_else(|| panic!("{n}")), &dev).unwrap()
    };
    let mut checked = 0;
    for info in lora.tensors.iter().filter(|i| i.name.ends_with(".lora_a")) {
        let w = info.name.strip_suffix(".lora_a").unwrap();
        let (a, b) = (t(&lora, &info.name), t(&lora, &format!("{w}.lora_b")));
        let r = a.dim(0).unwrap() as f64;
        let want = (t(&base, w) + (b.matmul(&a).unwrap() * (alpha / r)).unwrap()).unwrap();
        assert!(max_abs_diff(&t(&merged, w), &want) < 1e-6, "{w}");
        checked += 1;
    }
    assert!(checked >= 4, "{checked} adapted tensors");
}
