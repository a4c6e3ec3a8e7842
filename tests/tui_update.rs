//! `App::update` for every command path: keys and commands in, engine commands and effects out.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use whet::engine::protocol::{Probe, Weights};
use whet::engine::{Command, Event, ModelInfo, StepStats};
use whet::logits::{ProbeResult, TopToken};
use whet::optim::SchedulePlan;
use whet::tui::app::{App, Mode, RunState};
use whet::tui::msg::{Effect, Msg};
use whet::tui::pane::Pane;
use whet::tui::state::form::{FormState, DEFAULT_DOC};
use whet::tui::state::models::{Kind, ModelEntry, Status};

fn app() -> App {
    App::new(FormState::from_doc(DEFAULT_DOC, None).unwrap(), true)
}

fn key(a: &mut App, c: KeyCode) -> Vec<Effect> {
    a.update(Msg::Key(KeyEvent::from(c)))
}

fn chars(a: &mut App, s: &str) -> Vec<Effect> {
    s.chars().flat_map(|c| key(a, KeyCode::Char(c))).collect()
}

fn info(total: u64) -> ModelInfo {
    ModelInfo {
        method: "lora".into(),
        params: 100,
        trainable: 10,
        layers: 2,
        vocab: 50,
        total_steps: total,
        start_step: 0,
        train_windows: 10,
        schedule: SchedulePlan::default(),
        grad_clip: 1.0,
        eval_windows: 1,
    }
}

fn step(n: u64, loss: f64) -> StepStats {
    StepStats {
        step: n,
        loss,
        lr: 1e-3,
        grad_norm: 1.0,
        tokens: 64,
        tokens_per_s: 100.0,
        flops_per_s: 0.0,
        mfu: None,
        elapsed_s: n as f64,
        skipped: 0,
    }
}

fn running() -> App {
    let mut a = app();
    a.update(Msg::Engine(Event::Loaded(info(100))));
    a
}

fn probe_result(ids: &[u32]) -> ProbeResult {
    let top = ids
        .iter()
        .map(|&i| TopToken {
            id: i,
            piece: format!("Ġt{i}"),
            text: format!(" t{i}"),
            prob: 0.5,
            logprob: 0.5f64.ln(),
        })
        .collect();
    ProbeResult { prompt_ids: vec![1], top, entropy: 1.0, cumulative: 1.0, sampled: vec![], target: None }
}

