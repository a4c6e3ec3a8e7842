//! Drawing: a pure function of `&App`. No I/O, no tensor math, no state changes.

pub mod chat;
pub mod data;
pub mod explorer;
pub mod layout;
pub mod metrics;
pub mod models;
pub mod panes;
pub mod theme;

use ratatui::layout::Rect;
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, Mode, RunState};
use super::keymap;
use super::pane::Pane;
use theme::Theme;

pub fn render(app: &App, f: &mut Frame) {
    let area = f.area();
    let t = Theme { color: app.color };
    if area.width < layout::MIN_W || area.height < layout::MIN_H {
        let msg = format!(
            "whet needs at least {}×{} (this terminal is {}×{}). Enlarge it, or press q to quit.",
            layout::MIN_W,
            layout::MIN_H,
            area.width,
            area.height
        );
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    status_bar(app, f, Rect { height: 1, ..area }, t);
    let mut data_area: Option<Rect> = None;
    for (pane, r) in layout::panes(area.width, area.height, app.focus, app.zoomed) {
        // The open Data view takes the right column (Metrics and Explorer).
        if app.data.open && matches!(pane, Pane::Metrics | Pane::Explorer) {
            data_area = Some(data_area.map_or(r, |a| a.union(r)));
            continue;
        }
        let title = format!(" {} {} ", pane.number(), pane.title());
        let block =
            Block::default().borders(Borders::ALL).border_style(t.border(pane == app.focus)).title(title);
        let inner = block.inner(r);
        f.render_widget(block, r);
        match pane {
            Pane::Models => models::models(app, f, inner, t),
            Pane::Hparams => panes::hparams(app, f, inner, t),
            Pane::Metrics => metrics::render(app, f, inner, t),
            Pane::Explorer => explorer::render(app, f, inner, t),
            Pane::Log => panes::log(app, f, inner, t),
        }
    }
    if let Some(r) = data_area {
        data::render(app, f, r, matches!(app.focus, Pane::Metrics | Pane::Explorer), t);
    }
    bottom_line(app, f, Rect { y: area.height - 1, height: 1, ..area }, t);
    match &app.mode {
        Mode::Help => help(f, area, t),
        Mode::Schedule(d) => panes::schedule_form(app, d, f, area, t),
        _ => {}
    }
}

fn status_bar(app: &App, f: &mut Frame, r: Rect, t: Theme) {
    let state = match app.run {
        RunState::Idle => "idle",
        RunState::Loading => "loading",
        RunState::Running => "training",
        RunState::Paused => "paused",
        RunState::Stopping => "stopping",
        RunState::Finished => "finished",
        RunState::Failed => "failed",
    };
    let step = app.metrics.last.map(|s| s.step).unwrap_or(app.metrics.start_step);
    let style = match app.run {
        RunState::Failed => t.bad(),
        RunState::Running => t.good(),
        _ => t.accent(),
    };
    let line = Line::from(vec![
        Span::styled(" whet ", style.add_modifier(Modifier::BOLD)),
        Span::styled(format!("[{state}]"), style),
        Span::raw(format!(" step {step}/{} ", app.metrics.total_steps)),
        Span::styled("· ? help · s start · L default LoRA · Space pause · r schedule · q quit", t.dim()),
    ]);
    f.render_widget(Paragraph::new(line), r);
}

fn bottom_line(app: &App, f: &mut Frame, r: Rect, t: Theme) {
    let text = match &app.mode {
        Mode::Command(buf) => Line::from(format!(":{buf}▏")),
        Mode::ConfirmQuit => Line::styled(
            "Training runs in its own process. d = detach (it goes on), s = stop, save and quit, Esc = cancel",
            t.accent(),
        ),
        Mode::ConfirmStop => {
            Line::styled("Stop the run: y = save first, n = don't save, Esc = cancel", t.accent())
        }
        _ => match app.log.lines.back() {
            Some((_, l)) => Line::styled(l.clone(), t.dim()),
            None => Line::raw(""),
        },
    };
    f.render_widget(Paragraph::new(text), r);
}

fn help(f: &mut Frame, area: Rect, t: Theme) {
    let lines: Vec<Line> = keymap::help_lines()
        .into_iter()
        .map(|(k, scope, h)| {
            let scope = if scope.is_empty() { String::new() } else { format!("[{scope}] ") };
            Line::from(vec![Span::styled(format!("{k:>8}  "), t.accent()), Span::raw(format!("{scope}{h}"))])
        })
        .collect();
    let h = (lines.len() as u16 + 2).min(area.height.saturating_sub(2));
    let w = 78.min(area.width.saturating_sub(2));
    let r = Rect { x: (area.width - w) / 2, y: (area.height - h) / 2, width: w, height: h };
    f.render_widget(Clear, r);
    let block =
        Block::default().borders(Borders::ALL).title(" keys (any key closes) ").border_style(t.accent());
    f.render_widget(Paragraph::new(lines).block(block), r);
}
