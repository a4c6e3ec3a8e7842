//! `App::update` for the explorer's chat mode, checkpoint and base comparison, target watches,
//! sampling knobs and opening a finished run; and what the explorer draws for them.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use whet::engine::protocol::{ChatRequest, Probe, Weights};
use whet::engine::registry::{RunStatus, RunSummary};
use whet::engine::{Command, Event, ModelInfo};
use whet::logits::{ProbeResult, Sampler, TopToken};
use whet::optim::SchedulePlan;
use whet::tui::app::App;
use whet::tui::msg::{Effect, Msg};
use whet::tui::pane::Pane;
use whet::tui::state::form::{FormState, DEFAULT_DOC};

fn running() -> App {
    let mut a = App::new(FormState::from_doc(DEFAULT_DOC, None).unwrap(), true);
    a.update(Msg::Engine(Event::Loaded(ModelInfo {
        method: "lora".into(),
        params: 100,
        trainable: 10,
        layers: 2,
        vocab: 50,
        total_steps: 100,
        start_step: 0,
        train_windows: 10,
        eval_windows: 1,
        schedule: SchedulePlan::default(),
        grad_clip: 1.0,
    })));
    key(&mut a, KeyCode::Char('4'));
    a
}

fn key(a: &mut App, c: KeyCode) -> Vec<Effect> {
    a.update(Msg::Key(KeyEvent::from(c)))
}

fn chars(a: &mut App, s: &str) -> Vec<Effect> {
    s.chars().flat_map(|c| key(a, KeyCode::Char(c))).collect()
}

fn command(a: &mut App, line: &str) -> Vec<Effect> {
    chars(a, &format!(":{line}"));
    key(a, KeyCode::Enter)
}

fn tok(id: u32, text: &str, p: f64) -> TopToken {
    TopToken { id, piece: text.into(), text: text.into(), prob: p, logprob: p.ln() }
}

fn result(top: Vec<TopToken>) -> ProbeResult {
    ProbeResult { prompt_ids: vec![1], top, entropy: 1.0, cumulative: 1.0, sampled: vec![], target: None }
}

fn probes(effects: &[Effect]) -> Vec<Probe> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Engine(Command::Probe(p)) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn text(a: &mut App) -> String {
    a.update(Msg::Resize(120, 40));
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
    term.draw(|f| whet::tui::ui::render(a, f)).unwrap();
    format!("{:?}", term.backend())
}