#[test]
fn start_sends_the_forms_config() {
    let mut a = app();
    let fx = key(&mut a, KeyCode::Char('s'));
    match &fx[..] {
        [Effect::Host(Command::Start { config, run_dir, resume: false })] => {
            assert_eq!(config.schedule.lr, 2e-3);
            assert_eq!(run_dir, &PathBuf::from("runs/tui"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.run, RunState::Loading);
    assert!(key(&mut a, KeyCode::Char('s')).is_empty(), "no second start while one is active");
}

#[test]
fn default_lora_is_one_key() {
    let mut a = app();
    let fx = key(&mut a, KeyCode::Char('L'));
    assert_eq!(fx, vec![Effect::LoadConfig { path: "configs/sft-smollm2-lora.toml".into(), start: true }]);
    let fx = a.update(Msg::ConfigLoaded {
        path: "c.toml".into(),
        text: Ok(DEFAULT_DOC.replace("2e-3", "7e-4")),
        start: true,
    });
    assert!(matches!(&fx[..], [Effect::Host(Command::Start { config, .. })] if config.schedule.lr == 7e-4));
}

#[test]
fn pause_resume_checkpoint_stop() {
    let mut a = running();
    assert_eq!(key(&mut a, KeyCode::Char(' ')), vec![Effect::Engine(Command::Pause)]);
    a.update(Msg::Engine(Event::Paused { step: 3 }));
    assert_eq!(a.run, RunState::Paused);
    assert_eq!(key(&mut a, KeyCode::Char(' ')), vec![Effect::Engine(Command::Resume)]);
    a.update(Msg::Engine(Event::Resumed { step: 3 }));
    assert_eq!(key(&mut a, KeyCode::Char('C')), vec![Effect::Engine(Command::SaveCheckpoint)]);
    assert!(key(&mut a, KeyCode::Char('x')).is_empty());
    assert_eq!(a.mode, Mode::ConfirmStop);
    assert_eq!(key(&mut a, KeyCode::Char('n')), vec![Effect::Engine(Command::Stop { save: false })]);
    let mut a = running();
    key(&mut a, KeyCode::Char('x'));
    assert_eq!(key(&mut a, KeyCode::Char('y')), vec![Effect::Engine(Command::Stop { save: true })]);
    let mut a = running();
    key(&mut a, KeyCode::Char('x'));
    assert!(key(&mut a, KeyCode::Esc).is_empty(), "Esc cancels the stop");
    assert_eq!(a.run, RunState::Running);
}

/// A running workbench attached to its run's engine host.
fn attached() -> App {
    let mut a = app();
    a.update(Msg::Attached(PathBuf::from("/runs/a")));
    a.update(Msg::Engine(Event::Loaded(info(100))));
    a
}

#[test]
fn quitting_while_training_asks_detach_or_stop() {
    // d: detach; the workbench quits at once and sends nothing (the host trains on).
    let mut a = attached();
    assert!(a.update(Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL))).is_empty());
    assert_eq!(a.mode, Mode::ConfirmQuit);
    assert!(key(&mut a, KeyCode::Char('d')).is_empty());
    assert!(a.quit);
    // s: stop and save, then quit once the run has saved, letting the host go.
    let mut a = attached();
    key(&mut a, KeyCode::Char('q'));
    assert_eq!(key(&mut a, KeyCode::Char('s')), vec![Effect::Engine(Command::Stop { save: true })]);
    assert!(!a.quit);
    assert_eq!(a.run, RunState::Stopping);
    let fx = a.update(Msg::Engine(Event::Finished { step: 5, outputs: vec![] }));
    assert_eq!(fx, vec![Effect::Detach, Effect::ScanRuns]);
    assert!(a.quit, "quits once the run has saved");
    // Any other key cancels.
    let mut a = attached();
    key(&mut a, KeyCode::Char('q'));
    assert!(key(&mut a, KeyCode::Esc).is_empty());
    assert!(!a.quit);
    assert_eq!(a.run, RunState::Running);
    let mut idle = app();
    key(&mut idle, KeyCode::Char('q'));
    assert!(idle.quit);
}

/// SIGHUP (the SSH link dropped): the workbench leaves and asks nothing of the run, which
/// trains on in its host.
#[test]
fn sighup_detaches_and_the_run_goes_on() {
    let mut a = attached();
    assert_eq!(a.update(Msg::Signal), vec![]);
    assert!(a.quit);
    assert_eq!(a.run, RunState::Running);
}

#[test]
fn a_host_that_dies_mid_run_leaves_a_stale_run() {
    let mut a = attached();
    assert_eq!(a.attached, Some(PathBuf::from("/runs/a")));
    assert_eq!(a.update(Msg::HostGone(1)), vec![Effect::ScanRuns]);
    assert_eq!(a.run, RunState::Failed);
    assert_eq!(a.attached, None);
    assert!(a.log.lines.back().unwrap().1.contains("stale"), "{:?}", a.log.lines);
    // A host that fails to start says why.
    let mut a = app();
    key(&mut a, KeyCode::Char('s'));
    a.update(Msg::AttachFailed("runs/tui: an engine host already runs it".into()));
    assert_eq!(a.run, RunState::Failed);
    assert!(a.log.lines.back().unwrap().1.contains("already runs it"));
}

#[test]
fn enter_on_a_run_attaches_to_a_live_one_and_resumes_a_stale_one() {
    use whet::engine::registry::{RunStatus, RunSummary};
    let run = |dir: &str, status| RunSummary {
        dir: PathBuf::from(dir),
        status,
        step: Some(7),
        loss: Some(2.5),
        max_steps: Some(100),
        eta_s: None,
        checkpoint: Some(5),
    };
    let mut a = app();
    a.update(Msg::Models(vec![]));
    a.update(Msg::Runs(vec![
        run("/r/live", RunStatus::Running),
        run("/r/dead", RunStatus::Stale),
        run("/r/done", RunStatus::Finished),
    ]));
    assert_eq!(a.focus, Pane::Models);
    assert_eq!(key(&mut a, KeyCode::Enter), vec![Effect::Attach(PathBuf::from("/r/live"))]);
    assert_eq!(a.run, RunState::Loading);
    let mut a = app();
    a.update(Msg::Models(vec![]));
    a.update(Msg::Runs(vec![run("/r/live", RunStatus::Running), run("/r/dead", RunStatus::Stale)]));
    key(&mut a, KeyCode::Down);
    assert_eq!(key(&mut a, KeyCode::Enter), vec![Effect::ResumeRun(PathBuf::from("/r/dead"))]);
    // A finished run has nothing to resume: it opens for probing (tests/tui_explorer.rs).
    let mut a = app();
    a.update(Msg::Models(vec![]));
    a.update(Msg::Runs(vec![run("/r/done", RunStatus::Finished)]));
    assert_eq!(key(&mut a, KeyCode::Enter), vec![Effect::Engine(Command::Open(PathBuf::from("/r/done")))]);
    assert_eq!(a.run, RunState::Idle);
}

#[test]
fn schedule_edit_sends_set_schedule() {
    let mut a = running();
    key(&mut a, KeyCode::Char('r'));
    assert!(matches!(a.mode, Mode::Schedule(_)));
    for _ in 0..10 {
        key(&mut a, KeyCode::Backspace);
    }
    chars(&mut a, "5e-4");
    key(&mut a, KeyCode::Tab);
    for _ in 0..10 {
        key(&mut a, KeyCode::Backspace);
    }
    chars(&mut a, "wsd");
    let fx = key(&mut a, KeyCode::Enter);
    match &fx[..] {
        [Effect::Engine(Command::SetSchedule(s))] => assert_eq!((s.lr, s.kind.name()), (5e-4, "wsd")),
        other => panic!("{other:?}"),
    }
    // A bad value stays in the form with its error.
    key(&mut a, KeyCode::Char('r'));
    for _ in 0..10 {
        key(&mut a, KeyCode::Backspace);
    }
    chars(&mut a, "-1");
    assert!(key(&mut a, KeyCode::Enter).is_empty());
    match &a.mode {
        Mode::Schedule(d) => assert!(d.error.as_deref().unwrap_or("").contains("positive"), "{:?}", d.error),
        m => panic!("{m:?}"),
    }
    // The engine's answer marks the edit on the LR chart.
    a.update(Msg::Engine(Event::ScheduleEdited {
        step: 7,
        old: Box::new(SchedulePlan::default()),
        new: Box::new(SchedulePlan { lr: 5e-4, ..SchedulePlan::default() }),
    }));
    assert_eq!(a.metrics.edits, vec![7]);
}

#[test]
fn command_line_set_write_lr_probe() {
    let mut a = running();
    key(&mut a, KeyCode::Char(':'));
    chars(&mut a, "set lr=abc");
    key(&mut a, KeyCode::Enter);
    assert!(a.form.errors.contains_key("schedule.lr"), "an invalid lr is an inline error");
    key(&mut a, KeyCode::Char(':'));
    chars(&mut a, "set lr=3e-4");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.form.value("schedule.lr"), "0.0003");
    assert!(!a.form.errors.contains_key("schedule.lr"));
    key(&mut a, KeyCode::Char(':'));
    chars(&mut a, "w /tmp/x.toml");
    let fx = key(&mut a, KeyCode::Enter);
    match &fx[..] {
        [Effect::SaveConfig { path, text }] => {
            assert_eq!(path, &PathBuf::from("/tmp/x.toml"));
            // The saved form is a config `whet train` accepts, with the edit in it.
            let cfg = whet::engine::config::RunConfig::from_toml(text).unwrap();
            assert_eq!(cfg.schedule.lr, 3e-4);
        }
        other => panic!("{other:?}"),
    }
    key(&mut a, KeyCode::Char(':'));
    chars(&mut a, "lr 1e-4");
    let fx = key(&mut a, KeyCode::Enter);
    assert!(matches!(&fx[..], [Effect::Engine(Command::SetSchedule(s))] if s.lr == 1e-4));
    key(&mut a, KeyCode::Char(':'));
    chars(&mut a, "probe Hello");
    let fx = key(&mut a, KeyCode::Enter);
    assert!(matches!(&fx[..], [Effect::Engine(Command::Probe(p))] if p.prompt == "Hello"));
}

