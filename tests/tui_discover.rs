//! Finding models: the HF cache location's precedence, cache entries (complete, partial,
//! broken), the models folder and from-scratch configs.

mod common;

use std::collections::HashMap;

use common::*;
use whet::tui::discover::{hf_cache_dir, scan, scan_cache};
use whet::tui::state::models::{Kind, Status};

#[test]
fn cache_dir_precedence() {
    let env = |pairs: &[(&str, &str)]| {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        hf_cache_dir(move |k| m.get(k).cloned())
    };
    let all = [("HF_HUB_CACHE", "/a"), ("HF_HOME", "/b"), ("XDG_CACHE_HOME", "/c"), ("HOME", "/d")];
    assert_eq!(env(&all).unwrap(), std::path::PathBuf::from("/a"));
    assert_eq!(env(&all[1..]).unwrap(), std::path::PathBuf::from("/b/hub"));
    assert_eq!(env(&all[2..]).unwrap(), std::path::PathBuf::from("/c/huggingface/hub"));
    assert_eq!(env(&all[3..]).unwrap(), std::path::PathBuf::from("/d/.cache/huggingface/hub"));
    assert_eq!(env(&[]), None);
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn cache_entries_complete_partial_and_broken() {
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    // Complete: refs/main → snapshots/<commit> with an HF model.
    let good = c.join("models--tiny--llama");
    std::fs::create_dir_all(good.join("refs")).unwrap();
    std::fs::write(good.join("refs/main"), "abc123\n").unwrap();
    copy_dir(&fixture("tiny-llama-gqa"), &good.join("snapshots/abc123"));
    // Partial: no refs.
    std::fs::create_dir_all(c.join("models--org--partial/blobs")).unwrap();
    // Broken: a snapshot whose weights are garbage.
    let bad = c.join("models--org--broken");
    std::fs::create_dir_all(bad.join("refs")).unwrap();
    std::fs::write(bad.join("refs/main"), "def").unwrap();
    copy_dir(&fixture("tiny-llama-gqa"), &bad.join("snapshots/def"));
    std::fs::write(bad.join("snapshots/def/model.safetensors"), b"\xff\xff\xff\xff\xff\xff\xff\xffnot json")
        .unwrap();
    // Not a model repo at all.
    std::fs::create_dir_all(c.join("datasets--x--y")).unwrap();

    let entries = scan_cache(c);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["org/broken", "org/partial", "tiny/llama"]);
    match &entries[2].status {
        Status::Ok(d) => {
            assert_eq!((d.layers, d.heads, d.kv_heads, d.vocab), (2, 4, 2, 320));
            assert!(d.chat_template);
            // 2 layers × (attention 3072 + MLP 6144 + norms 64) + tied embedding 10240 + norm 32
            assert_eq!(d.params, 28_832);
        }
        s => panic!("{s:?}"),
    }
    assert!(matches!(&entries[1].status, Status::Broken(w) if w.contains("partial")));
    assert!(matches!(&entries[0].status, Status::Broken(w) if w.contains("model.safetensors")));
    assert!(entries.iter().all(|e| e.kind == Kind::HfCache));
}

#[test]
fn models_folder_extra_paths_and_scratch_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(fixture("tiny-llama-gqa.gguf"), models.join("a.gguf")).unwrap();
    std::fs::write(models.join("bad.gguf"), b"GGML").unwrap();
    let configs = root().join("configs");
    let entries = scan(&models, &[fixture("tiny-qwen2-bias")], &configs, None);
    let got: Vec<(&str, &Kind, bool)> =
        entries.iter().map(|e| (e.name.as_str(), &e.kind, matches!(e.status, Status::Ok(_)))).collect();
    assert_eq!(
        got,
        vec![
            ("tiny-qwen2-bias", &Kind::HfDir, true),
            ("a.gguf", &Kind::Gguf, true),
            ("bad.gguf", &Kind::Gguf, false),
            ("pretrain-tiny (scratch)", &Kind::Scratch, true),
        ]
    );
}
