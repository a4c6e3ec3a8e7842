//! The Models, Hyperparameters and Log panes, and the schedule-edit form.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use ratatui::Frame;

use super::theme::Theme;
use crate::tui::app::{App, ScheduleDraft};
use crate::tui::state::form::FIELDS;
use crate::tui::state::log::Level;

pub(super) fn human(n: u64) -> String {
    match n {
        0 => "-".into(),
        n if n >= 1_000_000_000 => format!("{:.1}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Rows `first..first+h` of `n`, keeping `sel` visible.
pub(super) fn window(n: usize, sel: usize, h: usize) -> std::ops::Range<usize> {
    let h = h.max(1);
    let first = sel.saturating_sub(h - 1).min(n.saturating_sub(h));
    first..(first + h).min(n)
}

pub fn hparams(app: &App, f: &mut Frame, r: Rect, t: Theme) {
    let form = &app.form;
    let h = r.height.saturating_sub(1) as usize;
    let mut lines = vec![];
    for i in window(FIELDS.len(), form.selected, h) {
        let (key, label) = FIELDS[i];
        let sel = i == form.selected;
        let value = match (&form.editing, sel) {
            (Some(buf), true) => format!("{buf}▏"),
            _ => form.value(key),
        };
        let mut spans = vec![
            Span::styled(format!("{label:>12} "), if sel { t.selected() } else { t.dim() }),
            Span::raw(value),
        ];
        if let Some(e) = form.errors.get(key) {
            spans.push(Span::styled(format!("  ✗ {e}"), t.bad()));
        }
        lines.push(Line::from(spans));
    }
    let file = form.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(unsaved)".into());
    lines.push(Line::styled(format!("config: {file} · Enter edit · :w save"), t.dim()));
    f.render_widget(Paragraph::new(lines), r);
}

pub fn log(app: &App, f: &mut Frame, r: Rect, t: Theme) {
    let h = r.height as usize;
    let n = app.log.lines.len();
    let end = n.saturating_sub(app.log.scroll);
    let lines: Vec<Line> = app
        .log
        .lines
        .range(end.saturating_sub(h)..end)
        .map(|(lvl, s)| match lvl {
            Level::Info => Line::raw(s.clone()),
            Level::Warn => Line::styled(format!("warning: {s}"), t.accent()),
            Level::Error => Line::styled(format!("error: {s}"), t.bad()),
        })
        .collect();
    f.render_widget(Paragraph::new(lines), r);
}

pub fn schedule_form(app: &App, d: &ScheduleDraft, f: &mut Frame, area: Rect, t: Theme) {
    let w = 64.min(area.width.saturating_sub(4));
    let h = 11;
    let r = Rect { x: (area.width - w) / 2, y: (area.height.saturating_sub(h)) / 2, width: w, height: h };
    f.render_widget(Clear, r);
    let mut lines: Vec<Line> = d
        .fields
        .iter()
        .enumerate()
        .map(|(i, (label, v))| {
            let style = if i == d.selected { t.selected() } else { t.dim() };
            let cursor = if i == d.selected { "▏" } else { "" };
            Line::from(vec![Span::styled(format!("{label:>7} "), style), Span::raw(format!("{v}{cursor}"))])
        })
        .collect();
    let preview = d.preview.as_ref().map(|s| app.metrics.future_lr(Some(s), 6)).unwrap_or_default();
    let preview: Vec<String> = preview.iter().map(|(s, lr)| format!("{s:.0}:{lr:.1e}")).collect();
    lines.push(Line::styled(format!("preview {}", preview.join(" ")), t.accent()));
    match &d.error {
        Some(e) => lines.push(Line::styled(format!("✗ {e}"), t.bad())),
        None => {
            lines.push(Line::styled("Enter apply from the next step · Tab next field · Esc cancel", t.dim()))
        }
    }
    let block = Block::default().borders(Borders::ALL).title(" edit schedule ").border_style(t.accent());
    f.render_widget(Paragraph::new(lines).block(block), r);
}
