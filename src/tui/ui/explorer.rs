//! The Explorer pane: the prompt, the top-k next tokens as bars, the temperature/top-p view
//! beside the raw one, and a pinned (or adapter-off) distribution for comparison.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph};
use ratatui::Frame;

use super::theme::Theme;
use crate::logits::TopToken;
use crate::tui::app::App;

/// Text of a token, printable: quoted with control characters escaped, or, for a partial
/// UTF-8 sequence, the raw piece's bytes in hex.
fn show(text: &str, piece: &str) -> String {
    if text.contains('\u{FFFD}') {
        return format!("<{}>", piece.bytes().map(|b| format!("{b:02x}")).collect::<String>());
    }
    format!("{text:?}")
}

fn bar(p: f64, width: usize) -> String {
    let cells = p * width as f64;
    let full = cells.floor() as usize;
    let part = ((cells - full as f64) * 8.0).round() as usize;
    let eighths = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    format!("{}{}", "█".repeat(full.min(width)), if full < width { eighths[part.min(7)] } else { "" })
}

/// The top tokens as rows: probability, bar, then (when given) the probability the sampler
/// draws it with, and the change from the compared distribution (`—` when the token is not
/// in it).
pub(super) fn rows(
    top: &[TopToken],
    sampled: &[f64],
    compared: Option<&[TopToken]>,
    sel: Option<usize>,
    w: usize,
    t: Theme,
) -> Vec<Line<'static>> {
    let bw = w.saturating_sub(40).clamp(4, 30);
    top.iter()
        .enumerate()
        .map(|(i, tok)| {
            let style = if sel == Some(i) { t.selected() } else { Default::default() };
            let mut spans = vec![
                Span::styled(format!("{:>6.2}% ", tok.prob * 100.0), style),
                Span::styled(format!("{:<w$}", bar(tok.prob, bw), w = bw + 1), t.series(0)),
            ];
            if let Some(s) = sampled.get(i) {
                spans.push(Span::styled(format!("{:>5.1}% ", s * 100.0), t.accent()));
            }
            if let Some(c) = compared {
                let delta = match c.iter().find(|x| x.id == tok.id) {
                    Some(x) => format!("{:>+6.1} ", (tok.prob - x.prob) * 100.0),
                    None => format!("{:>6} ", "—"),
                };
                let style = if delta.trim_start().starts_with('-') { t.bad() } else { t.good() };
                spans.push(Span::styled(delta, style));
            }
            spans.push(Span::styled(format!("{:>6} ", tok.id), t.dim()));
            spans.push(Span::raw(show(&tok.text, &tok.piece)));
            Line::from(spans)
        })
        .collect()
}

pub fn render(app: &App, f: &mut Frame, r: Rect, t: Theme) {
    let e = &app.explorer;
    let watch_h = if e.watch.is_empty() { 0 } else { (r.height / 3).clamp(4, 8) };
    let [head, body, watch, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(watch_h),
        Constraint::Length(1),
    ])
    .areas(r);
    if watch_h > 0 {
        watch_chart(app, f, watch, t);
    }
    let cursor = if e.editing { "▏" } else { "" };
    let c = &e.conversation;
    let (label, mode) = match (c.on, c.greedy) {
        (true, true) => ("you: ", " [chat mode · greedy]"),
        (true, false) => ("you: ", " [chat mode · sampled]"),
        (false, _) if e.chat => ("prompt: ", " [template]"),
        _ => ("prompt: ", ""),
    };
    let pending = if e.pending.is_some() || c.busy() { " …" } else { "" };
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(label, t.dim()),
            Span::raw(format!("{}{cursor}", e.prompt)),
            Span::styled(format!("{mode}{pending}"), t.accent()),
        ])),
        head,
    );
    if c.on {
        super::chat::render(app, f, body, t);
        let knobs =
            format!("T {:.1} · top-p {:.2} · j/k token · m probe mode · :new clears", e.temperature, e.top_p);
        f.render_widget(Paragraph::new(Line::styled(knobs, t.dim())), foot);
        return;
    }
    let (live, pinned) = match &e.pinned {
        Some(_) => {
            let [a, b] =
                Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(body);
            (a, Some(b))
        }
        None => (body, None),
    };
    match (&e.result, &e.error) {
        (_, Some(err)) => f.render_widget(Paragraph::new(Line::styled(err.clone(), t.bad())), live),
        (Some((step, res)), None) => {
            let mut lines = vec![Line::styled(format!("step {step}"), t.dim())];
            let compared = e.compare.and(e.pinned.as_ref()).map(|p| &p.1.top[..]);
            if !res.sampled.is_empty() || compared.is_some() {
                let mut head = "     p              ".to_string();
                if !res.sampled.is_empty() {
                    head.push_str(" drawn");
                }
                if compared.is_some() {
                    head.push_str("  Δ pp");
                }
                lines.push(Line::styled(head, t.dim()));
            }
            lines.extend(rows(&res.top, &res.sampled, compared, Some(e.selected), live.width as usize, t));
            f.render_widget(Paragraph::new(lines), live);
        }
        (None, None) => {
            f.render_widget(Paragraph::new(Line::styled("i edit prompt · P probe", t.dim())), live)
        }
    }
    if let (Some((label, res)), Some(area)) = (&e.pinned, pinned) {
        let mut lines = vec![Line::styled(format!("pinned: {label}"), t.accent())];
        lines.extend(rows(&res.top, &res.sampled, None, None, area.width as usize, t));
        f.render_widget(Paragraph::new(lines), area);
    }
    let stats = match &e.result {
        Some((_, r)) => {
            format!("entropy {:.3} nats · top-{} mass {:.3}", r.entropy, r.top.len(), r.cumulative)
        }
        None => String::new(),
    };
    let knobs = format!(" · T {:.1} · top-p {:.2}", e.temperature, e.top_p);
    f.render_widget(Paragraph::new(Line::styled(format!("{stats}{knobs}"), t.dim())), foot);
}

/// Top-1 probability of each watched prompt over training steps, under a legend line.
fn watch_chart(app: &App, f: &mut Frame, r: Rect, t: Theme) {
    let e = &app.explorer;
    let [legend, plot] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(r);
    let spans: Vec<Span> = e
        .watch
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let p = w.series.last().map(|p| format!(" {:.2}", p.1)).unwrap_or_default();
            Span::styled(format!("{:?}→{:?}{p}  ", w.prompt, w.top1), t.series(i + 1))
        })
        .collect();
    f.render_widget(Paragraph::new(Line::from(spans)), legend);
    let data: Vec<Dataset> = e
        .watch
        .iter()
        .enumerate()
        .map(|(i, w)| {
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(t.series(i + 1))
                .data(&w.series.points)
        })
        .collect();
    let x_max = e.watch.iter().filter_map(|w| w.series.last()).map(|p| p.0).fold(1.0f64, f64::max);
    let chart = Chart::new(data)
        .x_axis(Axis::default().bounds([0.0, x_max]).labels(["0".to_string(), format!("{x_max:.0}")]))
        .y_axis(Axis::default().bounds([0.0, 1.0]).labels(["0", "1"]));
    f.render_widget(chart, plot);
}
