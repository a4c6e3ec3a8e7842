//! ARCHITECTURE.md's structural invariants, checked on the source tree.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn only_the_tui_imports_ui_or_async_crates() {
    for f in rust_files(&src()) {
        if f.starts_with(src().join("tui")) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for krate in ["ratatui", "crossterm", "tokio"] {
            assert!(
                !text.contains(&format!("use {krate}")) && !text.contains(&format!("{krate}::")),
                "{} uses {krate}",
                f.display()
            );
        }
    }
}

#[test]
fn no_shared_locks_between_engine_and_ui() {
    for dir in ["engine", "tui"] {
        for f in rust_files(&src().join(dir)) {
            let text = std::fs::read_to_string(&f).unwrap();
            for pat in ["Arc<Mutex", "Arc<RwLock", "Mutex<", "RwLock<"] {
                assert!(!text.contains(pat), "{} holds a {pat}", f.display());
            }
        }
    }
}

#[test]
fn no_fused_forward_only_ops_in_the_model() {
    for f in rust_files(&src().join("model")) {
        // Code only: the module docs name these ops to say why they are not used.
        let text: String = std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for op in [
            "softmax_last_dim",
            "candle_nn::ops::rms_norm",
            "candle_nn::ops::layer_norm",
            "rotary_emb",
            "QMatMul",
            "sdpa(",
        ] {
            assert!(!text.contains(op), "{} uses {op}, which has no backward", f.display());
        }
    }
}