#[test]
fn form_rejects_a_negative_lr_and_a_missing_data_file() {
    let mut a = app();
    key(&mut a, KeyCode::Char('2'));
    // The lr field is the third.
    key(&mut a, KeyCode::Down);
    key(&mut a, KeyCode::Down);
    key(&mut a, KeyCode::Enter);
    for _ in 0..10 {
        key(&mut a, KeyCode::Backspace);
    }
    chars(&mut a, "-0.1");
    key(&mut a, KeyCode::Enter);
    assert!(a.form.errors["schedule.lr"].contains("positive"));
    assert_eq!(a.form.value("schedule.lr"), "0.002", "the document keeps the last good value");
    assert!(key(&mut a, KeyCode::Char('s')).is_empty(), "no start while a field is wrong");
    let mut b = app();
    key(&mut b, KeyCode::Char(':'));
    chars(&mut b, "set data.train=\"/no/such/file.jsonl\"");
    key(&mut b, KeyCode::Enter);
    assert!(b.form.errors["data.train"].contains("/no/such/file.jsonl"));
}

#[test]
fn explorer_probe_append_and_stale_answers() {
    let mut a = running();
    key(&mut a, KeyCode::Char('4'));
    let fx = key(&mut a, KeyCode::Char('P'));
    let id = match &fx[..] {
        [Effect::Engine(Command::Probe(p))] if p.prompt == "How are" && p.weights == Weights::Live => p.id,
        other => panic!("{other:?}"),
    };
    // An answer to an older request is dropped.
    a.update(Msg::Engine(Event::ProbeResult { id: id + 100, step: 1, result: Ok(probe_result(&[9])) }));
    assert!(a.explorer.result.is_none());
    a.update(Msg::Engine(Event::ProbeResult { id, step: 2, result: Ok(probe_result(&[5, 6])) }));
    assert_eq!(a.explorer.result.as_ref().unwrap().0, 2);
    key(&mut a, KeyCode::Down);
    let fx = key(&mut a, KeyCode::Enter);
    assert_eq!(a.explorer.prompt, "How are t6");
    assert!(matches!(&fx[..], [Effect::Engine(Command::Probe(p))] if p.prompt == "How are t6"));
    // Chat toggle re-probes with chat on; pin keeps the current distribution.
    a.update(Msg::Engine(Event::ProbeResult { id: id + 2, step: 3, result: Ok(probe_result(&[7])) }));
    let fx = key(&mut a, KeyCode::Char('t'));
    assert!(matches!(&fx[..], [Effect::Engine(Command::Probe(p))] if p.chat));
    key(&mut a, KeyCode::Char('p'));
    assert_eq!(a.explorer.pinned.as_ref().unwrap().0, "step 3");
    // Compare with the adapter off: two probes, the second with base = true.
    let fx = key(&mut a, KeyCode::Char('b'));
    assert!(matches!(
        &fx[..],
        [
            Effect::Engine(Command::Probe(Probe { weights: Weights::Live, .. })),
            Effect::Engine(Command::Probe(Probe { weights: Weights::Base, .. }))
        ]
    ));
    // Editing the prompt: typed keys go to the prompt, not to the keymap.
    key(&mut a, KeyCode::Char('i'));
    chars(&mut a, " q");
    assert_eq!(a.explorer.prompt, "How are t6 q");
    assert!(!a.quit);
}

