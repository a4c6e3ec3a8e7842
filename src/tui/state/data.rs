//! The Data view: the form's training set as the engine will see it (`data::preview`), one
//! sample at a time. The preview is made off the UI thread; each request has a number, and an
//! answer to an older one is dropped.

use crate::data::preview::Preview;

/// Samples the view holds with their pieces; the stats count them all.
pub const KEEP: usize = 5000;

#[derive(Debug, Default)]
pub struct DataView {
    pub open: bool,
    /// A preview is being made for request `asked`.
    pub loading: bool,
    pub asked: u64,
    pub preview: Option<Result<Box<Preview>, String>>,
    pub selected: usize,
    /// Lines scrolled down inside a sample taller than the view.
    pub scroll: u16,
    /// The search being typed after `/`.
    pub search: Option<String>,
    /// The last search, for `n`.
    pub query: String,
    /// "no sample contains …".
    pub note: Option<String>,
}

impl DataView {
    /// A new request: its number, to match the answer.
    pub fn ask(&mut self) -> u64 {
        self.asked += 1;
        self.loading = true;
        self.asked
    }

    pub fn answer(&mut self, id: u64, result: Result<Box<Preview>, String>) {
        if id != self.asked {
            return;
        }
        self.loading = false;
        let n = result.as_ref().map_or(0, |p| p.samples.len());
        self.selected = self.selected.min(n.saturating_sub(1));
        self.preview = Some(result);
    }

    fn samples(&self) -> usize {
        match &self.preview {
            Some(Ok(p)) => p.samples.len(),
            _ => 0,
        }
    }

    pub fn move_by(&mut self, d: isize) {
        let n = self.samples();
        if n > 0 {
            self.selected = (self.selected as isize + d).clamp(0, n as isize - 1) as usize;
            self.scroll = 0;
            self.note = None;
        }
    }

    pub fn scroll_by(&mut self, d: i32) {
        self.scroll = (self.scroll as i32 + d).clamp(0, u16::MAX as i32) as u16;
    }

    /// Selects the next sample after the selected one (wrapping) whose text or source
    /// contains the query, ignoring case.
    pub fn find_next(&mut self) {
        let Some(Ok(p)) = &self.preview else { return };
        let q = self.query.to_lowercase();
        if q.is_empty() || p.samples.is_empty() {
            return;
        }
        let n = p.samples.len();
        let hit = (1..=n).map(|k| (self.selected + k) % n).find(|&i| {
            let s = &p.samples[i];
            s.source.to_lowercase().contains(&q)
                || s.pieces.iter().map(|p| p.text.as_str()).collect::<String>().to_lowercase().contains(&q)
        });
        match hit {
            Some(i) => {
                self.selected = i;
                self.scroll = 0;
                self.note = None;
            }
            None => self.note = Some(format!("no sample contains {:?}", self.query)),
        }
    }
}
