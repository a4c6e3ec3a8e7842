//! The data preview (`whet data`, the workbench's Data view) shows what the engine trains on:
//! its loss flags are the batches' labels, for every data format, and its stats count what
//! the loader truncated, dropped and skipped.

mod common;

use std::path::Path;

use candle_core::Device;
use common::*;
use whet::data::batcher::Batcher;
use whet::data::dataset;
use whet::data::preview::{Fate, Mark, Preview};
use whet::data_cli::preview_run;
use whet::engine::config::RunConfig;

fn chat(user: &str, assistant: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})
        .to_string()
}

fn config(train: &Path, data: &str) -> RunConfig {
    let rest = format!(
        "{data}\n[optim]\nbatch_size = 1\nmax_steps = 1\n[run]\nout_dir = \"{}\"\n",
        train.with_extension("run").display()
    );
    RunConfig::from_toml(&tiny_config_text(r#"kind = "full""#, train, &rest)).unwrap()
}

/// Rows of (ids, mask) of the run's train batches, one window per batch, in stored order.
fn batches(cfg: &RunConfig) -> Vec<(Vec<u32>, Vec<f32>)> {
    let model = cfg.model.path.as_deref();
    let text = dataset::run_text_side(model, &cfg.data, &cfg.tokenizer, &cfg.run.out_dir).unwrap();
    let (train, _, _) = dataset::splits(&cfg.data, text.as_ref()).unwrap();
    let b = Batcher::new(train, false, 0);
    b.in_order(1, &Device::Cpu)
        .map(|batch| {
            let batch = batch.unwrap();
            (
                batch.ids.flatten_all().unwrap().to_vec1().unwrap(),
                batch.mask.flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

/// Every token the preview says is trained on sits in the batch it names, with the batch's label.
/// Returns the tokens compared and how many of them carry loss.
fn assert_preview_is_the_batches(p: &Preview, rows: &[(Vec<u32>, Vec<f32>)], seq: usize) -> (usize, usize) {
    let (mut checked, mut labels) = (0, 0);
    for s in p.samples.iter().filter(|s| s.trained() && !s.eval) {
        let (w, o) = s.window.unwrap();
        let used = match s.fate {
            Fate::Truncated => seq,
            _ => s.ids.len(),
        };
        for k in 0..used {
            let at = w * seq + o + k;
            let (ids, mask) = &rows[at / seq];
            assert_eq!(ids[at % seq], s.ids[k], "{}: token {k}", s.source);
            assert_eq!(mask[at % seq] > 0.5, s.labels[k], "{}: label of token {k}", s.source);
            checked += 1;
            labels += s.labels[k] as usize;
        }
    }
    (checked, labels)
}

#[test]
fn the_preview_labels_are_the_batch_labels_for_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "a long answer ".repeat(12);
    let chat_lines =
        [chat("hi", "hello there"), chat("what is two plus two", "four"), chat("tell me more", &long)];
    let jsonl = [
        ("chat", chat_lines.join("\n")),
        (
            "alpaca",
            [
                r#"{"instruction": "Say hi", "input": "", "output": "hi"}"#,
                r#"{"instruction": "Add", "input": "2 and 2", "output": "4"}"#,
            ]
            .join("\n"),
        ),
        (
            "prompt_completion",
            [
                r#"{"prompt": "The sky is", "completion": " blue."}"#,
                r#"{"prompt": "Grass is", "completion": " green."}"#,
            ]
            .join("\n"),
        ),
    ];
    for (format, body) in &jsonl {
        for packing in [false, true] {
            let f = tmp.path().join(format!("{format}-{packing}.jsonl"));
            std::fs::write(&f, body).unwrap();
            let cfg = config(&f, &format!("format = \"{format}\"\nseq_len = 48\npacking = {packing}\n"));
            let p = preview_run(&cfg, usize::MAX).unwrap();
            let (n, labels) = assert_preview_is_the_batches(&p, &batches(&cfg), 48);
            assert!(n > 40, "{format} packing={packing}: only {n} tokens compared");
            assert!(
                labels > 2 && labels < n / 2,
                "{format}: {labels} labels of {n} tokens: the prompt must not carry loss"
            );
        }
    }
    // Text and token files: the preview's items are the windows.
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(20)).unwrap();
    let tokens = fixture("train/tokens.u16");
    for (f, format) in [(&text, "text"), (&tokens, "tokens")] {
        let cfg = config(f, &format!("format = \"{format}\"\nseq_len = 16\n"));
        let p = preview_run(&cfg, usize::MAX).unwrap();
        let rows = batches(&cfg);
        assert_eq!(p.samples.len(), rows.len(), "{format}: one item per window");
        assert_eq!(assert_preview_is_the_batches(&p, &rows, 16).0, 16 * rows.len());
    }
}

#[test]
fn the_assistant_turn_carries_the_loss_and_the_prompt_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    std::fs::write(&f, chat("What is your name?", "I am whet.")).unwrap();
    let cfg = config(&f, "format = \"chat\"\nseq_len = 64\npacking = false\n");
    let p = preview_run(&cfg, 1).unwrap();
    let s = &p.samples[0];
    let loss: String =
        s.pieces.iter().zip(&s.labels).filter(|(_, &l)| l).map(|(p, _)| p.text.as_str()).collect();
    let context: String =
        s.pieces.iter().zip(&s.labels).filter(|(_, &l)| !l).map(|(p, _)| p.text.as_str()).collect();
    assert!(loss.starts_with("I am whet."), "loss span: {loss:?}");
    assert!(context.contains("What is your name?") && !context.contains("whet"), "{context:?}");
    assert!(s.pieces.iter().any(|p| p.special), "special tokens are marked");
    // The drawn segments carry the same flags.
    let marks: Vec<Mark> = s.lines().into_iter().flatten().map(|g| g.mark).collect();
    assert!(marks.contains(&Mark::Loss) && marks.contains(&Mark::Context));

    // train_on_prompt puts every token under the loss.
    let cfg = config(&f, "format = \"chat\"\nseq_len = 64\npacking = false\ntrain_on_prompt = true\n");
    let p = preview_run(&cfg, 1).unwrap();
    assert!(p.samples[0].labels.iter().all(|&l| l));
}

#[test]
fn the_stats_count_truncated_dropped_and_invalid_samples_with_their_first_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    let long_prompt = "word ".repeat(40);
    let lines = [
        chat("hi", "hello"),
        chat("hi", &"yes ".repeat(40)),     // 2: truncated
        "{\"messages\": [oops".to_string(), // 3: invalid JSON
        chat(&long_prompt, "ok"),           // 4: truncation cuts the answer off: no loss left
        chat("hey", "hello again"),
    ];
    std::fs::write(&f, lines.join("\n")).unwrap();
    let cfg = config(&f, "format = \"chat\"\nseq_len = 32\npacking = false\nskip_invalid = true\n");
    let p = preview_run(&cfg, usize::MAX).unwrap();
    let st = &p.stats;
    let name = f.display().to_string();
    assert_eq!((st.truncated.n, st.empty.n, st.invalid.n, st.too_long.n), (1, 1, 1, 0), "{st:?}");
    assert_eq!(st.truncated.first.as_deref(), Some(format!("{name}:2").as_str()));
    assert_eq!(st.invalid.first.as_deref(), Some(format!("{name}:3").as_str()));
    assert_eq!(st.empty.first.as_deref(), Some(format!("{name}:4").as_str()));
    assert_eq!(st.windows, 3, "lines 1, 2 and 5 are trained on");
    assert_eq!(st.fatal, None, "skip_invalid: a run goes on");
    assert_eq!(p.samples.len(), 5);
    assert!(
        matches!(&p.samples[2].fate, Fate::Invalid(why) if why.contains("key must be a string") || why.contains("expected"))
    );
    // The histogram covers every sample with tokens, two of them over seq_len.
    assert_eq!(st.lengths.iter().map(|b| b.count).sum::<usize>(), 4);
    assert_eq!((st.lengths.last().unwrap().to, st.lengths.last().unwrap().count), (None, 2));
    assert_eq!((st.lengths[0].from, st.lengths[0].to), (1, Some(4)), "8 bins of 32 / 8 tokens");
    let loss = st.label_tokens as f64 / st.tokens as f64;
    assert!((st.label_share() - loss).abs() < 1e-12 && loss > 0.1 && loss < 0.9, "{loss}");

    // Without skip_invalid the run would stop at line 3: the preview says so and goes on.
    let cfg = config(&f, "format = \"chat\"\nseq_len = 32\npacking = false\n");
    let p = preview_run(&cfg, usize::MAX).unwrap();
    assert!(
        p.stats.fatal.as_deref().is_some_and(|e| e.starts_with(&format!("{name}:3:"))),
        "{:?}",
        p.stats.fatal
    );
    assert_eq!(p.samples.len(), 5);

    // too_long = "drop".
    let cfg = config(
        &f,
        "format = \"chat\"\nseq_len = 32\npacking = false\nskip_invalid = true\ntoo_long = \"drop\"\n",
    );
    let p = preview_run(&cfg, usize::MAX).unwrap();
    assert_eq!((p.stats.too_long.n, p.stats.truncated.n), (2, 0));
    assert_eq!(p.samples[1].fate, Fate::TooLong);
    assert_eq!(p.samples[1].window, None);
}

#[test]
fn whet_data_json_prints_each_sample_then_the_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    std::fs::write(&f, [chat("hi", "hello"), chat("a", "b")].join("\n")).unwrap();
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, config(&f, "format = \"chat\"\nseq_len = 40\npacking = false\n").to_toml().unwrap())
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_whet"))
        .args(["data", cfg.to_str().unwrap(), "--json"])
        .env("WHET_LOG_DIR", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for s in &lines[..2] {
        let n = s["ids"].as_array().unwrap().len();
        assert!(n > 5);
        assert_eq!(s["pieces"].as_array().unwrap().len(), n);
        assert_eq!(s["loss"].as_array().unwrap().len(), n);
        let pieces: String = s["pieces"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        assert_eq!(s["text"].as_str().unwrap(), pieces);
        assert_eq!(s["fate"]["fate"], "kept");
    }
    assert_eq!(lines[2]["stats"]["windows"], 2);
    assert_eq!(lines[2]["stats"]["lengths"][8]["to"], serde_json::Value::Null, "the bin over seq_len");

    // Piped into `head`: the closed pipe ends it quietly (400 samples: more than a pipe holds).
    let many = tmp.path().join("many.jsonl");
    std::fs::write(&many, vec![chat("hello there", "general kenobi"); 400].join("\n")).unwrap();
    let big = tmp.path().join("big.toml");
    let text = config(&many, "format = \"chat\"\nseq_len = 64\npacking = false\n").to_toml().unwrap();
    std::fs::write(&big, text).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' data '{}' --json | head -c 10 >/dev/null",
            env!("CARGO_BIN_EXE_whet"),
            big.display()
        ))
        .env("WHET_LOG_DIR", tmp.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    // --sample N, text: the sample's header and the marks; a sample past the end is an error.
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_whet"))
            .arg("data")
            .arg(&cfg)
            .args(args)
            .env("WHET_LOG_DIR", tmp.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let out = run(&["--sample", "1"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("sample 1 (") && text.contains(":2) · kept") && text.contains("«b"), "{text}");
    let out = run(&["--sample", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sample 2: the data has 2 samples"));
}