#[test]
fn models_enter_opens_and_sets_the_form() {
    let mut a = app();
    a.update(Msg::Models(vec![
        ModelEntry {
            name: "broken.gguf".into(),
            path: "/x/broken.gguf".into(),
            kind: Kind::Gguf,
            status: Status::Broken("bad magic".into()),
        },
        ModelEntry {
            name: "tiny".into(),
            path: "tests/fixtures/tiny-llama-gqa".into(),
            kind: Kind::HfDir,
            status: Status::Broken(String::new()),
        },
    ]));
    assert!(key(&mut a, KeyCode::Enter).is_empty(), "a broken model is not opened");
    assert!(a.log.lines.back().unwrap().1.contains("bad magic"));
    // A model that loads: the form takes its path and the engine opens it.
    let mut ok = a.models.entries[1].clone();
    ok.status = Status::Ok(whet::load::inspect(&ok.path).unwrap());
    a.update(Msg::Models(vec![ok]));
    let fx = key(&mut a, KeyCode::Enter);
    assert_eq!(fx, vec![Effect::Engine(Command::Open("tests/fixtures/tiny-llama-gqa".into()))]);
    assert_eq!(a.form.value("model.path"), "tests/fixtures/tiny-llama-gqa");
}

#[test]
fn focus_zoom_help_mouse() {
    let mut a = app();
    key(&mut a, KeyCode::Tab);
    assert_eq!(a.focus, Pane::Hparams);
    key(&mut a, KeyCode::BackTab);
    key(&mut a, KeyCode::BackTab);
    assert_eq!(a.focus, Pane::Log);
    key(&mut a, KeyCode::Char('3'));
    key(&mut a, KeyCode::Char('e'));
    assert!(a.zoomed);
    key(&mut a, KeyCode::Esc);
    assert!(!a.zoomed);
    key(&mut a, KeyCode::Char('?'));
    assert_eq!(a.mode, Mode::Help);
    key(&mut a, KeyCode::Char('z'));
    assert_eq!(a.mode, Mode::Normal);
    // A click in the Log pane (bottom rows at 120×40) focuses it; with the mouse off it does not.
    let click = |r| {
        Msg::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: 10,
            row: r,
            modifiers: KeyModifiers::NONE,
        })
    };
    a.update(Msg::Resize(120, 40));
    a.update(click(36));
    assert_eq!(a.focus, Pane::Log);
    key(&mut a, KeyCode::Char('M'));
    a.update(click(3));
    assert_eq!(a.focus, Pane::Log);
}

