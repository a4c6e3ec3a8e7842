//! Malformed model files give an error naming the file and the tensor or field, never a panic.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::*;
use whet::load;

/// Copies a fixture dir into a fresh temp dir.
fn copy_dir(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    (tmp, dst)
}

fn load_err(path: &Path) -> String {
    match load::load_model(path, &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not have", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} does not mention {p:?}");
    }
}

#[test]
fn truncated_safetensors() {
    let (_t, dir) = copy_dir("tiny-llama-gqa");
    let f = dir.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    assert_mentions(&load_err(&dir), &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn safetensors_bad_header() {
    let (_t, dir) = copy_dir("tiny-llama-gqa");
    let f = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[8] = b'#'; // the header JSON no longer parses
    std::fs::write(&f, &bytes).unwrap();
    assert_mentions(&load_err(&dir), &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = copy_dir("tiny-llama-gqa");
    let f = dir.join("model.safetensors");
    let mut w = candle_core::safetensors::load(&f, &Device::Cpu).unwrap();
    w.remove("model.layers.1.mlp.up_proj.weight").unwrap();
    candle_core::safetensors::save(&w, &f).unwrap();
    assert_mentions(&load_err(&dir), &[dir.to_str().unwrap(), "model.layers.1.mlp.up_proj.weight"]);
}

#[test]
fn shape_disagreeing_with_config_is_named() {
    let (_t, dir) = copy_dir("tiny-llama-gqa");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"intermediate_size\": 64", "\"intermediate_size\": 65"),
    )
    .unwrap();
    assert_mentions(&load_err(&dir), &["shape mismatch", "mlp.gate_proj.weight"]);
}

#[test]
fn bad_config_json_is_named() {
    let (_t, dir) = copy_dir("tiny-llama-gqa");
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 32,").unwrap();
    assert_mentions(&load_err(&dir), &["config.json"]);
}

// ---- GGUF ----

fn gguf_copy() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.gguf");
    let bytes = std::fs::read(fixture("tiny-llama-gqa.gguf")).unwrap();
    (tmp, p, bytes)
}

/// Loads patched GGUF bytes and returns the error text.
fn gguf_err(patch: impl FnOnce(&mut Vec<u8>)) -> String {
    let (_t, p, mut bytes) = gguf_copy();
    patch(&mut bytes);
    std::fs::write(&p, &bytes).unwrap();
    let built = load::load_weights(&p, &Device::Cpu)
        .and_then(|(cfg, w)| load::build_model(&p, &cfg, w, &Device::Cpu));
    let e = match built {
        Ok(_) => panic!("patched GGUF loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("m.gguf"), "error {e:?} does not name the file");
    e
}

/// Byte offset of the u32 type field of the tensor info named `name`.
fn tensor_info_type_offset(bytes: &[u8], name: &str) -> usize {
    let pat = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    let at = bytes.windows(pat.len()).position(|w| w == pat.as_slice()).expect("tensor info");
    let dims_at = at + pat.len();
    let n_dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().unwrap()) as usize;
    dims_at + 4 + 8 * n_dims
}

#[test]
fn gguf_bad_magic() {
    assert_mentions(&gguf_err(|b| b[0..4].copy_from_slice(b"GGML")), &["bad magic"]);
}

#[test]
fn gguf_bad_version() {
    assert_mentions(&gguf_err(|b| b[4..8].copy_from_slice(&7u32.to_le_bytes())), &["version 7"]);
}

#[test]
fn gguf_tensor_count_out_of_range() {
    let e = gguf_err(|b| b[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes()));
    assert_mentions(&e, &["tensor count", "more than the file can hold"]);
}

#[test]
fn gguf_metadata_count_out_of_range() {
    let e = gguf_err(|b| b[16..24].copy_from_slice(&1_000_000_000u64.to_le_bytes()));
    assert_mentions(&e, &["metadata count"]);
}

#[test]
fn gguf_unknown_tensor_type() {
    let e = gguf_err(|b| {
        let at = tensor_info_type_offset(b, "blk.0.attn_q.weight");
        b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    });
    assert_mentions(&e, &["blk.0.attn_q.weight", "ggml type 99"]);
}

#[test]
fn gguf_offset_past_end() {
    let e = gguf_err(|b| {
        let at = tensor_info_type_offset(b, "blk.1.ffn_up.weight") + 4;
        b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    });
    assert_mentions(&e, &["blk.1.ffn_up.weight", "past the end of the file"]);
}

#[test]
fn gguf_truncated() {
    let e = gguf_err(|b| b.truncate(b.len() - 64));
    assert_mentions(&e, &["past the end of the file"]);
}

#[test]
fn gguf_truncated_in_header() {
    // Cut inside the first metadata key: the counts no longer fit either.
    let e = gguf_err(|b| b.truncate(30));
    assert_mentions(&e, &["more than the file can hold"]);
    let e = gguf_err(|b| b.truncate(1000));
    assert_mentions(&e, &["truncated at byte"]);
}

#[test]
fn gguf_missing_tensor_is_named() {
    // Renaming the tensor makes the loader skip it (unknown), so the model lacks it.
    let e = gguf_err(|b| {
        let name = b"blk.1.ffn_gate.weight";
        let at = b.windows(name.len()).position(|w| w == name).unwrap();
        b[at..at + 3].copy_from_slice(b"xlk");
    });
    assert_mentions(&e, &["model.layers.1.mlp.gate_proj.weight"]);
}

#[test]
fn gguf_shape_disagreeing_with_metadata_is_named() {
    let e = gguf_err(|b| {
        // llama.feed_forward_length: the u32 after the key and its type.
        let key = b"llama.feed_forward_length";
        let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
        b[at..at + 4].copy_from_slice(&48u32.to_le_bytes());
    });
    assert_mentions(&e, &["shape mismatch", "mlp"]);
}

#[test]
fn missing_path_and_non_model_file() {
    let e = format!("{:#}", load::load_model(Path::new("/no/such/model.gguf"), &Device::Cpu).err().unwrap());
    assert_mentions(&e, &["/no/such/model.gguf"]);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("notes.txt");
    std::fs::write(&f, "hello").unwrap();
    let e = format!("{:#}", load::load_model(&f, &Device::Cpu).err().unwrap());
    assert_mentions(&e, &["notes.txt", "not a model"]);
}

// ---- Absurd or non-finite numbers (issue 11) ----

/// A config.json number that is valid JSON but absurd or non-finite: refused naming the file
/// and the field, before anything is sized by it.
#[test]
fn absurd_or_non_finite_config_json_numbers_are_named() {
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("rms_norm_eps", serde_json::json!(-1.0), "rms_norm_eps"),
        ("rms_norm_eps", serde_json::json!(0.0), "rms_norm_eps"),
        ("max_position_embeddings", serde_json::json!(1_000_000_000_000u64), "max_position_embeddings"),
        ("vocab_size", serde_json::json!(1u64 << 40), "vocab_size"),
        ("num_hidden_layers", serde_json::json!(1u64 << 20), "num_hidden_layers"),
    ];
    for (key, value, named) in cases {
        let (_t, dir) = copy_dir("tiny-llama-gqa");
        let path = dir.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg[key] = value.clone();
        std::fs::write(&path, cfg.to_string()).unwrap();
        let e = load_err(&dir);
        assert_mentions(&e, &["config.json", named]);
        eprintln!("{key} = {value}: {e}");
    }
}