#[test]
fn chat_mode_sends_the_conversation_and_streams_the_reply() {
    let mut a = running();
    key(&mut a, KeyCode::Char('m'));
    assert!(a.explorer.conversation.on);
    key(&mut a, KeyCode::Char('i'));
    chars(&mut a, "Hi");
    let fx = key(&mut a, KeyCode::Enter);
    let [Effect::Engine(Command::Chat(ChatRequest { id, messages, sampler, weights, .. }))] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert_eq!((messages.len(), messages[0].role.as_str(), messages[0].content.as_str()), (1, "user", "Hi"));
    assert_eq!((*sampler, *weights), (Sampler { temperature: 1.0, top_p: 1.0 }, Weights::Live));
    let id = *id;
    // While it replies, a second message waits.
    key(&mut a, KeyCode::Char('i'));
    chars(&mut a, "again");
    assert!(key(&mut a, KeyCode::Enter).is_empty());
    assert_eq!(a.explorer.prompt, "again", "the unsent message is kept");
    key(&mut a, KeyCode::Char('i'));
    for _ in 0..5 {
        key(&mut a, KeyCode::Backspace);
    }
    key(&mut a, KeyCode::Enter);

    let alts = vec![tok(5, "Hel", 0.6), tok(6, "Hi", 0.3)];
    a.update(Msg::Engine(Event::ChatToken { id, token: tok(5, "Hel", 0.6), alternatives: alts.clone() }));
    a.update(Msg::Engine(Event::ChatToken { id: id + 99, token: tok(1, "x", 0.1), alternatives: vec![] }));
    a.update(Msg::Engine(Event::ChatToken { id, token: tok(7, "lo", 0.8), alternatives: alts }));
    let reply = a.explorer.conversation.reply.clone().unwrap();
    assert_eq!(reply.tokens.len(), 2, "an answer to another request is not this reply's");
    assert_eq!(a.explorer.conversation.selected, 1, "the cursor follows the stream");
    key(&mut a, KeyCode::Char('k'));
    assert_eq!(a.explorer.conversation.selected, 0);
    let screen = text(&mut a);
    assert!(screen.contains("you: Hi") && screen.contains("model: Hello"), "{screen}");
    assert!(screen.contains("token 1 \"Hel\": drawn at p = 0.600"), "{screen}");

    // A small terminal and a long reply: wrapped and scrolled, no panic.
    for i in 0..200 {
        a.update(Msg::Engine(Event::ChatToken { id, token: tok(8, " word\n", 0.5), alternatives: vec![] }));
        if i == 0 {
            key(&mut a, KeyCode::Char('j'));
        }
    }
    a.update(Msg::Resize(60, 16));
    let mut term = Terminal::new(TestBackend::new(60, 16)).unwrap();
    term.draw(|f| whet::tui::ui::render(&a, f)).unwrap();
    a.explorer.conversation.reply.as_mut().unwrap().tokens.truncate(2);
    a.explorer.conversation.selected = 1;
    a.update(Msg::Engine(Event::ChatDone { id, step: 12, result: Ok("Hello".into()) }));
    assert_eq!(a.explorer.conversation.messages.len(), 2);
    assert_eq!(a.explorer.conversation.messages[1].content, "Hello");
    assert!(text(&mut a).contains("written at step 12"));

    // Greedy, on the base when comparing with it; the conversation so far goes along.
    key(&mut a, KeyCode::Char('g'));
    key(&mut a, KeyCode::Char('b'));
    key(&mut a, KeyCode::Char('i'));
    chars(&mut a, "more");
    let fx = key(&mut a, KeyCode::Enter);
    let [Effect::Engine(Command::Chat(c))] = &fx[..] else { panic!("{fx:?}") };
    assert_eq!((c.messages.len(), c.sampler.temperature, c.weights), (3, 0.0, Weights::Base));
    assert_eq!(c.messages[2].content, "more");
    // A failed reply takes the user's turn back.
    a.update(Msg::Engine(Event::ChatDone { id: c.id, step: 13, result: Err("out of memory".into()) }));
    assert_eq!(a.explorer.conversation.messages.len(), 2);
    command(&mut a, "new");
    assert!(a.explorer.conversation.messages.is_empty());
    // Leaving chat mode brings the probe prompt back.
    key(&mut a, KeyCode::Char('m'));
    assert_eq!(a.explorer.prompt, "How are");
}

#[test]
fn a_checkpoint_or_the_base_is_probed_beside_the_live_model() {
    let mut a = running();
    // No checkpoint yet: c says so.
    assert!(key(&mut a, KeyCode::Char('c')).is_empty());
    assert_eq!(a.explorer.compare, None);
    for step in [20, 40] {
        a.update(Msg::Engine(Event::Checkpoint { step, path: PathBuf::from(format!("/r/step-{step}")) }));
    }
    let p = probes(&key(&mut a, KeyCode::Char('c')));
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].weights, p[1].weights, p[1].top_k), (Weights::Live, Weights::Checkpoint(40), 50));
    assert_eq!(probes(&key(&mut a, KeyCode::Char('c')))[1].weights, Weights::Checkpoint(20));
    assert!(key(&mut a, KeyCode::Char('c')).is_empty(), "past the oldest: off");
    assert_eq!(a.explorer.compare, None);

    let p = probes(&command(&mut a, "pin 20"));
    assert_eq!(p[1].weights, Weights::Checkpoint(20));
    let (live, pinned) = (p[0].id, p[1].id);
    a.update(Msg::Engine(Event::ProbeResult {
        id: live,
        step: 60,
        result: Ok(result(vec![tok(1, " you", 0.5), tok(2, " we", 0.2), tok(3, " they", 0.1)])),
    }));
    a.update(Msg::Engine(Event::ProbeResult {
        id: pinned,
        step: 60,
        result: Ok(result(vec![tok(2, " we", 0.4), tok(1, " you", 0.1)])),
    }));
    assert_eq!(a.explorer.pinned.as_ref().unwrap().0, "checkpoint 20");
    // The difference per token, in percentage points: +40.0, -20.0, and — where absent.
    let screen = text(&mut a);
    assert!(screen.contains("+40.0") && screen.contains("-20.0") && screen.contains('—'), "{screen}");
    assert!(screen.contains("pinned: checkpoint 20"));

    assert_eq!(probes(&command(&mut a, "pin base"))[1].weights, Weights::Base);
    assert!(command(&mut a, "pin off").is_empty());
    assert!(a.explorer.pinned.is_none());
    assert!(command(&mut a, "pin soon").is_empty());
}

