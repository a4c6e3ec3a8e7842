//! The real binary in tmux on the default model (configs/sft-smollm2-lora.toml): open the Data
//! view and see the assistant span marked, start the run, chat one turn while it trains, then
//! pin the base and compare on "What is your name?". NO_COLOR, so the marks are text.

use std::path::PathBuf;

mod common;
use common::tmux::{launch, HostGuard};
use common::{default_model, metric_steps, wait_for};

#[test]
fn data_view_then_chat_and_compare_while_training() {
    let model = default_model();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("configs")).unwrap();
    std::fs::create_dir_all(dir.join("assets/data")).unwrap();
    std::fs::copy(root.join("assets/data/identity.jsonl"), dir.join("assets/data/identity.jsonl")).unwrap();
    let cfg = std::fs::read_to_string(root.join("configs/sft-smollm2-lora.toml"))
        .unwrap()
        .replace("models/SmolLM2-135M-Instruct.Q4_1.gguf", &model.display().to_string())
        // Small steps that go on for longer than the test.
        .replace("batch_size = 8", "batch_size = 1")
        .replace("max_steps = 40", "max_steps = 100000");
    std::fs::write(dir.join("configs/sft-smollm2-lora.toml"), cfg).unwrap();
    let run = dir.join("runs/sft-smollm2-lora");

    let whet = env!("CARGO_BIN_EXE_whet");
    let cmd = format!("NO_COLOR=1 {whet} --cpu --config configs/sft-smollm2-lora.toml 2> stderr.txt");
    let s = launch(format!("whet-explore-{}", std::process::id()), dir, &cmd);
    s.wait("the workbench", 30, |t| t.contains("1 Models"));

    // 1. The Data view from the form: the assistant's answer carries the loss, the prompt not.
    s.keys(&["2", "D"]);
    let screen = s.wait("the Data view", 60, |t| t.contains("Data · sample 1/") && t.contains("carry loss"));
    assert!(screen.contains("<|im_start|>│ass│istant│↵"), "{screen}");
    assert!(screen.contains("«W│het"), "the assistant span is marked: {screen}");
    assert!(!screen.contains("«What"), "the user's question carries no loss: {screen}");
    assert!(screen.contains("385 samples"), "{screen}");
    s.keys(&["Escape"]);

    // 2. Start the run.
    s.keys(&["s"]);
    s.wait("training", 120, |t| t.contains("[training]"));
    wait_for("2 steps", 180, || (metric_steps(&run).len() >= 2).then_some(()));
    let host = HostGuard(whet::engine::run_lock::holder(&run).expect("the host holds the run's lock"));

    // 3. Chat one turn while it trains.
    s.keys(&["4", "m", "i"]);
    s.keys(&["-l", "What is your name?"]);
    s.keys(&["Enter"]);
    s.wait("the reply", 240, |t| t.contains("written at step"));
    // Zoomed (e), so that a long sampled reply (up to 128 tokens) cannot scroll the question
    // out of the pane: the view keeps the end of the conversation in sight.
    s.keys(&["e"]);
    let screen = s.wait("the zoomed explorer", 10, |t| !t.contains("1 Models"));
    assert!(screen.contains("you: What is your name?") && screen.contains("model: "), "{screen}");
    assert!(screen.contains("drawn at p ="), "the selected token's alternatives: {screen}");
    s.keys(&["e"]);
    s.wait("the panes again", 10, |t| t.contains("1 Models"));
    let steps_then = metric_steps(&run).len();
    wait_for("training goes on after the reply", 120, || {
        (metric_steps(&run).len() > steps_then).then_some(())
    });

    // 4. Back to probing; pin the base and compare on the same prompt.
    s.keys(&["m", ":"]);
    s.keys(&["-l", "probe What is your name?"]);
    s.keys(&["Enter"]);
    s.wait("the probe", 120, |t| t.contains("prompt: What is your name?") && t.contains("entropy"));
    s.keys(&["b"]);
    let screen = s.wait("the base beside the live model", 120, |t| t.contains("pinned: base (adapter off)"));
    assert!(screen.contains("Δ pp"), "{screen}");

    // Stop and save; the host exits.
    s.keys(&["q"]);
    s.wait("the quit question", 10, |t| t.contains("d = detach"));
    s.keys(&["s"]);
    wait_for("the app to exit", 120, || (!s.alive()).then_some(()));
    drop(host);
    let e = std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
    assert!(!e.contains("panicked"), "{e}");
}
