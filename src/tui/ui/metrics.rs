//! The Metrics pane: loss + eval chart, LR chart (past, future curve, edits), and figures.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Chart, Dataset, Gauge, GraphType, Paragraph};
use ratatui::Frame;

use super::theme::Theme;
use crate::tui::app::App;

fn bounds(series: &[&[(f64, f64)]]) -> ([f64; 2], [f64; 2]) {
    let mut x = [f64::MAX, f64::MIN];
    let mut y = [f64::MAX, f64::MIN];
    for s in series {
        for &(a, b) in *s {
            x = [x[0].min(a), x[1].max(a)];
            if b.is_finite() {
                y = [y[0].min(b), y[1].max(b)];
            }
        }
    }
    if x[0] > x[1] {
        x = [0.0, 1.0];
    }
    if y[0] > y[1] {
        y = [0.0, 1.0];
    }
    if x[0] == x[1] {
        x[1] += 1.0;
    }
    if y[0] == y[1] {
        y = [y[0] - 0.5 * y[0].abs().max(1e-9), y[1] + 0.5 * y[1].abs().max(1e-9)];
    }
    (x, y)
}

pub fn render(app: &App, f: &mut Frame, r: Rect, t: Theme) {
    let m = &app.metrics;
    let [charts, figures] = Layout::vertical([Constraint::Min(4), Constraint::Length(3)]).areas(r);
    let [loss_area, lr_area] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(charts);

    let tf = |v: &[(f64, f64)]| -> Vec<(f64, f64)> {
        if m.log_scale {
            v.iter().filter(|p| p.1 > 0.0).map(|&(x, y)| (x, y.ln())).collect()
        } else {
            v.to_vec()
        }
    };
    let (loss, ema, eval) = (tf(&m.loss.points), tf(&m.loss_ema.points), tf(&m.eval.points));
    let (xb, yb) = bounds(&[&loss, &eval]);
    let ds = vec![
        Dataset::default()
            .name("loss")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(t.dim())
            .data(&loss),
        Dataset::default()
            .name("smoothed")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(t.series(0))
            .data(&ema),
        Dataset::default()
            .name("eval")
            .marker(Marker::Dot)
            .graph_type(GraphType::Scatter)
            .style(t.series(1))
            .data(&eval),
    ];
    let title = if m.log_scale { "loss (ln)" } else { "loss" };
    let chart = Chart::new(ds)
        .x_axis(Axis::default().bounds(xb).labels([format!("{:.0}", xb[0]), format!("{:.0}", xb[1])]))
        .y_axis(
            Axis::default()
                .title(title)
                .bounds(yb)
                .labels([format!("{:.2}", yb[0]), format!("{:.2}", yb[1])]),
        );
    f.render_widget(chart, loss_area);

    // While the schedule form is open, the plan shows the draft: the preview of the edit.
    let draft = match &app.mode {
        crate::tui::app::Mode::Schedule(d) => d.preview.as_ref(),
        _ => None,
    };
    let future = m.future_lr(draft, 200);
    let marks: Vec<(f64, f64)> =
        m.edits.iter().filter_map(|&s| m.lr.points.iter().find(|p| p.0 > s as f64).copied()).collect();
    let total = [0.0, (m.total_steps.max(1)) as f64];
    let (_, lb) = bounds(&[&m.lr.points, &future]);
    let lr_ds = vec![
        Dataset::default()
            .name("lr")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(t.series(2))
            .data(&m.lr.points),
        Dataset::default()
            .name("plan")
            .marker(Marker::Dot)
            .graph_type(GraphType::Line)
            .style(t.dim())
            .data(&future),
        Dataset::default()
            .name("edit")
            .marker(Marker::Block)
            .graph_type(GraphType::Scatter)
            .style(t.accent())
            .data(&marks),
    ];
    let lr_chart = Chart::new(lr_ds)
        .x_axis(Axis::default().bounds(total).labels(["0".to_string(), format!("{}", m.total_steps)]))
        .y_axis(
            Axis::default()
                .title("lr")
                .bounds([0.0, lb[1].max(1e-12)])
                .labels(["0".to_string(), format!("{:.1e}", lb[1])]),
        );
    f.render_widget(lr_chart, lr_area);

    let [gauge, text] = Layout::vertical([Constraint::Length(1), Constraint::Length(2)]).areas(figures);
    let (step, ratio) = match m.last {
        Some(s) if m.total_steps > 0 => (s.step, (s.step as f64 / m.total_steps as f64).min(1.0)),
        _ => (0, 0.0),
    };
    let eta =
        m.eta_s().map(|s| format!("ETA {}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)).unwrap_or_default();
    f.render_widget(
        Gauge::default()
            .gauge_style(t.series(0))
            .ratio(ratio)
            .label(format!("{step}/{} {eta}", m.total_steps)),
        gauge,
    );
    let mem = m
        .memory_bytes
        .map(|b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "-".into());
    let line1 = match m.last {
        Some(s) => format!(
            "loss {:.4}  lr {:.2e}  grad-norm {:.3}  tok/s {:.0}  {}  skipped {}",
            s.loss,
            s.lr,
            s.grad_norm,
            s.tokens_per_s,
            s.flops_label(),
            s.skipped
        ),
        None => "no steps yet: s starts the form's config, L the default LoRA".into(),
    };
    let eval = m.eval.last().map(|(s, l)| format!("eval {l:.4} @ {s:.0}  ")).unwrap_or_default();
    let line2 = format!(
        "{eval}mem {mem}  smoothing {:.2}  {}",
        m.smoothing,
        if m.log_scale { "log" } else { "linear" }
    );
    f.render_widget(Paragraph::new(vec![Line::raw(line1), Line::styled(line2, t.dim())]), text);
}
