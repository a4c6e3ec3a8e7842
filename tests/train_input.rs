//! Bad training input: a malformed JSONL line, a wrong config key, a missing data file, and a
//! sample longer than seq_len under each policy. Also the label mask of chat data.

mod common;

use candle_core::Device;
use common::*;
use whet::engine::config::RunConfig;
use whet::engine::trainer::Trainer;

fn config(train: &std::path::Path, extra_data: &str) -> RunConfig {
    let rest = format!("format = \"chat\"\nseq_len = 40\npacking = false\n{extra_data}\n[optim]\nbatch_size = 1\nmax_steps = 1\n");
    let text = tiny_config_text(r#"kind = "full""#, train, &rest);
    RunConfig::from_toml(&text).unwrap()
}

fn line(user: &str, assistant: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})
        .to_string()
}

fn start(cfg: RunConfig) -> Result<Trainer, String> {
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(cfg, dir.path(), false, &Device::Cpu).map_err(|e| format!("{e:#}"))
}

#[test]
fn malformed_jsonl_line_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    std::fs::write(&f, format!("{}\n{{\"messages\": [oops\n{}\n", line("hi", "ok"), line("a", "b"))).unwrap();
    let e = start(config(&f, "")).err().unwrap();
    assert!(e.contains("d.jsonl:2:"), "{e}");

    let mut t = start(config(&f, "skip_invalid = true")).unwrap();
    assert_eq!(t.report.skipped_invalid, 1);
    assert_eq!(t.report.windows, 2);
    assert!(t.train_step().unwrap().loss.is_finite());
}

#[test]
fn missing_field_is_a_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    std::fs::write(&f, format!("{}\n{{\"messages\": [{{\"role\": \"user\"}}]}}\n", line("hi", "ok")))
        .unwrap();
    let e = start(config(&f, "")).err().unwrap();
    assert!(e.contains("d.jsonl:2:") && e.contains("content"), "{e}");
}

#[test]
fn unknown_config_key_is_named_with_a_suggestion() {
    let e = RunConfig::from_toml("[model]\npath = \"x\"\n[data]\ntrain = \"t\"\n[optim]\nbatch_sise = 4\n")
        .err()
        .unwrap();
    assert!(e.contains("batch_sise") && e.contains("did you mean `batch_size`"), "{e}");
    let e = RunConfig::from_toml("[model]\npath = \"x\"\n[data]\ntrain = \"t\"\nseqlen = 4\n").err().unwrap();
    assert!(e.contains("seqlen") && e.contains("`seq_len`"), "{e}");
}

#[test]
fn missing_data_file_is_named() {
    let e = start(config(std::path::Path::new("/no/such/data.jsonl"), "")).err().unwrap();
    assert!(e.contains("/no/such/data.jsonl"), "{e}");
}

#[test]
fn too_long_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    let long = "word ".repeat(80);
    std::fs::write(&f, format!("{}\n{}\n", line("hi", "ok"), line("tell me", &long))).unwrap();

    let e = start(config(&f, "too_long = \"error\"")).err().unwrap();
    assert!(e.contains("d.jsonl:2:") && e.contains("more than seq_len 40"), "{e}");

    let t = start(config(&f, "too_long = \"drop\"")).unwrap();
    assert_eq!((t.report.dropped_too_long, t.report.windows), (1, 1));

    let t = start(config(&f, "too_long = \"truncate\"")).unwrap();
    assert_eq!((t.report.truncated, t.report.windows), (1, 2));
}

#[test]
fn fully_masked_and_empty_samples_are_dropped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    let only_user = serde_json::json!({"messages": [{"role": "user", "content": "hello"}]}).to_string();
    std::fs::write(&f, format!("{}\n{only_user}\n", line("hi", "ok"))).unwrap();
    let t = start(config(&f, "")).unwrap();
    assert_eq!((t.report.dropped_empty, t.report.windows), (1, 1));
}

/// Only the assistant's tokens (its text and the end-of-turn marker) are labels.
#[test]
fn chat_labels_cover_only_the_assistant_turn() {
    use whet::data::config::DataConfig;
    use whet::data::jsonl;
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    std::fs::write(&f, line("How are you today?", "fine") + "\n").unwrap();
    let text = whet::load::load_text(&fixture("tiny-llama-gqa")).unwrap();
    let t = jsonl::Templating {
        tokenizer: &text.tokenizer,
        chat_template: text.chat_template.as_deref(),
        template_source: &text.chat_template_source,
        bos_token: "",
        eos_token: "<|im_end|>",
        pad_id: 0,
    };
    let cfg: DataConfig = toml::from_str(&format!(
        "train = \"{}\"\nformat = \"chat\"\nseq_len = 64\npacking = false",
        f.display()
    ))
    .unwrap();
    let mut report = Default::default();
    let w = &jsonl::load(&f, &cfg, &t, &mut report, None).unwrap()[0];
    let labels: Vec<u32> = w.ids.iter().zip(&w.mask).filter(|(_, m)| **m == 1.0).map(|(i, _)| *i).collect();
    let decoded = text.tokenizer.decode(&labels, false).unwrap();
    assert_eq!(decoded, "fine<|im_end|>\n");
}

