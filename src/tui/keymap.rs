//! Every key binding, in one table: the handler looks keys up here and the help overlay is
//! generated from it, so the two cannot disagree.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::pane::Pane;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Models,
    Hparams,
    Metrics,
    Explorer,
    Log,
    /// The Data view, while it is open and has the focus.
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Help,
    Quit,
    NextPane,
    PrevPane,
    Focus(Pane),
    Evaluate,
    Zoom,
    Back,
    CommandLine,
    Start,
    StartDefaultLora,
    PauseResume,
    Stop,
    Checkpoint,
    Export,
    EditSchedule,
    ToggleMouse,
    Up,
    Down,
    Select,
    EditPrompt,
    ToggleChat,
    Pin,
    CompareBase,
    TempDown,
    TempUp,
    TopPDown,
    TopPUp,
    ProbeNow,
    Watch,
    LogScale,
    SmoothMore,
    SmoothLess,
    DataView,
    Conversation,
    Greedy,
    CompareCheckpoint,
    Search,
    SearchNext,
    ScrollUp,
    ScrollDown,
}

pub struct Binding {
    pub key: KeyCode,
    pub ctrl: bool,
    pub scope: Scope,
    pub action: Action,
    pub label: &'static str,
    pub help: &'static str,
}

const fn b(key: KeyCode, scope: Scope, action: Action, label: &'static str, help: &'static str) -> Binding {
    Binding { key, ctrl: false, scope, action, label, help }
}

use Action as A;
use KeyCode as K;
use Scope as S;

