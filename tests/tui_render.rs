//! Snapshots of every pane (insta + ratatui's TestBackend) at 120×40 and 80×24 (zoomed), fed
//! synthetic engine events, with colour and with NO_COLOR; plus the too-small message.

use ratatui::backend::TestBackend;
use ratatui::style::Color;
use ratatui::Terminal;
use whet::engine::registry::{RunStatus, RunSummary};
use whet::engine::{Event, ModelInfo, StepStats};
use whet::load::ModelSummary;
use whet::logits::{ProbeResult, TopToken};
use whet::optim::SchedulePlan;
use whet::tui::app::App;
use whet::tui::msg::Msg;
use whet::tui::pane::Pane;
use whet::tui::state::form::{FormState, DEFAULT_DOC};
use whet::tui::state::models::{Kind, ModelEntry, Status};
use whet::tui::ui;

/// An app mid-run: 40 of 100 steps, two evals, an LR edit at step 20, a probe answer.
fn run(dir: &str, status: RunStatus) -> RunSummary {
    RunSummary {
        dir: dir.into(),
        status,
        step: Some(420),
        loss: Some(1.2345),
        max_steps: Some(1000),
        eta_s: Some(600.0),
        checkpoint: Some(400),
    }
}

fn scene(color: bool) -> App {
    let mut a = App::new(
        FormState::from_doc(DEFAULT_DOC, Some("configs/sft-smollm2-lora.toml".into())).unwrap(),
        color,
    );
    a.models.device = "cpu".into(); // as tui::run sets it from the engine's device
    let d = ModelSummary {
        arch: "llama".into(),
        params: 134_515_008,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        vocab: 49152,
        context: 8192,
        dtype: "F32+Q4_1+Q8_0".into(),
        size_bytes: 98_362_432,
        chat_template: true,
    };
    a.update(Msg::Models(vec![
        ModelEntry {
            name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            path: "models/s.gguf".into(),
            kind: Kind::Gguf,
            status: Status::Ok(d),
        },
        ModelEntry {
            name: "org/half-downloaded".into(),
            path: "/c/x".into(),
            kind: Kind::HfCache,
            status: Status::Broken("no refs/main: partial download".into()),
        },
    ]));
    a.update(Msg::Runs(vec![
        run("/home/u/runs/smollm2-lora", RunStatus::Running),
        run("/scratch/pt", RunStatus::Stale),
    ]));
    let info = ModelInfo {
        method: "lora".into(),
        params: 139_399_488,
        trainable: 4_884_480,
        layers: 30,
        vocab: 49152,
        total_steps: 100,
        start_step: 0,
        train_windows: 365,
        eval_windows: 20,
        // The plan the engine reports: the form's own (DEFAULT_DOC's) schedule.
        schedule: toml::from_str("kind = \"cosine\"\nlr = 2e-3\nwarmup_steps = 4").unwrap(),
        grad_clip: 1.0,
    };
    a.update(Msg::Engine(Event::Loaded(info)));
    for i in 1..=40u64 {
        let loss = 3.0 * (-(i as f64) / 15.0).exp() + 0.2 + 0.05 * ((i * 7 % 5) as f64 - 2.0) / 2.0;
        let lr = if i <= 20 { 2e-3 } else { 1e-3 };
        a.update(Msg::Engine(Event::Step(StepStats {
            step: i,
            loss,
            lr,
            grad_norm: 1.25,
            tokens: 768,
            tokens_per_s: 81.0,
            flops_per_s: 81.0 * 0.7e9,
            mfu: None,
            elapsed_s: 9.5 * i as f64,
            skipped: 0,
        })));
        if i == 20 {
            a.update(Msg::Engine(Event::Eval { step: 20, loss: 0.41 }));
            a.update(Msg::Engine(Event::ScheduleEdited {
                step: 20,
                old: Box::new(SchedulePlan::default()),
                new: Box::new(toml::from_str("kind = \"cosine\"\nlr = 1e-3").unwrap()),
            }));
        }
    }
    a.update(Msg::Engine(Event::Eval { step: 40, loss: 0.33 }));
    a.update(Msg::Memory(3_010 << 20));
    let tok = |id: u32, text: &str, piece: &str, p: f64| TopToken {
        id,
        piece: piece.into(),
        text: text.into(),
        prob: p,
        logprob: p.ln(),
    };
    let r = ProbeResult {
        prompt_ids: vec![2683, 359],
        top: vec![
            tok(260, " the", "Ġthe", 0.2725),
            tok(623, " these", "Ġthese", 0.1096),
            tok(346, " you", "Ġyou", 0.0336),
            tok(134, "\u{FFFD}", "Ã", 0.01),
        ],
        entropy: 4.78,
        cumulative: 0.4257,
        sampled: vec![],
        target: None,
    };
    a.update(Msg::Key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Char('4'))));
    let fx = a.update(Msg::Key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Char('P'))));
    let id = match &fx[..] {
        [whet::tui::msg::Effect::Engine(whet::engine::Command::Probe(p))] => p.id,
        other => panic!("{other:?}"),
    };
    a.update(Msg::Engine(Event::ProbeResult { id, step: 40, result: Ok(r) }));
    // A watched prompt with three answers so far.
    let mut w = whet::tui::state::explorer::Watch {
        prompt: "What is your name?".into(),
        top1: "W".into(),
        ..Default::default()
    };
    for (s, p) in [(10.0, 0.1), (20.0, 0.6), (40.0, 0.95)] {
        w.series.push(s, p);
    }
    a.explorer.watch.push(w);
    a.update(Msg::Engine(Event::Log("data: 385 samples".into())));
    a.update(Msg::Engine(Event::Warning("step 12: non-finite loss; update skipped".into())));
    a
}