/// The offset of the value of the GGUF metadata key `key` (after its u32 type tag).
fn gguf_value_offset(bytes: &[u8], key: &str) -> usize {
    let pat = [&(key.len() as u64).to_le_bytes()[..], key.as_bytes()].concat();
    let at = bytes.windows(pat.len()).position(|w| w == pat).unwrap();
    at + pat.len() + 4
}

#[test]
fn gguf_absurd_context_and_nan_eps_are_named() {
    let e = gguf_err(|b| {
        let at = gguf_value_offset(b, "llama.context_length");
        b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    });
    assert_mentions(&e, &["max_position_embeddings", "limit"]);
    for eps in [f32::NAN, -1.0] {
        let e = gguf_err(|b| {
            let at = gguf_value_offset(b, "llama.attention.layer_norm_rms_epsilon");
            b[at..at + 4].copy_from_slice(&eps.to_le_bytes());
        });
        assert_mentions(&e, &["rms_norm_eps"]);
    }
}

/// Every float of a run config is checked for finiteness and range, and counts for zero,
/// each error naming its key.
#[test]
fn run_config_numbers_out_of_range_are_named() {
    use whet::engine::config::RunConfig;
    let base = tiny_config_text(
        r#"kind = "full""#,
        &fixture("train/tokens.u16"),
        "format = \"tokens\"\nseq_len = 16\n",
    );
    assert!(RunConfig::from_toml(&base).is_ok());
    let cases = [
        ("optim.weight_decay=nan", "optim.weight_decay"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.betas=[1.5, 2.0]", "optim.betas[0]"),
        ("optim.betas=[0.9, inf]", "optim.betas[1]"),
        ("optim.eps=-1", "optim.eps"),
        ("optim.eps=nan", "optim.eps"),
        ("optim.grad_clip=-1", "optim.grad_clip"),
        ("optim.grad_accum=0", "optim.grad_accum"),
        ("optim.batch_size=0", "optim.batch_size"),
        ("optim.max_steps=0", "optim.max_steps"),
        ("optim.epochs=-2.0", "optim.epochs"),
        ("optim.dropout=1.0", "optim.dropout"),
        ("data.eval_fraction=-0.5", "data.eval_fraction"),
        ("data.eval_fraction=nan", "data.eval_fraction"),
        ("method.alpha=nan", "method.alpha"),
        ("tokenizer.vocab_size=1000000000", "tokenizer.vocab_size"),
    ];
    for (set, key) in cases {
        let e = RunConfig::with_overrides(&base, &[set.to_string()]).err();
        let e = e.unwrap_or_else(|| panic!("{set} was accepted"));
        assert!(e.contains(key), "{set}: {e}");
    }
}

/// A model whose weights hold NaN: the probe is an error, not a table of NaN probabilities.
#[test]
fn a_probe_of_a_nan_model_is_an_error() {
    let (_t, dir) = copy_dir("tiny-llama-gqa");
    let path = dir.join("model.safetensors");
    let mut w = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let norm = w.get("model.norm.weight").unwrap();
    let nan = (norm * f64::NAN).unwrap();
    w.insert("model.norm.weight".into(), nan);
    candle_core::safetensors::save(&w, &path).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_whet"))
        .args(["probe", "--cpu", "--model"])
        .arg(&dir)
        .args(["--prompt", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not finite"), "{err}");
}

// ---- Chat templates that never end ----

/// A template with loops nested three deep, or one that renders gigabytes, stops with an
/// error naming the template's file, for the probe and for training data alike.
#[test]
fn a_runaway_chat_template_is_stopped_and_named() {
    let cases = [
        ("{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}", "steps of work"),
        ("{% for a in range(100000) %}{% for b in range(1000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}{% endfor %}", "bytes"),
        ("{{ messages[0]['content'] | nosuchfilter }}", "chat_template.jinja"),
    ];
    for (template, why) in cases {
        let (_t, dir) = copy_dir("tiny-llama-gqa");
        std::fs::write(dir.join("chat_template.jinja"), template).unwrap();
        let t0 = std::time::Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_whet"))
            .args(["probe", "--cpu", "--chat", "--model"])
            .arg(&dir)
            .args(["--prompt", "hello"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{template}");
        assert!(err.contains("chat_template.jinja") && err.contains(why), "{err}");
        eprintln!("{why}: {:.1}s: {}", t0.elapsed().as_secs_f64(), err.lines().next().unwrap_or(""));
    }
}

// ---- Duplicates and overflowing sizes ----

/// A GGUF with a metadata key or a tensor name twice (the later would win silently: a
/// second block_count hides layers), and a tensor whose byte size overflows: each refused by
/// name. Written with whet's own GGUF writer, which writes what it is given.
#[test]
fn gguf_duplicates_and_overflowing_sizes_are_refused() {
    use candle_core::quantized::GgmlDType;
    use whet::load::gguf_file::{GgufFile, Value};
    use whet::load::gguf_write::{write, GgufTensor};
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str, shape: Vec<usize>| GgufTensor {
        name: name.into(),
        data: vec![0u8; shape.iter().product::<usize>() * 4],
        shape,
        dtype: GgmlDType::F32,
    };
    let meta = |extra: &[(&str, u32)]| {
        let mut m = vec![("general.architecture".to_string(), Value::Str("llama".into()))];
        m.extend(extra.iter().map(|(k, v)| (k.to_string(), Value::U32(*v))));
        m
    };
    let open = |name: &str, m: &[(String, Value)], ts: &[GgufTensor]| {
        let p = tmp.path().join(name);
        write(&p, m, ts).unwrap();
        match GgufFile::open(&p) {
            Ok(_) => panic!("{name} opened"),
            Err(e) => e.to_string(),
        }
    };
    let e =
        open("keys.gguf", &meta(&[("llama.block_count", 2), ("llama.block_count", 30)]), &[t("a", vec![2])]);
    assert!(e.contains("keys.gguf") && e.contains("\"llama.block_count\" appears twice"), "{e}");
    let e = open(
        "names.gguf",
        &meta(&[]),
        &[t("blk.0.attn_q.weight", vec![2]), t("blk.0.attn_q.weight", vec![2])],
    );
    assert!(e.contains("names.gguf") && e.contains("blk.0.attn_q.weight appears twice"), "{e}");
}

/// The same tensor in two safetensors shards is refused, naming the second shard.
#[test]
fn a_tensor_in_two_shards_is_refused() {
    let (_t, dir) = copy_dir("tiny-llama-gqa");
    let w = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let (a, b): (Vec<_>, Vec<_>) = w.iter().partition(|(n, _)| n.contains("layers.0"));
    let mut first: std::collections::HashMap<String, candle_core::Tensor> =
        a.into_iter().map(|(n, t)| (n.clone(), t.clone())).collect();
    let second: std::collections::HashMap<String, candle_core::Tensor> =
        b.into_iter().map(|(n, t)| (n.clone(), t.clone())).collect();
    first.insert("model.norm.weight".into(), w["model.norm.weight"].clone()); // in both
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    candle_core::safetensors::save(&first, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&second, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    for n in first.keys() {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for n in second.keys() {
        map.entry(n.clone()).or_insert("model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_mentions(
        &load_err(&dir),
        &["model-00002-of-00002.safetensors", "model.norm.weight", "earlier shard"],
    );
}

/// A 1-D f32 tensor of 2^62 elements: the count fits in u64, its byte size (× 4) wraps to 0,
/// which once passed the end-of-file check and made candle panic.
#[test]
fn gguf_tensor_byte_size_overflow_is_refused() {
    let e = gguf_err(|b| {
        let ty = tensor_info_type_offset(b, "output_norm.weight");
        b[ty - 8..ty].copy_from_slice(&(1u64 << 62).to_le_bytes());
    });
    assert_mentions(&e, &["output_norm.weight", "overflow"]);
}
