//! The engine thread through its protocol only: start, pause, probe between steps, edit the
//! schedule, resume, checkpoint, finish; and what the run directory holds afterwards.

mod common;

use std::time::Duration;

use candle_core::Device;
use common::*;
use whet::engine::config::RunConfig;
use whet::engine::protocol::Probe;
use whet::engine::{self, Command, Event};
use whet::optim::SchedulePlan;

fn config() -> RunConfig {
    RunConfig::from_toml(&format!(
        r#"
[model]
path = "{model}"
[method]
kind = "lora"
r = 2
alpha = 4
targets = ["q_proj", "v_proj"]
[data]
train = "{tokens}"
format = "tokens"
seq_len = 16
eval_fraction = 0.1
shuffle = false
[optim]
batch_size = 4
max_steps = 8
[schedule]
kind = "constant"
lr = 1e-3
[run]
eval_every = 4
"#,
        model = fixture("tiny-llama-gqa").display(),
        tokens = fixture("train/tokens.u16").display(),
    ))
    .unwrap()
}

fn next(h: &engine::EngineHandle) -> Event {
    h.recv_timeout(Duration::from_secs(60)).expect("an engine event")
}

/// Waits for the first event `pick` accepts, keeping the steps seen on the way.
fn wait<T>(h: &engine::EngineHandle, steps: &mut Vec<u64>, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    loop {
        let e = next(h);
        if let Event::Failed(m) = &e {
            panic!("engine failed: {m}");
        }
        if let Event::Step(s) = &e {
            steps.push(s.step);
        }
        if let Some(t) = pick(&e) {
            return t;
        }
    }
}

#[test]
fn a_run_driven_by_commands() {
    let dir = tempfile::tempdir().unwrap();
    let h = engine::spawn(Device::Cpu);
    h.send(Command::Start { config: Box::new(config()), run_dir: dir.path().to_path_buf(), resume: false });
    h.send(Command::Pause);
    let mut steps = vec![];
    let info = wait(&h, &mut steps, |e| if let Event::Loaded(i) = e { Some(i.clone()) } else { None });
    assert_eq!((info.total_steps, info.method.as_str()), (8, "lora"));
    // The engine reports the plan in force, so a client draws the LR plan from the engine.
    assert_eq!((info.schedule.kind.name(), info.schedule.lr, info.grad_clip), ("constant", 1e-3, 1.0));
    let paused_at = wait(&h, &mut steps, |e| if let Event::Paused { step } = e { Some(*step) } else { None });

    // While paused: a probe answers on the current (adapted) weights, and the schedule changes.
    h.send(Command::Probe(Probe::new(7, "How are", 3)));
    let (id, at, top) = wait(&h, &mut steps, |e| match e {
        Event::ProbeResult { id, step, result } => Some((*id, *step, result.clone().unwrap().top)),
        _ => None,
    });
    assert_eq!((id, at, top.len()), (7, paused_at, 3));
    let new: SchedulePlan = toml::from_str("kind = \"constant\"\nlr = 4e-4").unwrap();
    h.send(Command::SetSchedule(new.clone()));
    let edited =
        wait(&h, &mut steps, |e| if let Event::ScheduleEdited { step, .. } = e { Some(*step) } else { None });
    assert_eq!(edited, paused_at);
    h.send(Command::SetGradClip(-1.0)); // rejected with a warning, the run goes on
    wait(&h, &mut steps, |e| matches!(e, Event::Warning(_)).then_some(()));
    h.send(Command::SetGradClip(0.5));
    let clip = wait(&h, &mut steps, |e| match e {
        Event::GradClipSet { step, old, new } => Some((*step, *old, *new)),
        _ => None,
    });
    assert_eq!(clip, (paused_at, 1.0, 0.5));
    // "Evaluate now" answers with an eval loss at the paused step.
    h.send(Command::Evaluate);
    let (eval_step, eval_loss) =
        wait(
            &h,
            &mut steps,
            |e| if let Event::Eval { step, loss } = e { Some((*step, *loss)) } else { None },
        );
    assert_eq!(eval_step, paused_at);
    assert!(eval_loss.is_finite() && eval_loss > 0.0, "{eval_loss}");
    h.send(Command::SaveCheckpoint);
    wait(&h, &mut steps, |e| matches!(e, Event::Checkpoint { .. }).then_some(()));
    h.send(Command::Resume);
    let outputs = wait(&h, &mut steps, |e| {
        if let Event::Finished { outputs, .. } = e {
            Some(outputs.clone())
        } else {
            None
        }
    });
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());
    assert_eq!(outputs, vec![dir.path().join("adapter")]);
    h.shutdown();

    // metrics.jsonl: one line per step with the StepStats fields, eval lines at steps 4 and 8
    // (and the one asked for).
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let step_lines: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    assert_eq!(step_lines.len(), 8);
    for l in &step_lines {
        let s = l["step"].as_u64().unwrap();
        let want = if s <= paused_at { 1e-3 } else { 4e-4 };
        assert_eq!(l["lr"].as_f64().unwrap(), want, "lr at step {s}");
        for k in ["grad_norm", "tokens", "tokens_per_s", "elapsed_s", "skipped"] {
            assert!(l.get(k).is_some(), "metrics line lacks {k}");
        }
    }
    // Achieved FLOP/s: the same FLOPs per token (model::flops) times each step's tokens/s.
    let per_token: Vec<f64> = step_lines
        .iter()
        .map(|l| l["flops_per_s"].as_f64().unwrap() / l["tokens_per_s"].as_f64().unwrap())
        .collect();
    assert!(per_token[0] > 0.0);
    assert!(per_token.iter().all(|f| (f / per_token[0] - 1.0).abs() < 1e-9), "{per_token:?}");
    let evals: Vec<u64> =
        lines.iter().filter(|l| l.get("eval_loss").is_some()).map(|l| l["step"].as_u64().unwrap()).collect();
    // The evaluation asked for while paused, then those of `eval_every`.
    assert_eq!(evals, vec![paused_at, 4, 8]);
    let edits = std::fs::read_to_string(dir.path().join("edits.jsonl")).unwrap();
    assert_eq!(edits.lines().count(), 1);
    assert!(dir.path().join("config.toml").exists());
    assert!(dir.path().join("adapter/adapter_config.json").exists());
    assert!(dir.path().join("adapter/adapter_model.safetensors").exists());
}

