//! Text entry: the form field being edited, the explorer prompt, the `:` command line and the
//! schedule form. Every printable key goes to the text here, not to the keymap.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent};

use super::{App, Mode, ScheduleDraft};
use crate::engine::Command;
use crate::tui::msg::Effect;
use crate::tui::state::form::FIELDS;
use crate::tui::state::log::Level;

impl App {
    pub(super) fn edit_field_key(&mut self, k: KeyEvent, buf: String) -> Vec<Effect> {
        let buf = match typed(k, buf) {
            Typed::Editing(buf) => {
                self.form.editing = Some(buf);
                return vec![];
            }
            Typed::Cancelled => return vec![],
            Typed::Done(buf) => buf,
        };
        let key = self.form.key();
        let quoted = matches!(
            key,
            "model.path"
                | "data.train"
                | "method.kind"
                | "method.quant"
                | "schedule.kind"
                | "data.format"
                | "run.dtype"
        );
        let raw = if quoted && !buf.trim().is_empty() { format!("\"{}\"", buf.trim()) } else { buf };
        if let Err(e) = self.form.set(key, &raw) {
            self.log.push(Level::Warn, format!("{}: {e}", FIELDS[self.form.selected].1));
        }
        vec![]
    }

    pub(super) fn prompt_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        match k.code {
            KeyCode::Enter => {
                self.explorer.editing = false;
                if self.explorer.conversation.on {
                    return self.send_chat();
                }
                return self.probe();
            }
            KeyCode::Esc => self.explorer.editing = false,
            KeyCode::Backspace => {
                self.explorer.prompt.pop();
            }
            KeyCode::Char(c) => self.explorer.prompt.push(c),
            _ => {}
        }
        vec![]
    }

    /// `/` in the Data view: Enter finds the next sample with the text.
    pub(super) fn search_key(&mut self, k: KeyEvent, buf: String) -> Vec<Effect> {
        match typed(k, buf) {
            Typed::Editing(buf) => self.data.search = Some(buf),
            Typed::Done(q) => {
                self.data.query = q;
                self.data.find_next();
            }
            Typed::Cancelled => {}
        }
        vec![]
    }

    pub(super) fn command_key(&mut self, k: KeyEvent, buf: String) -> Vec<Effect> {
        match typed(k, buf) {
            Typed::Editing(buf) => self.mode = Mode::Command(buf),
            Typed::Done(line) => return self.run_command(line.trim()),
            Typed::Cancelled => {}
        }
        vec![]
    }

    /// `:set key=value`, `:w [file]`, `:load file`, `:lr X`, `:probe text`,
    /// `:export [gguf|merged|peft] [quant]`, `:q`.
    pub fn run_command(&mut self, line: &str) -> Vec<Effect> {
        let (cmd, arg) = line.split_once(' ').map(|(c, a)| (c, a.trim())).unwrap_or((line, ""));
        match cmd {
            "set" => {
                let Some((k, v)) = arg.split_once('=') else {
                    self.log.push(Level::Warn, ":set needs key=value".to_string());
                    return vec![];
                };
                let (k, v) = (k.trim(), v.trim());
                // Short names as in the form (lr, batch, …) or full dotted keys.
                let key = FIELDS
                    .iter()
                    .find(|(full, label)| *full == k || *label == k || full.ends_with(&format!(".{k}")));
                match key {
                    Some((full, _)) => {
                        if let Err(e) = self.form.set(full, v) {
                            self.log.push(Level::Warn, format!("{k}: {e}"));
                        } else {
                            self.log.push(Level::Info, format!("set {full} = {v}"));
                        }
                    }
                    None => self.log.push(Level::Warn, format!("unknown field {k:?}")),
                }
            }
            "w" => {
                let path = if arg.is_empty() { self.form.path.clone() } else { Some(PathBuf::from(arg)) };
                match path {
                    Some(path) => match self.form.toml() {
                        Ok(text) => {
                            self.form.path = Some(path.clone());
                            return vec![Effect::SaveConfig { path, text }];
                        }
                        Err(e) => self.log.push(Level::Error, e),
                    },
                    None => self.log.push(Level::Warn, ":w needs a file name".to_string()),
                }
            }
            "load" | "e" => return vec![Effect::LoadConfig { path: PathBuf::from(arg), start: false }],
            "lr" => {
                let mut d = self.schedule_draft();
                d.fields[0].1 = arg.to_string();
                return self.apply_schedule(d);
            }
            "clip" => {
                let mut d = self.schedule_draft();
                if let Some(f) = d.fields.iter_mut().find(|f| f.0 == "grad clip") {
                    f.1 = arg.to_string();
                }
                return self.apply_schedule(d);
            }
            "probe" => {
                self.explorer.prompt = arg.to_string();
                return self.probe();
            }
            "export" => return self.export(arg),
            "watch" => {
                // Quotes keep a leading space: :watch " you"
                let arg = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')).unwrap_or(arg);
                if arg.is_empty() {
                    self.explorer.toggle_watch();
                } else {
                    self.explorer.watch_target(arg);
                    self.log.push(Level::Info, format!("watching {arg:?} after {:?}", self.explorer.prompt));
                }
            }
            "pin" => return self.pin_command(arg),
            "new" => self.explorer.conversation.clear(),
            "q" | "quit" => return self.normal_key(KeyEvent::from(KeyCode::Char('q'))),
            other => self.log.push(Level::Warn, format!("unknown command :{other}")),
        }
        vec![]
    }

    pub(super) fn schedule_key(&mut self, k: KeyEvent, mut d: ScheduleDraft) -> Vec<Effect> {
        match k.code {
            KeyCode::Esc => return vec![],
            KeyCode::Enter => return self.apply_schedule(d),
            KeyCode::Tab | KeyCode::Down => d.selected = (d.selected + 1) % d.fields.len(),
            KeyCode::BackTab | KeyCode::Up => d.selected = (d.selected + d.fields.len() - 1) % d.fields.len(),
            KeyCode::Backspace => {
                d.fields[d.selected].1.pop();
            }
            KeyCode::Char(c) => d.fields[d.selected].1.push(c),
            _ => {}
        }
        d.refresh();
        self.mode = Mode::Schedule(d);
        vec![]
    }

    /// Sends the edit to the running engine (a schedule edit, and a clipping edit when the norm
    /// changed), or puts it into the form for the next run.
    pub(super) fn apply_schedule(&mut self, mut d: ScheduleDraft) -> Vec<Effect> {
        let (plan, clip) = match d.parse() {
            Ok(p) => p,
            Err(e) => {
                d.error = Some(e);
                self.mode = Mode::Schedule(d);
                return vec![];
            }
        };
        if self.active() {
            let mut out = vec![Effect::Engine(Command::SetSchedule(plan))];
            if let Some(c) = clip.filter(|&c| c != self.metrics.grad_clip) {
                out.push(Effect::Engine(Command::SetGradClip(c)));
            }
            return out;
        }
        // No run: the edit goes into the form for the next one.
        let table = toml::Table::try_from(&plan).map_err(|e| e.to_string());
        match table {
            Ok(t) => {
                self.form.doc.insert("schedule".into(), toml::Value::Table(t));
                if let Some(c) = clip {
                    if let Err(e) = self.form.set("optim.grad_clip", &c.to_string()) {
                        self.log.push(Level::Warn, format!("grad clip: {e}"));
                    }
                }
                self.log.push(Level::Info, "schedule set for the next run".to_string());
            }
            Err(e) => self.log.push(Level::Error, e),
        }
        vec![]
    }
}

