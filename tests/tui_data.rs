//! The workbench's Data view: `update` for its keys and for the form edits that refresh it,
//! and snapshots at 120×40 and 80×24, with colour and with NO_COLOR, of a chat sample whose
//! loss spans are known (tests/fixtures/data/chat.jsonl on the tiny fixture's tokenizer).

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use ratatui::Terminal;
use whet::data::preview::Fate;
use whet::data_cli::preview_run;
use whet::tui::app::App;
use whet::tui::msg::{Effect, Msg};
use whet::tui::pane::Pane;
use whet::tui::state::data::KEEP;
use whet::tui::state::form::FormState;
use whet::tui::ui;

fn doc(train: &str) -> String {
    format!(
        "[model]\npath = \"tests/fixtures/tiny-llama-gqa\"\n[method]\nkind = \"lora\"\n[data]\ntrain = \"{train}\"\n\
         format = \"chat\"\nseq_len = 64\npacking = false\n[optim]\nbatch_size = 1\nmax_steps = 4\n[run]\nout_dir = \"runs/tui-data\"\n"
    )
}

fn app(train: &str, color: bool) -> App {
    App::new(FormState::from_doc(&doc(train), None).unwrap(), color)
}

fn key(a: &mut App, c: KeyCode) -> Vec<Effect> {
    a.update(Msg::Key(KeyEvent::from(c)))
}

fn chars(a: &mut App, s: &str) -> Vec<Effect> {
    s.chars().flat_map(|c| key(a, KeyCode::Char(c))).collect()
}

/// Carries out the preview requests among `effects` as the main loop does, and folds the answers in.
fn answer(a: &mut App, effects: Vec<Effect>) -> usize {
    let mut n = 0;
    for e in effects {
        if let Effect::PreviewData { id, config } = e {
            let result = preview_run(&config, KEEP).map(Box::new).map_err(|e| format!("{e:#}"));
            a.update(Msg::DataPreview { id, result });
            n += 1;
        }
    }
    n
}

/// The Data view open on sample `n`.
fn opened(train: &str, color: bool, n: usize) -> App {
    let mut a = app(train, color);
    key(&mut a, KeyCode::Char('2'));
    let e = key(&mut a, KeyCode::Char('D'));
    assert_eq!(answer(&mut a, e), 1);
    for _ in 0..n {
        key(&mut a, KeyCode::Char('j'));
    }
    a
}

fn draw(a: &mut App, w: u16, h: u16) -> Terminal<TestBackend> {
    a.update(Msg::Resize(w, h));
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| ui::render(a, f)).unwrap();
    term
}

const CHAT: &str = "tests/fixtures/data/chat.jsonl";

#[test]
fn d_opens_the_view_from_the_form_and_keys_move_search_and_close() {
    let mut a = app(CHAT, true);
    key(&mut a, KeyCode::Char('2'));
    let e = key(&mut a, KeyCode::Char('D'));
    assert!(a.data.open && a.data.loading);
    assert_eq!(a.focus, Pane::Metrics, "the view has the focus");
    let Some(Effect::PreviewData { config, .. }) = e.first() else { panic!("{e:?}") };
    assert_eq!(config.data.train.to_str(), Some(CHAT));
    answer(&mut a, e);
    let Some(Ok(p)) = &a.data.preview else { panic!("{:?}", a.data.preview) };
    assert_eq!(p.samples.len(), 3);
    assert!(!a.data.loading);

    key(&mut a, KeyCode::Char('j'));
    key(&mut a, KeyCode::Char('j'));
    key(&mut a, KeyCode::Char('j'));
    assert_eq!(a.data.selected, 2, "j stops at the last sample");
    key(&mut a, KeyCode::Char('k'));
    assert_eq!(a.data.selected, 1);

    // `/` takes every printable key (n, j, D are text here) until Enter.
    chars(&mut a, "/");
    chars(&mut a, "name");
    assert_eq!(a.data.search.as_deref(), Some("name"));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.data.selected, 0, "sample 0 asks for a name");
    chars(&mut a, "/Bye");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.data.selected, 1);
    chars(&mut a, "n");
    assert_eq!(a.data.selected, 1, "the only match: n stays");
    chars(&mut a, "/nowhere to be found");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.data.note.as_deref(), Some("no sample contains \"nowhere to be found\""));

    key(&mut a, KeyCode::Esc);
    assert!(!a.data.open);
    assert_eq!(a.focus, Pane::Hparams);
}