pub const KEYMAP: &[Binding] = &[
    b(K::Char('?'), S::Global, A::Help, "?", "this help"),
    b(K::Char('q'), S::Global, A::Quit, "q", "quit (while training: detach, or stop and save)"),
    Binding {
        key: K::Char('c'),
        ctrl: true,
        scope: S::Global,
        action: A::Quit,
        label: "Ctrl-C",
        help: "as q",
    },
    b(K::Tab, S::Global, A::NextPane, "Tab l →", "next pane"),
    b(K::BackTab, S::Global, A::PrevPane, "S-Tab h ←", "previous pane"),
    b(K::Char('l'), S::Global, A::NextPane, "", ""),
    b(K::Right, S::Global, A::NextPane, "", ""),
    b(K::Char('h'), S::Global, A::PrevPane, "", ""),
    b(K::Left, S::Global, A::PrevPane, "", ""),
    b(K::Char('1'), S::Global, A::Focus(Pane::Models), "1", "Models"),
    b(K::Char('2'), S::Global, A::Focus(Pane::Hparams), "2", "Hyperparameters"),
    b(K::Char('3'), S::Global, A::Focus(Pane::Metrics), "3", "Metrics"),
    b(K::Char('4'), S::Global, A::Focus(Pane::Explorer), "4", "Explorer"),
    b(K::Char('5'), S::Global, A::Focus(Pane::Log), "5", "Log"),
    b(K::Char('e'), S::Global, A::Zoom, "e", "zoom the pane / back"),
    b(K::Esc, S::Global, A::Back, "Esc", "back out"),
    b(
        K::Char(':'),
        S::Global,
        A::CommandLine,
        ":",
        "command line (:set k=v, :w [file], :load file, :lr X, :clip X, :q)",
    ),
    b(K::Char('s'), S::Global, A::Start, "s", "start training with the form's config"),
    b(K::Char('L'), S::Global, A::StartDefaultLora, "L", "start the default LoRA config"),
    b(K::Char(' '), S::Global, A::PauseResume, "Space", "pause / resume"),
    b(K::Char('x'), S::Global, A::Stop, "x", "stop (asks whether to save)"),
    b(K::Char('C'), S::Global, A::Checkpoint, "C", "checkpoint now"),
    b(K::Char('X'), S::Global, A::Export, "X", "export the run or model: GGUF + Modelfile"),
    b(K::Char('E'), S::Global, A::Evaluate, "E", "evaluate now"),
    b(K::Char('r'), S::Global, A::EditSchedule, "r", "edit the LR schedule and grad clip (live)"),
    b(K::Char('M'), S::Global, A::ToggleMouse, "M", "mouse on / off"),
    b(K::Up, S::Global, A::Up, "k ↑", "move up"),
    b(K::Char('k'), S::Global, A::Up, "", ""),
    b(K::Down, S::Global, A::Down, "j ↓", "move down"),
    b(K::Char('j'), S::Global, A::Down, "", ""),
    b(K::Enter, S::Models, A::Select, "Enter", "use this model; on a run: attach, or resume a stale one"),
    b(K::Enter, S::Hparams, A::Select, "Enter", "edit the field"),
    b(K::Enter, S::Explorer, A::Select, "Enter", "append the selected token and probe again"),
    b(K::Enter, S::Metrics, A::Zoom, "Enter", "zoom"),
    b(K::Enter, S::Log, A::Zoom, "Enter", "zoom"),
    b(K::Char('i'), S::Explorer, A::EditPrompt, "i", "edit the prompt"),
    b(K::Char('t'), S::Explorer, A::ToggleChat, "t", "chat template on / off"),
    b(K::Char('p'), S::Explorer, A::Pin, "p", "pin this distribution / unpin"),
    b(K::Char('b'), S::Explorer, A::CompareBase, "b", "compare with the base model (adapter off) / stop"),
    b(
        K::Char('c'),
        S::Explorer,
        A::CompareCheckpoint,
        "c",
        "compare with the newest checkpoint, then older ones",
    ),
    b(
        K::Char('m'),
        S::Explorer,
        A::Conversation,
        "m",
        "chat mode: talk to the live model (i writes, Enter sends)",
    ),
    b(K::Char('g'), S::Explorer, A::Greedy, "g", "chat replies greedy / sampled (T, top-p)"),
    b(K::Char('['), S::Explorer, A::TempDown, "[ ]", "temperature down / up"),
    b(K::Char(']'), S::Explorer, A::TempUp, "", ""),
    b(K::Char('{'), S::Explorer, A::TopPDown, "{ }", "top-p down / up"),
    b(K::Char('}'), S::Explorer, A::TopPUp, "", ""),
    b(K::Char('P'), S::Explorer, A::ProbeNow, "P", "probe now"),
    b(
        K::Char('w'),
        S::Explorer,
        A::Watch,
        "w",
        "watch this prompt's top-1 probability over training / unwatch",
    ),
    b(K::Char('D'), S::Hparams, A::DataView, "D", "the Data view: samples as trained on, loss marked; stats"),
    b(K::Char('D'), S::Data, A::DataView, "D Esc", "close the Data view"),
    b(K::Char('/'), S::Data, A::Search, "/", "search the samples"),
    b(K::Char('n'), S::Data, A::SearchNext, "n", "next match"),
    b(K::Char('J'), S::Data, A::ScrollDown, "J K", "scroll a long sample"),
    b(K::Char('K'), S::Data, A::ScrollUp, "", ""),
    b(K::PageDown, S::Data, A::ScrollDown, "", ""),
    b(K::PageUp, S::Data, A::ScrollUp, "", ""),
    b(K::Char('o'), S::Metrics, A::LogScale, "o", "loss log scale on / off"),
    b(K::Char('+'), S::Metrics, A::SmoothMore, "+ -", "more / less smoothing"),
    b(K::Char('-'), S::Metrics, A::SmoothLess, "", ""),
];

/// The action for `key` in `scope`: a pane's own binding wins over a global one.
pub fn lookup(scope: Scope, key: &KeyEvent) -> Option<Action> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let hit = |s: Scope| {
        KEYMAP.iter().find(|k| k.scope == s && k.key == key.code && k.ctrl == ctrl).map(|k| k.action)
    };
    hit(scope).or_else(|| hit(Scope::Global))
}

/// Lines for the help overlay: one per binding with a label (aliases have none).
pub fn help_lines() -> Vec<(String, &'static str, &'static str)> {
    KEYMAP
        .iter()
        .filter(|k| !k.label.is_empty())
        .map(|k| (k.label.to_string(), scope_name(k.scope), k.help))
        .collect()
}

fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Global => "",
        Scope::Models => "Models",
        Scope::Hparams => "Hyperparameters",
        Scope::Metrics => "Metrics",
        Scope::Explorer => "Explorer",
        Scope::Log => "Log",
        Scope::Data => "Data",
    }
}
