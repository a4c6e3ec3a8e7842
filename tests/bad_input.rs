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
