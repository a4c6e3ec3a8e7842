//! The Models pane: the models on disk, then the user's runs (live, finished, failed or
//! stale), and the selected one's details.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;

use super::panes::{human, window};
use super::theme::Theme;
use crate::engine::registry::{RunStatus, RunSummary};
use crate::tui::app::App;
use crate::tui::state::models::{Kind, Status};

pub fn models(app: &App, f: &mut Frame, r: Rect, t: Theme) {
    let m = &app.models;
    let [list, details] = Layout::vertical([Constraint::Min(2), Constraint::Length(6)]).areas(r);
    let mut rows = vec![];
    if m.scanning {
        rows.push(Line::styled("scanning…", t.dim()));
    }
    let offset = rows.len();
    for (i, e) in m.entries.iter().enumerate() {
        let tag = match e.kind {
            Kind::Gguf => "gguf",
            Kind::HfDir => "hf",
            Kind::HfCache => "hub",
            Kind::Scratch => "new",
        };
        let broken = matches!(e.status, Status::Broken(_));
        let style = match (i == m.selected, broken) {
            (true, _) => t.selected(),
            (false, true) => t.bad(),
            _ => Default::default(),
        };
        let mark = if broken { " ✗" } else { "" };
        rows.push(Line::styled(format!("{tag:>4} {}{mark}", e.name), style));
    }
    if !m.runs.is_empty() {
        rows.push(Line::styled("── Runs", t.dim()));
    }
    for (i, run) in m.runs.iter().enumerate() {
        let sel = m.entries.len() + i == m.selected;
        let style = match (sel, run.status) {
            (true, _) => t.selected(),
            (false, RunStatus::Running) => t.good(),
            (false, RunStatus::Stale | RunStatus::Failed) => t.bad(),
            _ => Default::default(),
        };
        rows.push(Line::styled(run_row(run), style));
    }
    // The header row sits between the lists, so a run's row is one further down.
    let header = usize::from(!m.runs.is_empty() && m.selected >= m.entries.len());
    let sel_row = offset + m.selected + header;
    let shown: Vec<Line> =
        window(rows.len(), sel_row, list.height as usize).map(|i| rows[i].clone()).collect();
    f.render_widget(Paragraph::new(shown), list);

    let mut text: Vec<Line> = match (m.selected(), m.selected_run()) {
        (Some(e), _) => match &e.status {
            Status::Ok(d) => vec![
                Line::from(format!("{} · {} params · {}", d.arch, human(d.params), d.dtype)),
                Line::from(format!(
                    "layers {} · heads {}/{} kv · vocab {}",
                    d.layers, d.heads, d.kv_heads, d.vocab
                )),
                Line::from(format!("context {} · {} on disk", d.context, human(d.size_bytes))),
                Line::from(format!("chat template: {}", if d.chat_template { "yes" } else { "no" })),
            ],
            Status::Broken(why) => vec![Line::styled(why.clone(), t.bad())],
        },
        (None, Some(run)) => run_details(run, app.attached.as_deref(), t),
        (None, None) => vec![Line::styled("no models found: run scripts/fetch-default-model.sh", t.dim())],
    };
    if !m.device.is_empty() {
        text.push(Line::styled(format!("training runs on {}", m.device), t.dim()));
    }
    let block = Block::default().borders(Borders::TOP).border_style(t.dim());
    f.render_widget(Paragraph::new(text).block(block).wrap(Wrap { trim: true }), details);
}

pub fn status_name(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Finished => "finished",
        RunStatus::Stopped => "stopped",
        RunStatus::Failed => "failed",
        RunStatus::Stale => "stale",
        RunStatus::Empty => "empty",
    }
}

fn run_row(run: &RunSummary) -> String {
    let name = run.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let step = match (run.step, run.max_steps) {
        (Some(s), Some(m)) => format!(" {s}/{m}"),
        (Some(s), None) => format!(" {s}"),
        _ => String::new(),
    };
    let loss = run.loss.map(|l| format!(" loss {l:.3}")).unwrap_or_default();
    format!(" run {:<8} {name}{step}{loss}", status_name(run.status))
}

fn run_details(run: &RunSummary, attached: Option<&std::path::Path>, t: Theme) -> Vec<Line<'static>> {
    let eta = run.eta_s.map(|e| format!(" · ETA {:.0} min", e / 60.0)).unwrap_or_default();
    let ckpt = run.checkpoint.map(|c| format!(" · checkpoint {c}")).unwrap_or_default();
    let hint = match run.status {
        RunStatus::Running if attached == Some(run.dir.as_path()) => "attached",
        RunStatus::Running => "Enter: attach",
        RunStatus::Stale | RunStatus::Stopped => match run.checkpoint {
            Some(_) => "Enter: resume from its last checkpoint",
            None => "no checkpoint yet: nothing to resume",
        },
        RunStatus::Failed => "failed: see whet.log in its directory",
        RunStatus::Finished | RunStatus::Empty => "",
    };
    vec![
        Line::from(format!("{}{ckpt}{eta}", run_row(run).trim_start())),
        Line::styled(run.dir.display().to_string(), t.dim()),
        Line::styled(hint.to_string(), t.accent()),
    ]
}