#[test]
fn a_target_token_is_charted_and_the_sampler_goes_to_the_engine() {
    let mut a = running();
    command(&mut a, "watch \" you\"");
    assert_eq!(a.explorer.watch[0].target.as_deref(), Some(" you"));
    // An empty target is the plain watch (top-1), toggled on and off again.
    command(&mut a, "watch \"\"");
    assert_eq!((a.explorer.watch.len(), a.explorer.watch[1].target.as_deref()), (2, None));
    command(&mut a, "watch");
    assert_eq!(a.explorer.watch.len(), 1);
    let fx = key(&mut a, KeyCode::Char('P'));
    let p = probes(&fx);
    let w = p.iter().find(|p| p.target.is_some()).expect("the watch rides along");
    assert_eq!((w.prompt.as_str(), w.target.as_deref()), ("How are", Some(" you")));
    let mut r = result(vec![tok(9, " the", 0.6)]);
    r.target = Some(tok(4, " you", 0.25));
    a.update(Msg::Engine(Event::ProbeResult { id: w.id, step: 8, result: Ok(r) }));
    assert_eq!(
        a.explorer.watch[0].series.points,
        vec![(8.0, 0.25)],
        "the target's probability, not the top-1's"
    );
    assert_eq!(a.explorer.watch[0].top1, " you");

    // ] and } ask again, with the sampler; the engine fills `sampled`.
    let p = probes(&key(&mut a, KeyCode::Char(']')));
    assert!((p[0].sampler.temperature - 1.1).abs() < 1e-9 && p[0].sampler.top_p == 1.0);
    let p = probes(&key(&mut a, KeyCode::Char('{')));
    assert!((p[0].sampler.top_p - 0.95).abs() < 1e-9);
    let mut r = result(vec![tok(9, " the", 0.6), tok(4, " you", 0.3)]);
    r.sampled = vec![0.7321, 0.2679];
    a.update(Msg::Engine(Event::ProbeResult { id: p[0].id, step: 9, result: Ok(r) }));
    let screen = text(&mut a);
    assert!(screen.contains("73.2%") && screen.contains("26.8%") && screen.contains("drawn"), "{screen}");
}

#[test]
fn enter_on_a_finished_run_opens_it_for_probing() {
    let mut a = App::new(FormState::from_doc(DEFAULT_DOC, None).unwrap(), true);
    let run = |status, checkpoint| RunSummary {
        dir: "/runs/done".into(),
        status,
        step: Some(40),
        loss: Some(0.5),
        max_steps: Some(40),
        eta_s: None,
        checkpoint,
    };
    a.update(Msg::Runs(vec![run(RunStatus::Finished, Some(40))]));
    a.focus = Pane::Models;
    // The Runs list follows the models; move onto the run.
    let mut fx = key(&mut a, KeyCode::Enter);
    for _ in 0..5 {
        if !fx.is_empty() {
            break;
        }
        key(&mut a, KeyCode::Char('j'));
        fx = key(&mut a, KeyCode::Enter);
    }
    assert_eq!(fx, vec![Effect::Engine(Command::Open(PathBuf::from("/runs/done")))]);
    assert_eq!(a.focus, Pane::Explorer);
    a.update(Msg::Runs(vec![run(RunStatus::Finished, None)]));
    assert!(key(&mut a, KeyCode::Enter).is_empty(), "no checkpoint: nothing to open");
}