#[test]
fn commands_without_a_run_warn_and_bad_configs_fail_cleanly() {
    let h = engine::spawn(Device::Cpu);
    h.send(Command::Probe(Probe::new(1, "x", 1)));
    match next(&h) {
        Event::ProbeResult { id: 1, result: Err(e), .. } => assert!(e.contains("no run is active"), "{e}"),
        e => panic!("expected an error answer, got {e:?}"),
    }
    let mut bad = config();
    bad.data.train = "/no/such/tokens.bin".into();
    let dir = tempfile::tempdir().unwrap();
    h.send(Command::Start { config: Box::new(bad), run_dir: dir.path().to_path_buf(), resume: false });
    match next(&h) {
        Event::Failed(m) => assert!(m.contains("/no/such/tokens.bin"), "{m}"),
        e => panic!("expected Failed, got {e:?}"),
    }
    // The engine is still alive and accepts a good run.
    h.send(Command::Start { config: Box::new(config()), run_dir: dir.path().to_path_buf(), resume: false });
    assert!(matches!(next(&h), Event::Loaded(_)));
    assert!(matches!(next(&h), Event::Log(_)));
    h.shutdown();
}

/// A non-finite loss or gradient skips the update, is counted and warned about, and the run
/// halts after `max_bad_steps` in a row.
#[test]
fn non_finite_steps_are_skipped_then_halt() {
    let mut cfg = config();
    cfg.method.kind = whet::engine::config::MethodKind::Full;
    cfg.schedule.lr = 1e30; // the first update blows the weights up; later losses are not finite
    cfg.run.max_bad_steps = 2;
    cfg.run.eval_every = 0;
    let dir = tempfile::tempdir().unwrap();
    let h = engine::spawn(Device::Cpu);
    h.send(Command::Start { config: Box::new(cfg), run_dir: dir.path().to_path_buf(), resume: false });
    let (mut stats, mut warnings) = (vec![], 0);
    let failure = loop {
        match next(&h) {
            Event::Step(s) => stats.push(s),
            Event::Warning(_) => warnings += 1,
            Event::Failed(m) => break m,
            Event::Finished { .. } => panic!("the run should have halted"),
            _ => {}
        }
    };
    assert!(failure.contains("2 bad steps in a row"), "{failure}");
    assert!(stats[0].loss.is_finite() && stats[0].skipped == 0);
    let last = stats.last().unwrap();
    assert!(!last.loss.is_finite() || !last.grad_norm.is_finite());
    assert_eq!(last.skipped, 2);
    assert_eq!(warnings, 2);
    h.shutdown();
}

/// Early stopping: with lr 1e-30 (the peak LR must be > 0) every update is far below f32's
/// resolution of the weights, so the eval loss never improves and patience 2 stops the run
/// after the third evaluation, and it still saves.
#[test]
fn early_stopping_ends_the_run() {
    let mut cfg = config();
    cfg.schedule.lr = 1e-30;
    cfg.run.eval_every = 1;
    cfg.run.early_stopping_patience = 2;
    let dir = tempfile::tempdir().unwrap();
    let h = engine::spawn(Device::Cpu);
    h.send(Command::Start { config: Box::new(cfg), run_dir: dir.path().to_path_buf(), resume: false });
    let mut evals = vec![];
    let (step, outputs) = loop {
        match next(&h) {
            Event::Eval { loss, .. } => evals.push(loss),
            Event::Finished { step, outputs } => break (step, outputs),
            Event::Failed(m) => panic!("{m}"),
            _ => {}
        }
    };
    assert_eq!(step, 3);
    assert_eq!(evals.len(), 3);
    assert!(evals.iter().all(|l| *l == evals[0]));
    assert_eq!(outputs.len(), 1);
    h.shutdown();
}
