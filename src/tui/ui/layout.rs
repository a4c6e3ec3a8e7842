//! Where each pane goes; shared by `render` and by mouse hit-testing in `update`.

use ratatui::layout::{Constraint, Layout, Rect};

pub const MIN_W: u16 = 60;
pub const MIN_H: u16 = 16;

/// Rects of the five panes (None when hidden by a zoom), under a one-line status bar.
pub fn panes(w: u16, h: u16, focus: usize, zoomed: bool) -> [Option<Rect>; 5] {
    let body = Rect { x: 0, y: 1, width: w, height: h.saturating_sub(2) };
    if zoomed {
        let mut out = [None; 5];
        out[focus] = Some(body);
        return out;
    }
    let log_h = if h >= 36 { 7 } else { 5 };
    let [main, log] = Layout::vertical([Constraint::Min(0), Constraint::Length(log_h)]).areas(body);
    let left_w = if w >= 110 { 40 } else { w / 3 };
    let [left, right] = Layout::horizontal([Constraint::Length(left_w), Constraint::Min(0)]).areas(main);
    let [models, hparams] =
        Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(left);
    let [metrics, explorer] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(right);
    [Some(models), Some(hparams), Some(metrics), Some(explorer), Some(log)]
}