#[test]
fn the_open_view_follows_the_form() {
    let mut a = opened(CHAT, true, 0);
    let first = a.data.asked;
    // seq_len from the form (Enter, type, Enter) and train_on_prompt from :set.
    key(&mut a, KeyCode::Char('2'));
    let seq = whet::tui::state::form::FIELDS.iter().position(|f| f.0 == "data.seq_len").unwrap();
    a.form.selected = seq;
    key(&mut a, KeyCode::Enter);
    for _ in 0..2 {
        key(&mut a, KeyCode::Backspace);
    }
    chars(&mut a, "48");
    let e = key(&mut a, KeyCode::Enter);
    let Some(Effect::PreviewData { id, config }) = e.first() else { panic!("{e:?}") };
    assert_eq!((*id, config.data.seq_len), (first + 1, 48));
    // An answer to the older request is dropped.
    let old = preview_run(config, KEEP).unwrap();
    a.update(Msg::DataPreview { id: first, result: Ok(Box::new(old)) });
    assert!(a.data.loading);
    answer(&mut a, e);
    let Some(Ok(p)) = &a.data.preview else { panic!() };
    assert_eq!(p.stats.seq_len, 48);
    assert_eq!(p.samples[1].fate, Fate::Truncated);

    chars(&mut a, ":set train_on_prompt=true");
    let e = key(&mut a, KeyCode::Enter);
    let Some(Effect::PreviewData { config, .. }) = e.first() else { panic!("{e:?}") };
    assert!(config.data.train_on_prompt);
    answer(&mut a, e);
    let Some(Ok(p)) = &a.data.preview else { panic!() };
    assert!(p.samples[0].labels.iter().all(|&l| l));

    // A change elsewhere asks for nothing; nor does a change while the view is closed.
    assert!(chars(&mut a, ":set lr=1e-3").into_iter().chain(key(&mut a, KeyCode::Enter)).next().is_none());
    key(&mut a, KeyCode::Char('3'));
    key(&mut a, KeyCode::Char('D'));
    assert!(!a.data.open);
    chars(&mut a, ":set seq_len=40");
    assert!(key(&mut a, KeyCode::Enter).is_empty());
}

