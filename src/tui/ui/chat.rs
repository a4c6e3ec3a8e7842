//! The explorer in chat mode: the conversation, the reply as it streams (the selected token
//! highlighted), and that token's top-k alternatives at its position.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::explorer::rows;
use super::theme::Theme;
use crate::tui::app::App;

pub fn render(app: &App, f: &mut Frame, r: Rect, t: Theme) {
    let c = &app.explorer.conversation;
    let alt_h =
        if c.reply.as_ref().is_some_and(|r| !r.tokens.is_empty()) { (r.height / 2).min(12) } else { 0 };
    let [talk, alts] = Layout::vertical([Constraint::Min(1), Constraint::Length(alt_h)]).areas(r);
    let mut lines: Vec<Line> = vec![];
    // The finished turns; the reply being inspected is drawn token by token below them.
    let shown = match &c.reply {
        Some(rep) if rep.done && rep.error.is_none() => c.messages.len().saturating_sub(1),
        _ => c.messages.len(),
    };
    for m in &c.messages[..shown] {
        let who = if m.role == "user" { "you: " } else { "model: " };
        lines.push(Line::from(vec![Span::styled(who, t.accent()), Span::raw(m.content.clone())]));
    }
    if let Some(rep) = &c.reply {
        let mut spans = vec![Span::styled("model: ", t.accent())];
        for (i, (tok, _)) in rep.tokens.iter().enumerate() {
            let style = if i == c.selected { t.selected() } else { t.series(i % 2) };
            spans.push(Span::styled(tok.text.replace('\n', "↵"), style));
        }
        if !rep.done {
            spans.push(Span::styled(" …", t.dim()));
        }
        lines.push(Line::from(spans));
        if let Some(e) = &rep.error {
            lines.push(Line::styled(format!("chat failed: {e}"), t.bad()));
        } else if rep.done {
            lines.push(Line::styled(format!("written at step {}", rep.step), t.dim()));
        }
    }
    if lines.is_empty() {
        lines.push(Line::styled(
            "i: write to the model, Enter: send (it answers between training steps)",
            t.dim(),
        ));
    }
    // Keep the end of the conversation in view.
    let inner_w = talk.width.max(1) as usize;
    let rows_needed: usize = lines.iter().map(|l| l.width().div_ceil(inner_w).max(1)).sum();
    let scroll = rows_needed.saturating_sub(talk.height as usize) as u16;
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).scroll((scroll, 0)), talk);
    if alt_h == 0 {
        return;
    }
    let Some((tok, alternatives)) = c.reply.as_ref().and_then(|r| r.tokens.get(c.selected)) else { return };
    let chosen = alternatives.iter().position(|a| a.id == tok.id);
    let mut lines = vec![Line::styled(
        format!(
            "token {} {:?}: drawn at p = {:.3}; the alternatives there:",
            c.selected + 1,
            tok.text,
            tok.prob
        ),
        t.dim(),
    )];
    lines.extend(rows(alternatives, &[], None, chosen, alts.width as usize, t));
    f.render_widget(Paragraph::new(lines), alts);
}