#[test]
fn engine_events_fold_into_metrics() {
    let mut a = running();
    for i in 1..=5 {
        a.update(Msg::Engine(Event::Step(step(i, 5.0 - i as f64))));
    }
    a.update(Msg::Engine(Event::Eval { step: 5, loss: 0.5 }));
    assert_eq!(a.metrics.loss.points.len(), 5);
    assert_eq!(a.metrics.eval.points, vec![(5.0, 0.5)]);
    assert_eq!(a.metrics.last.unwrap().step, 5);
    let eta = a.metrics.eta_s().unwrap();
    assert!((eta - 95.0).abs() < 1e-9, "1 s a step, 95 left: {eta}");
    a.update(Msg::Engine(Event::Failed("boom".into())));
    assert_eq!(a.run, RunState::Failed);
    assert!(a.log.lines.back().unwrap().1.contains("boom"));
}

#[test]
fn watch_list_charts_top1_over_steps() {
    let mut a = running();
    key(&mut a, KeyCode::Char('4'));
    key(&mut a, KeyCode::Char('w'));
    assert_eq!(a.explorer.watch.len(), 1);
    let fx = key(&mut a, KeyCode::Char('P'));
    // The live probe and one top-1 probe for the watched prompt.
    let wid = match &fx[..] {
        [Effect::Engine(Command::Probe(_)), Effect::Engine(Command::Probe(Probe { id, top_k: 1, prompt, .. }))]
            if prompt == "How are" =>
        {
            *id
        }
        other => panic!("{other:?}"),
    };
    a.update(Msg::Engine(Event::ProbeResult { id: wid, step: 12, result: Ok(probe_result(&[4])) }));
    assert_eq!(a.explorer.watch[0].series.points, vec![(12.0, 0.5)]);
    assert_eq!(a.explorer.watch[0].top1, " t4");
    assert!(a.explorer.result.is_none(), "a watch answer is not the live distribution");
    // A training warning does not drop the answer still in flight for the live prompt.
    let live = wid - 2;
    a.update(Msg::Engine(Event::Warning("step 13: update skipped".into())));
    a.update(Msg::Engine(Event::ProbeResult { id: live, step: 13, result: Ok(probe_result(&[8])) }));
    assert_eq!(a.explorer.result.as_ref().unwrap().0, 13);
    key(&mut a, KeyCode::Char('w'));
    assert!(a.explorer.watch.is_empty(), "w again unwatches");
}