#[test]
fn bad_data_shows_in_the_view_and_the_app_goes_on() {
    // Invalid UTF-8 on line 2: the sample shows its error, and the run would stop there.
    let mut a = opened("tests/fixtures/data/bad-utf8.jsonl", false, 1);
    let Some(Ok(p)) = &a.data.preview else { panic!("{:?}", a.data.preview) };
    assert!(matches!(&p.samples[1].fate, Fate::Invalid(w) if w.contains("UTF-8")), "{:?}", p.samples[1].fate);
    let text = format!("{:?}", draw(&mut a, 120, 40).backend());
    assert!(text.contains("invalid: not UTF-8"), "{text}");
    assert!(text.contains("a run stops here"));

    // A chat template that fails on a sample (raise_exception, as HF templates do on a bad
    // role order): a sample it fails on shows the template's error, naming its file.
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(format!("tests/fixtures/tiny-llama-gqa/{f}"), model.join(f)).unwrap();
    }
    let bad = "{% if messages[0]['role'] == 'user' %}{{ raise_exception('roles must alternate system/user') }}{% endif %}";
    std::fs::write(
        model.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": bad}).to_string(),
    )
    .unwrap();
    let text = doc(CHAT).replace("tests/fixtures/tiny-llama-gqa", &model.display().to_string());
    let mut a = App::new(FormState::from_doc(&text, None).unwrap(), false);
    key(&mut a, KeyCode::Char('2'));
    let e = key(&mut a, KeyCode::Char('D'));
    answer(&mut a, e);
    let Some(Ok(p)) = &a.data.preview else { panic!("{:?}", a.data.preview) };
    let fates: Vec<&Fate> = p.samples.iter().map(|s| &s.fate).collect();
    // Samples 0 and 2 open with a user turn and raise; sample 1 (a system turn) renders empty.
    for i in [0, 2] {
        assert!(matches!(fates[i], Fate::Invalid(w) if w.contains("roles must alternate")), "{fates:?}");
    }
    assert_eq!(fates[1], &Fate::Empty);
    let screen = format!("{:?}", draw(&mut a, 120, 40).backend());
    assert!(screen.contains("invalid: ") && screen.contains("tokenizer_config.json"), "{screen}");

    // A missing file, a template error: the message in place of the sample.
    let mut a = opened("tests/fixtures/data/none.jsonl", false, 0);
    let text = format!("{:?}", draw(&mut a, 120, 40).backend());
    assert!(text.contains("cannot preview the data") && text.contains("none.jsonl"), "{text}");
    a.update(Msg::DataPreview { id: a.data.asked, result: Err("tmpl: bad }".into()) });
    assert!(format!("{:?}", draw(&mut a, 80, 24).backend()).contains("tmpl: bad }"));

    // A sample taller than the screen: it wraps and scrolls.
    let mut a = opened(CHAT, false, 2);
    for _ in 0..40 {
        key(&mut a, KeyCode::Char('J'));
    }
    draw(&mut a, 60, 16);
    key(&mut a, KeyCode::Char('K'));
    draw(&mut a, 60, 16);
}

/// Sample 1 (two assistant turns, cut by the window) at 120×40; the short sample 0 at 80×24.
fn snapshot(color: bool, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut a = opened(CHAT, color, if h >= 40 { 1 } else { 0 });
    draw(&mut a, w, h)
}

#[test]
fn data_view_120x40() {
    insta::assert_snapshot!(snapshot(true, 120, 40).backend());
}

#[test]
fn data_view_120x40_no_color() {
    insta::assert_snapshot!(snapshot(false, 120, 40).backend());
}

#[test]
fn data_view_80x24() {
    insta::assert_snapshot!(snapshot(true, 80, 24).backend());
}

#[test]
fn data_view_80x24_no_color() {
    insta::assert_snapshot!(snapshot(false, 80, 24).backend());
}

/// In colour the loss tokens are green and the context grey, alternating shades token by token.
#[test]
fn colours_mark_the_loss_and_alternate_between_tokens() {
    let term = snapshot(true, 120, 40);
    let buf = term.backend().buffer();
    let row = |needle: &str| {
        (0..buf.area.height)
            .find(|&y| (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect::<String>().contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not on screen"))
    };
    let fg_of_row = |y: u16| -> Vec<Color> {
        // The view's columns, inside its border (the form is on the left).
        (41..buf.area.width - 1).map(|x| buf[(x, y)].fg).filter(|c| *c != Color::Reset).collect()
    };
    // "Hello.<|im_end|>↵" is the first assistant turn: all of it green, in two shades.
    let hello = fg_of_row(row("Hello."));
    assert!(hello.contains(&Color::Green) && hello.contains(&Color::LightGreen), "{hello:?}");
    assert!(!hello.contains(&Color::DarkGray), "{hello:?}");
    // "Hi<|im_end|>" is the user's: grey, in two shades, no green.
    let hi = fg_of_row(row("Hi<|im_end|>"));
    assert!(hi.contains(&Color::DarkGray) && hi.contains(&Color::Gray), "{hi:?}");
    assert!(!hi.contains(&Color::Green) && !hi.contains(&Color::LightGreen), "{hi:?}");
    // With NO_COLOR nothing is coloured, and the marks carry it.
    let term = snapshot(false, 120, 40);
    let text = format!("{:?}", term.backend());
    assert!(text.contains("«H│e│l│l│o│.│<|im_end|>│↵"), "{text}");
}