/// The configs shipped in configs/ load as they are, and a config written back as TOML (what
/// `config.toml` in a run directory holds) reads back to the same config.
#[test]
fn shipped_configs_load_and_round_trip() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("configs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let cfg = RunConfig::from_toml(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let back = RunConfig::from_toml(&cfg.to_toml().unwrap()).unwrap();
        assert_eq!(back, cfg, "{}", p.display());
        assert!(cfg.schedule.lr > 0.0 && cfg.schedule.kind.name() == "cosine", "{}", p.display());
        n += 1;
    }
    assert!(n >= 3, "{n} configs");
}

/// `[run] device`: parsed and written back by name, a bad name is a clear error, and a run
/// whose device is not the engine's is refused before anything loads.
#[test]
fn run_device_key_is_checked_against_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    std::fs::write(&f, format!("{}\n", line("hi", "ok"))).unwrap();
    let with = |device: &str| {
        let rest = format!(
            "format = \"chat\"\nseq_len = 40\npacking = false\n[optim]\nbatch_size = 1\nmax_steps = 1\n\
             [run]\ndevice = \"{device}\"\n"
        );
        RunConfig::from_toml(&tiny_config_text(r#"kind = "full""#, &f, &rest))
    };
    let cfg = with("cuda:1").unwrap();
    assert_eq!(cfg.run.device, Some(whet::engine::device::DeviceSpec::Cuda(1)));
    assert!(cfg.to_toml().unwrap().contains("device = \"cuda:1\""));
    assert_eq!(RunConfig::from_toml(&cfg.to_toml().unwrap()).unwrap(), cfg);
    let e = with("gpu").unwrap_err();
    assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
    let e = start(cfg).err().unwrap();
    assert!(e.contains("[run] device = \"cuda:1\", but this engine runs on cpu"), "{e}");
    let mut t = start(with("cpu").unwrap()).unwrap();
    assert!(t.train_step().unwrap().loss.is_finite());
}

/// A JSONL line longer than `data.max_line_bytes`, and one that is not UTF-8: each is an
/// error naming its line, or is skipped with `skip_invalid` (the long one without ever being
/// held whole). A device as data is refused as not a regular file.
#[test]
fn long_and_non_utf8_jsonl_lines_name_their_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    let long = line(&"x".repeat(3 << 20), "ok"); // a 3 MiB record
    let mut bytes = format!("{}\n{long}\n", line("hi", "ok")).into_bytes();
    bytes.extend_from_slice(b"{\"messages\": \"\xff\xfe\"}\n");
    bytes.extend_from_slice(format!("{}\n", line("a", "b")).as_bytes());
    std::fs::write(&f, &bytes).unwrap();

    let e = start(config(&f, "max_line_bytes = 1048576")).err().unwrap();
    assert!(e.contains("d.jsonl:2") && e.contains("longer than 1048576 bytes"), "{e}");
    // Over the default limit it reads, up to the non-UTF-8 line.
    let e = start(config(&f, "")).err().unwrap();
    assert!(e.contains("d.jsonl:3") && e.contains("not UTF-8"), "{e}");
    let t = start(config(&f, "max_line_bytes = 1048576\nskip_invalid = true")).unwrap();
    assert_eq!(t.report.skipped_invalid, 2);
    assert_eq!(t.report.windows, 2, "lines 1 and 4");

    let e = start(config(std::path::Path::new("/dev/zero"), "")).err().unwrap();
    assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
}

/// A TOML error points at the file's own line, with or without `--set` overrides.
#[test]
fn toml_errors_name_the_files_own_line() {
    let text = "[model]\npath = \"x.gguf\"\n\n[method]\nkind = \"lora\"\n\n[data]\ntrain = \"t.jsonl\"\n\n\n\n[optim]\nbatch_size = 2\n\n\n[run]\nout_dir = \"runs/x\"\n\n\neval_every = \"often\"\n";
    assert_eq!(text.lines().position(|l| l.starts_with("eval_every")), Some(19));
    for sets in [vec![], vec!["optim.max_steps=3".to_string()]] {
        let e = RunConfig::with_overrides(text, &sets).unwrap_err();
        assert!(e.contains("line 20"), "{sets:?}: {e}");
    }
    // A fault the overrides bring is said to be theirs.
    let e = RunConfig::with_overrides(text, &["run.eval_every=5".into(), "optim.max_steps=\"x\"".into()])
        .unwrap_err();
    assert!(e.starts_with("with the --set overrides") && e.contains("max_steps"), "{e}");
}

/// A role the templates do not know (a typo) is an error naming the line, not prompt text.
#[test]
fn an_unknown_chat_role_names_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.jsonl");
    let typo = serde_json::json!({"messages": [{"role": "user", "content": "hi"}, {"role": "asistant", "content": "ok"}]});
    std::fs::write(&f, format!("{}\n{typo}\n", line("hi", "ok"))).unwrap();
    let e = start(config(&f, "")).err().unwrap();
    assert!(e.contains("d.jsonl:2") && e.contains("unknown role \"asistant\""), "{e}");
    let t = start(config(&f, "skip_invalid = true")).unwrap();
    assert_eq!(t.report.skipped_invalid, 1);
}
