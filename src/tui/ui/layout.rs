//! Where each pane goes; shared by `render` and by mouse hit-testing in `update`.

use ratatui::layout::{Constraint, Layout, Rect};

use crate::tui::pane::Pane;

pub const MIN_W: u16 = 60;
pub const MIN_H: u16 = 16;

/// The visible panes and their rects (only the focused one when zoomed), under a one-line
/// status bar.
pub fn panes(w: u16, h: u16, focus: Pane, zoomed: bool) -> Vec<(Pane, Rect)> {
    let body = Rect { x: 0, y: 1, width: w, height: h.saturating_sub(2) };
    if zoomed {
        return vec![(focus, body)];
    }
    let log_h = if h >= 36 { 7 } else { 5 };
    let [main, log] = Layout::vertical([Constraint::Min(0), Constraint::Length(log_h)]).areas(body);
    let left_w = if w >= 110 { 40 } else { w / 3 };
    let [left, right] = Layout::horizontal([Constraint::Length(left_w), Constraint::Min(0)]).areas(main);
    let [models, hparams] =
        Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(left);
    let [metrics, explorer] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(right);
    Pane::ALL.into_iter().zip([models, hparams, metrics, explorer, log]).collect()
}
