//! Output directories go through one writer (`load::atomic_dir`): it leaves a marker, replaces
//! only what whet wrote (or an empty directory), and never writes into the model it reads.

mod common;

use common::*;
use whet::cli::merge_into;
use whet::load::atomic_dir::{self, MARKER};

fn merge(out: &std::path::Path) -> anyhow::Result<()> {
    merge_into(&fixture("tiny-llama-gqa"), &fixture("train/lora_init"), out)
}

#[test]
fn merge_writes_a_marked_directory_and_replaces_its_own_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    merge(&out).unwrap();
    assert!(out.join(MARKER).is_file() && out.join("config.json").is_file());
    let marker: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(MARKER)).unwrap()).unwrap();
    assert_eq!((marker["written_by"].as_str(), marker["kind"].as_str()), (Some("whet"), Some("hf-model")));
    // A second merge replaces whet's own output, and leaves no temp or old copy beside it.
    merge(&out).unwrap();
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["merged".to_string()]);
    // An empty directory is fine too.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    merge(&empty).unwrap();
    assert!(empty.join("model.safetensors").is_file());
}

#[test]
fn a_directory_whet_did_not_write_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
    let e = format!("{:#}", merge(&mine).unwrap_err());
    assert!(e.contains("did not write") && e.contains("mine"), "{e}");
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "my notes");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1, "nothing added either");
    // A file in the way is refused as well.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(format!("{:#}", merge(&file).unwrap_err()).contains("not a directory"));
}

#[test]
fn merge_out_dot_and_into_the_model_are_refused() {
    // `--out .` (the repository root, which holds the model being read): refused before any
    // work, and the directory keeps its files.
    let e = format!("{:#}", merge(std::path::Path::new(".")).unwrap_err());
    assert!(e.contains("model being read") || e.contains("did not write"), "{e}");
    assert!(root().join("Cargo.toml").is_file());
    // The model directory itself, a folder inside it, and a folder around it.
    let model = fixture("tiny-llama-gqa");
    for out in [model.clone(), model.join("merged"), fixture("")] {
        let e = format!("{:#}", merge(&out).unwrap_err());
        assert!(e.contains("model being read"), "{}: {e}", out.display());
    }
    assert!(!model.join("merged").exists());
}

#[test]
fn a_leftover_temp_dir_is_cleared_and_a_pre_marker_checkpoint_can_be_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("step-00000003");
    std::fs::create_dir(tmp.path().join(".tmp-step-00000003")).unwrap();
    // A checkpoint written before markers existed: complete, so whet's.
    std::fs::create_dir(&target).unwrap();
    for f in ["state.json", "weights.safetensors", "optimizer.safetensors"] {
        std::fs::write(target.join(f), "old").unwrap();
    }
    atomic_dir::write(&target, "checkpoint", &[], |dir| {
        atomic_dir::write_file(&dir.join("state.json"), b"{}")
    })
    .unwrap();
    assert_eq!(std::fs::read_to_string(target.join("state.json")).unwrap(), "{}");
    assert!(!target.join("weights.safetensors").exists(), "the old copy was replaced whole");
    assert!(!tmp.path().join(".tmp-step-00000003").exists());
}

/// An export written by whet before markers existed (`adapter/` in a run directory) is still
/// whet's: a resumed old run replaces it at its end. The same name elsewhere is not.
#[test]
fn an_old_runs_export_is_replaced_but_a_lookalike_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    std::fs::create_dir_all(run.join("adapter")).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    std::fs::write(run.join("adapter/adapter_config.json"), "{}").unwrap();
    atomic_dir::write(&run.join("adapter"), "peft-adapter", &[], |d| {
        atomic_dir::write_file(&d.join("x"), b"new")
    })
    .unwrap();
    assert!(run.join("adapter/x").is_file() && !run.join("adapter/adapter_config.json").exists());
    let lookalike = tmp.path().join("adapter");
    std::fs::create_dir(&lookalike).unwrap();
    std::fs::write(lookalike.join("adapter_config.json"), "{}").unwrap();
    let e = atomic_dir::write(&lookalike, "peft-adapter", &[], |_| Ok(())).unwrap_err();
    assert!(format!("{e:#}").contains("did not write"), "{e:#}");
}

/// One rule for file modes: every file whet writes (configs, JSON, safetensors, GGUF) is
/// 0666 less the umask, as `File::create` makes them.
#[test]
fn every_written_file_follows_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    merge(&out).unwrap();
    let gguf = tmp.path().join("m.gguf");
    whet::load::gguf_write::write(&gguf, &[], &[]).unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|u| u32::from_str_radix(u.trim(), 8).unwrap());
    let want = 0o666 & !umask.unwrap_or(0o022);
    let mut files: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    files.push(gguf);
    assert!(files.iter().any(|p| p.extension().is_some_and(|x| x == "safetensors")));
    for f in files {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "{}: {mode:o}, want {want:o}", f.display());
    }
}