/// The live-edit form parses in `update`: the preview the LR chart draws is ready before render,
/// and a bad value clears it and shows why.
#[test]
fn schedule_draft_previews_in_update_and_edits_grad_clip() {
    let mut a = running();
    key(&mut a, KeyCode::Char('r'));
    let Mode::Schedule(d) = &a.mode else { panic!("{:?}", a.mode) };
    assert_eq!(d.preview.as_ref().map(|s| s.total_steps), Some(100));
    assert_eq!(d.fields.iter().find(|f| f.0 == "grad clip").map(|f| f.1.as_str()), Some("1"));
    chars(&mut a, "x"); // lr "0.00005x"
    let Mode::Schedule(d) = &a.mode else { panic!("{:?}", a.mode) };
    assert!(d.preview.is_none() && d.error.as_deref().unwrap_or("").contains("lr"), "{:?}", d.error);
    key(&mut a, KeyCode::Backspace);
    for _ in 0..5 {
        key(&mut a, KeyCode::Tab); // to "grad clip"
    }
    key(&mut a, KeyCode::Backspace);
    chars(&mut a, "0.5");
    let fx = key(&mut a, KeyCode::Enter);
    assert!(
        matches!(&fx[..], [Effect::Engine(Command::SetSchedule(_)), Effect::Engine(Command::SetGradClip(c))] if *c == 0.5),
        "{fx:?}"
    );
    a.update(Msg::Engine(Event::GradClipSet { step: 3, old: 1.0, new: 0.5 }));
    assert_eq!(a.metrics.grad_clip, 0.5);
    // `:clip` is the same edit from the command line; an unchanged clip sends no clip edit.
    key(&mut a, KeyCode::Char(':'));
    chars(&mut a, "clip 2");
    let fx = key(&mut a, KeyCode::Enter);
    assert!(matches!(&fx[..], [_, Effect::Engine(Command::SetGradClip(c))] if *c == 2.0), "{fx:?}");
    key(&mut a, KeyCode::Char(':'));
    chars(&mut a, "lr 1e-4");
    assert_eq!(key(&mut a, KeyCode::Enter).len(), 1);
}

#[test]
fn evaluate_now_key() {
    let mut a = app();
    assert!(key(&mut a, KeyCode::Char('E')).is_empty(), "no run, nothing to evaluate");
    let mut a = running();
    assert!(matches!(&key(&mut a, KeyCode::Char('E'))[..], [Effect::Engine(Command::Evaluate)]));
}

/// The form offers bf16 and gradient checkpointing, parsed as `whet train` parses them.
#[test]
fn form_sets_dtype_and_gradient_checkpointing() {
    let mut a = app();
    a.form.set("run.dtype", "bf16").unwrap();
    a.form.set("optim.gradient_checkpointing", "true").unwrap();
    let cfg = a.form.config().unwrap();
    assert_eq!(cfg.run.dtype, whet::model::Precision::Bf16);
    assert!(cfg.optim.gradient_checkpointing);
    assert_eq!(a.form.value("run.dtype"), "bf16");
    let e = a.form.set("run.dtype", "fp8").unwrap_err();
    assert!(e.contains("f32") && e.contains("bf16"), "{e}");
    assert_eq!(a.form.value("run.dtype"), "bf16", "the document keeps the last good value");
}

#[test]
fn export_is_a_key_and_a_command_and_reports_the_path_and_size() {
    let mut a = app();
    // No run has checkpoints under runs/tui: the form's model is exported, GGUF + Modelfile.
    let fx = key(&mut a, KeyCode::Char('X'));
    let [Effect::Export(args)] = fx.as_slice() else { panic!("{fx:?}") };
    assert_eq!(args.source, PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(args.out, PathBuf::from("runs/tui/export/model.gguf"));
    assert!(args.ollama && args.quant.is_none());
    chars(&mut a, ":");
    let fx = chars(&mut a, "export merged");
    assert!(fx.is_empty());
    let fx = key(&mut a, KeyCode::Enter);
    let [Effect::Export(args)] = fx.as_slice() else { panic!("{fx:?}") };
    assert_eq!(
        (args.format, args.out.clone()),
        (whet::export::Format::Merged, PathBuf::from("runs/tui/export/merged"))
    );
    chars(&mut a, ":");
    chars(&mut a, "export gguf q4k");
    let fx = key(&mut a, KeyCode::Enter);
    let [Effect::Export(args)] = fx.as_slice() else { panic!("{fx:?}") };
    assert_eq!(args.quant.as_deref(), Some("q4k"));
    a.update(Msg::ExportProgress("writing x".into()));
    a.update(Msg::Exported(Ok((PathBuf::from("runs/tui/export/model.gguf"), 3 << 20))));
    let lines: Vec<String> = a.log.lines.iter().map(|l| l.1.clone()).collect();
    assert!(lines.iter().any(|l| l == "exported runs/tui/export/model.gguf (3.0 MiB)"), "{lines:?}");
    a.update(Msg::Exported(Err("boom".into())));
    assert!(a.log.lines.back().unwrap().1.contains("export failed: boom"));
}