impl App {
    /// Exports the form's run (its newest checkpoint), or its model when the run has none, into
    /// `<run dir>/export/`: `what` is a format and an optional GGUF type (`gguf q4k`).
    pub(super) fn export(&mut self, what: &str) -> Vec<Effect> {
        use crate::export::{ExportArgs, Format};
        let mut words = what.split_whitespace();
        let format = match words.next().unwrap_or("gguf") {
            "gguf" => Format::Gguf,
            "merged" => Format::Merged,
            "peft" => Format::Peft,
            "gguf-adapter" => Format::GgufAdapter,
            other => {
                self.log
                    .push(Level::Warn, format!(":export {other}: one of gguf, merged, peft, gguf-adapter"));
                return vec![];
            }
        };
        let run = PathBuf::from(self.form.value("run.out_dir"));
        let model = PathBuf::from(self.form.value("model.path"));
        let source = if run.join("checkpoints").is_dir() { run.clone() } else { model };
        if source.as_os_str().is_empty() {
            self.log.push(Level::Warn, "export: no run or model in the form".to_string());
            return vec![];
        }
        let dir = if run.as_os_str().is_empty() { PathBuf::from("exports") } else { run.join("export") };
        let out = match format {
            Format::Gguf => dir.join("model.gguf"),
            Format::Merged => dir.join("merged"),
            Format::Peft => dir.join("adapter"),
            Format::GgufAdapter => dir.join("adapter.gguf"),
        };
        self.log.push(Level::Info, format!("exporting {} to {}", source.display(), out.display()));
        vec![Effect::Export(ExportArgs {
            source,
            format,
            quant: words.next().map(str::to_string),
            out,
            adapter: None,
            // whet's own export folder under the run: a new export replaces the last.
            force: true,
            ollama: format == Format::Gguf,
            max_shard_bytes: crate::load::hf::DEFAULT_SHARD,
        })]
    }
}

/// A key typed into a line of text.
enum Typed {
    Editing(String),
    /// Enter: the line is done.
    Done(String),
    /// Esc: the line is dropped.
    Cancelled,
}

fn typed(k: KeyEvent, mut buf: String) -> Typed {
    match k.code {
        KeyCode::Enter => return Typed::Done(buf),
        KeyCode::Esc => return Typed::Cancelled,
        KeyCode::Backspace => {
            buf.pop();
        }
        KeyCode::Char(c) => buf.push(c),
        _ => {}
    }
    Typed::Editing(buf)
}
