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
    // The quantized base goes through the frozen linear, a custom op with a backward
    // (dL/dx), not candle's QMatMul.
    let quant = std::fs::read_to_string(src().join("model/quant/mod.rs")).unwrap();
    assert!(quant.contains("ops::frozen_base_linear(x, &Frozen::Quant("));
    let ops = std::fs::read_to_string(src().join("model/ops.rs")).unwrap();
    let op = ops.find("impl candle_core::CustomOp2 for FrozenLinear").expect("the frozen linear op");
    assert!(ops[op..].contains("fn bwd("));
}

/// Code lines only: comments may name other modules to say why they are not used.
fn code(f: &Path) -> String {
    std::fs::read_to_string(f)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn lower_layers_never_import_the_engine_or_the_tui() {
    for dir in ["model", "data", "optim", "load"] {
        for f in rust_files(&src().join(dir)) {
            let text = code(&f);
            for upper in ["crate::engine", "crate::tui", "crate::train_cli", "crate::cli"] {
                assert!(!text.contains(upper), "{} imports {upper}: {dir} sits below it", f.display());
            }
        }
    }
}

#[test]
fn long_files_are_explained_in_architecture_md() {
    let arch = std::fs::read_to_string(src().join("../ARCHITECTURE.md")).unwrap();
    for f in rust_files(&src()) {
        let lines = std::fs::read_to_string(&f).unwrap().lines().count();
        let rel = f.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().display().to_string();
        assert!(
            lines <= 400 || arch.contains(&format!("`{rel}`")),
            "{rel} has {lines} lines and no word in ARCHITECTURE.md"
        );
    }
}

/// The engine host listens on a Unix socket only: no TCP anywhere in whet.
#[test]
fn no_tcp_sockets() {
    for f in rust_files(&src()) {
        let text = std::fs::read_to_string(&f).unwrap();
        for pat in ["TcpListener", "TcpStream", "UdpSocket"] {
            assert!(!text.contains(pat), "{} uses {pat}", f.display());
        }
    }
}

/// The host is the only writer of a run directory: the workbench starts runs only through
/// `Effect::Host` (a host process), never in its own engine.
#[test]
fn the_workbench_trains_only_through_a_host() {
    for f in rust_files(&src().join("tui")) {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains("Effect::Engine(Command::Start"), "{} starts a run in-process", f.display());
    }
    let perform = std::fs::read_to_string(src().join("tui/mod.rs")).unwrap();
    assert!(perform.contains("Effect::Host(start) =>") && perform.contains("host::launch::launch"));
}
