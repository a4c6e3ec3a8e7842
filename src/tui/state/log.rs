//! The Log pane: engine logs, warnings and errors, capped.

use std::collections::VecDeque;

const CAP: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

#[derive(Debug, Default)]
pub struct LogState {
    pub lines: VecDeque<(Level, String)>,
    /// Lines scrolled up from the newest.
    pub scroll: usize,
}

impl LogState {
    pub fn push(&mut self, level: Level, text: impl Into<String>) {
        if self.lines.len() == CAP {
            self.lines.pop_front();
        }
        self.lines.push_back((level, text.into()));
    }

    pub fn scroll(&mut self, up: isize) {
        let max = self.lines.len().saturating_sub(1) as isize;
        self.scroll = (self.scroll as isize + up).clamp(0, max) as usize;
    }
}