fn draw(app: &mut App, w: u16, h: u16) -> Terminal<TestBackend> {
    app.update(Msg::Resize(w, h));
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::render(app, f)).unwrap();
    t
}

fn coloured_cells(t: &Terminal<TestBackend>) -> usize {
    t.backend().buffer().content.iter().filter(|c| c.fg != Color::Reset || c.bg != Color::Reset).count()
}

#[test]
fn full_screen_120x40() {
    let mut a = scene(true);
    let t = draw(&mut a, 120, 40);
    insta::assert_snapshot!("all_panes_120x40", t.backend());
    assert!(coloured_cells(&t) > 100);
}

#[test]
fn no_color_has_no_colours_and_the_same_text() {
    let mut a = scene(false);
    let t = draw(&mut a, 120, 40);
    assert_eq!(coloured_cells(&t), 0, "NO_COLOR: every cell in the default colours");
    let mut c = scene(true);
    let tc = draw(&mut c, 120, 40);
    let text = |t: &Terminal<TestBackend>| {
        t.backend().buffer().content.iter().map(|c| c.symbol().to_string()).collect::<String>()
    };
    assert_eq!(text(&t), text(&tc));
}

#[test]
fn each_pane_zoomed_at_80x24() {
    for (i, name) in ["models", "hparams", "metrics", "explorer", "log"].iter().enumerate() {
        for color in [true, false] {
            let mut a = scene(color);
            a.focus = Pane::ALL[i];
            a.zoomed = true;
            let t = draw(&mut a, 80, 24);
            if color {
                insta::assert_snapshot!(format!("zoom_{name}_80x24"), t.backend());
            } else {
                assert_eq!(coloured_cells(&t), 0);
            }
        }
    }
}

#[test]
fn all_panes_at_80x24_and_the_help_overlay() {
    let mut a = scene(true);
    let t = draw(&mut a, 80, 24);
    insta::assert_snapshot!("all_panes_80x24", t.backend());
    a.update(Msg::Key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Char('?'))));
    let t = draw(&mut a, 120, 40);
    insta::assert_snapshot!("help_120x40", t.backend());
}

/// The Runs list under the models, a stale run selected: its checkpoint and the resume key.
#[test]
fn models_pane_with_runs_80x24() {
    let mut a = scene(true);
    a.focus = Pane::Models;
    a.zoomed = true;
    for _ in 0..3 {
        a.models.move_by(1);
    }
    assert_eq!(a.models.selected_run().map(|r| r.status), Some(RunStatus::Stale));
    let t = draw(&mut a, 80, 24);
    insta::assert_snapshot!("zoom_models_runs_80x24", t.backend());
}

#[test]
fn too_small_is_a_message_not_a_panic() {
    let mut a = scene(true);
    let t = draw(&mut a, 40, 10);
    let text: String = t.backend().buffer().content.iter().map(|c| c.symbol()).collect();
    assert!(text.contains("whet needs at least 60"), "{text}");
    draw(&mut a, 1, 1);
}
