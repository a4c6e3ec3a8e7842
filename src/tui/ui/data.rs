//! The Data view: the stats, then one sample with each token marked by whether it carries
//! loss. In colour, neighbouring tokens alternate shades; without colour, `│` separates them
//! and `«…»` encloses the loss (the same text `whet data` prints).

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;

use super::theme::Theme;
use crate::data::preview::{Bin, Mark, Preview, Seg};
use crate::data_cli;
use crate::tui::app::App;

pub fn render(app: &App, f: &mut Frame, r: Rect, focused: bool, t: Theme) {
    let d = &app.data;
    let title = match (&d.preview, d.loading) {
        (_, true) => " Data (reading…) ".to_string(),
        (Some(Ok(p)), _) if p.total > p.samples.len() => {
            format!(" Data · sample {}/{} (first {} shown) ", d.selected + 1, p.total, p.samples.len())
        }
        (Some(Ok(p)), _) => format!(" Data · sample {}/{} ", d.selected + 1, p.samples.len()),
        _ => " Data ".to_string(),
    };
    let block = Block::default().borders(Borders::ALL).border_style(t.border(focused)).title(title);
    let inner = block.inner(r);
    f.render_widget(block, r);
    let mut lines: Vec<Line> = vec![];
    match &d.preview {
        None => lines.push(Line::styled("reading the training data…", t.dim())),
        // A config, template or file error: shown here, the workbench goes on.
        Some(Err(e)) => lines.push(Line::styled(format!("cannot preview the data: {e}"), t.bad())),
        // Short views keep the room for the sample: no first-line notes, no legend.
        Some(Ok(p)) => body(app, p, &mut lines, inner.height >= 24, t),
    }
    let footer = match &d.search {
        Some(q) => Line::from(format!("/{q}▏")),
        None => match &d.note {
            Some(n) => Line::styled(n.clone(), t.accent()),
            None => Line::styled("j/k sample · / search · n next · J/K scroll · D/Esc close", t.dim()),
        },
    };
    let h = inner.height.saturating_sub(1);
    let text = Paragraph::new(lines).wrap(Wrap { trim: false }).scroll((d.scroll, 0));
    f.render_widget(text, Rect { height: h, ..inner });
    f.render_widget(Paragraph::new(footer), Rect { y: inner.y + h, height: 1, ..inner });
}

fn body(app: &App, p: &Preview, lines: &mut Vec<Line<'static>>, roomy: bool, t: Theme) {
    let st = &p.stats;
    let mut stats = data_cli::stats_lines(p).into_iter();
    if let Some(first) = stats.next() {
        lines.push(Line::styled(first, t.accent()));
    }
    for l in stats.by_ref().take_while(|l| !l.starts_with("lengths")) {
        if !roomy && l.starts_with("  first") {
            continue;
        }
        let style = if l.starts_with("a run stops") { t.bad() } else { Style::default() };
        lines.push(Line::styled(l, style));
    }
    lines.push(histogram(st.lengths.as_slice(), st.seq_len, t));
    let Some(s) = p.samples.get(app.data.selected) else {
        lines.push(Line::styled("no samples", t.dim()));
        return;
    };
    lines.push(Line::styled(
        data_cli::sample_header(app.data.selected, s),
        t.accent().add_modifier(Modifier::BOLD),
    ));
    if t.color {
        lines.extend(roomy.then(|| {
            Line::from(vec![
                Span::styled("carries loss", loss(false)),
                Span::raw(" · "),
                Span::styled("context", context(false)),
                Span::raw(" · "),
                Span::styled("not trained on", unused()),
                Span::raw(" · ✂ window cut"),
            ])
        }));
        for segs in s.lines() {
            lines.push(Line::from(segs.iter().flat_map(span).collect::<Vec<_>>()));
        }
    } else {
        let legend = "«…» carries loss · │ between tokens · ✂ window cut · ~…~ not trained on";
        lines.extend(roomy.then(|| Line::raw(legend)));
        lines.extend(data_cli::plain_lines(s).into_iter().map(Line::raw));
    }
}

/// Sample lengths as one line of bars: 8 bins up to seq_len, then the ones over it.
fn histogram(bins: &[Bin], seq: usize, t: Theme) -> Line<'static> {
    if bins.is_empty() {
        return Line::raw("");
    }
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let most = bins.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    let bar = |n: usize| if n == 0 { ' ' } else { BARS[(n * 7).div_ceil(most).min(7)] };
    let inside: String = bins[..bins.len() - 1].iter().map(|b| bar(b.count)).collect();
    let over = bins.last().map_or(0, |b| b.count);
    let mut v = vec![Span::raw(format!("lengths 1│{inside}│{seq} "))];
    let over_style = if over > 0 { t.bad() } else { t.dim() };
    v.push(Span::styled(format!("over seq_len: {over}"), over_style));
    Line::from(v)
}

fn loss(odd: bool) -> Style {
    Style::default().fg(if odd { Color::LightGreen } else { Color::Green })
}

fn context(odd: bool) -> Style {
    Style::default().fg(if odd { Color::Gray } else { Color::DarkGray })
}

fn unused() -> Style {
    Style::default().fg(Color::DarkGray).add_modifier(Modifier::CROSSED_OUT)
}

fn span(g: &Seg) -> Vec<Span<'static>> {
    let mut style = match g.mark {
        Mark::Loss => loss(g.odd),
        Mark::Context => context(g.odd),
        Mark::Unused => unused(),
    };
    if g.special {
        style = style.add_modifier(Modifier::BOLD);
    }
    let mut v = vec![];
    if g.cut {
        v.push(Span::styled("✂", Style::default().fg(Color::Red)));
    }
    v.push(Span::styled(g.text.clone(), style));
    v
}
