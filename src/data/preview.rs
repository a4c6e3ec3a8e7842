//! What a run trains on, sample by sample: the loader that makes the run's windows
//! (`dataset::load`), asked to say where each sample went. `whet data` prints it and the
//! workbench's Data view draws it; neither renders the data a second way.

use std::collections::HashSet;

use anyhow::Result;
use serde::Serialize;

use super::config::{DataConfig, DataFormat};
use super::{dataset, DataReport, Window};
use crate::load::TextSide;

/// What became of a sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "fate", content = "why")]
pub enum Fate {
    Kept,
    /// Cut at `seq_len` (`too_long = "truncate"`); the tail is not trained on.
    Truncated,
    /// Longer than `seq_len` and dropped (`too_long = "drop"`).
    TooLong,
    /// No token carries loss (after truncation, if any): dropped.
    Empty,
    /// Not a sample: bad JSON, a missing field, a template error, invalid UTF-8.
    Invalid(String),
}

/// A token as the preview shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Piece {
    pub text: String,
    /// A special token (`<|im_start|>`), shown by name.
    pub special: bool,
}

/// One sample (a JSONL line; for text and token files, a window) and where it went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// `file:line`, or `window N`.
    pub source: String,
    /// The sample's tokens as encoded, before any truncation.
    pub ids: Vec<u32>,
    /// Per token: whether it is a label (carries loss), as the window's mask says.
    pub labels: Vec<bool>,
    pub fate: Fate,
    /// The window its first token is in, and the offset there; `None` when not trained on.
    pub window: Option<(usize, usize)>,
    /// Token indices where a window ends inside the sample (packing) or it is cut (truncation).
    pub cuts: Vec<usize>,
    /// In the eval split (`eval_fraction`), not trained on.
    pub eval: bool,
    /// A fault that stops a run unless `skip_invalid` is set.
    pub fatal: bool,
    /// Filled by `preview` for the samples it keeps; empty from the loader.
    pub pieces: Vec<Piece>,
}

impl Sample {
    pub(super) fn traced(
        source: String,
        ids: Vec<u32>,
        mask: Vec<f32>,
        fate: Fate,
        window: Option<(usize, usize)>,
        cuts: Vec<usize>,
    ) -> Self {
        let labels = mask.iter().map(|&m| m > 0.5).collect();
        Self { source, ids, labels, fate, window, cuts, eval: false, fatal: false, pieces: vec![] }
    }

    pub(super) fn failed(source: String, fate: Fate, fatal: bool) -> Self {
        Self { fatal, ..Self::traced(source, vec![], vec![], fate, None, vec![]) }
    }

    pub fn trained(&self) -> bool {
        matches!(self.fate, Fate::Kept | Fate::Truncated)
    }
}

/// How many samples met a fate, and the first of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Count {
    pub n: usize,
    pub first: Option<String>,
}

impl Count {
    fn add(&mut self, source: &str) {
        self.n += 1;
        self.first.get_or_insert_with(|| source.to_string());
    }
}

/// Samples of `from..=to` tokens (`to` None: longer than `seq_len`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Bin {
    pub from: usize,
    pub to: Option<usize>,
    pub count: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub seq_len: usize,
    /// JSONL: the lines read; text: the documents; token files: 0.
    pub samples: usize,
    pub windows: usize,
    pub eval_windows: usize,
    /// Tokens in the windows, padding excluded.
    pub tokens: usize,
    /// Of the windows' positions, those whose token is a label (position 0 of a window never is).
    pub label_tokens: usize,
    pub padding: usize,
    pub truncated: Count,
    pub too_long: Count,
    pub empty: Count,
    pub invalid: Count,
    /// The first fault that stops a run (the run refuses the data; the preview goes on).
    pub fatal: Option<String>,
    /// Sample lengths in tokens: 8 bins up to `seq_len`, then one over it.
    pub lengths: Vec<Bin>,
}

impl Stats {
    /// The share of tokens that carry loss.
    pub fn label_share(&self) -> f64 {
        self.label_tokens as f64 / self.tokens.max(1) as f64
    }
}

/// The preview of a training file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    pub format: DataFormat,
    pub stats: Stats,
    /// The first `keep` samples, with their pieces.
    pub samples: Vec<Sample>,
    /// Samples in all; more than `samples.len()` when the preview kept only the first ones.
    pub total: usize,
}

/// The preview of `data.train`, from the loader the run uses; the first `keep` samples carry
/// their pieces.
pub fn preview(data: &DataConfig, text: Option<&TextSide>, keep: usize) -> Result<Preview> {
    let mut report = DataReport::default();
    let mut samples = Vec::new();
    let windows = dataset::load_traced(&data.train, data, text, &mut report, Some(&mut samples))?;
    let eval_from = match &data.eval {
        Some(_) => windows.len(),
        None => windows.len() - dataset::eval_count(windows.len(), data.eval_fraction),
    };
    if matches!(data.format, DataFormat::Text | DataFormat::Tokens) {
        // Text and token files have no samples the windows keep apart: show the windows.
        samples = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Sample::traced(
                    format!("window {i}"),
                    w.ids.clone(),
                    w.mask.clone(),
                    Fate::Kept,
                    Some((i, 0)),
                    vec![],
                )
            })
            .collect();
    }
    for s in &mut samples {
        s.eval = s.window.is_some_and(|(w, _)| w >= eval_from);
    }
    let stats = stats(data, &report, &samples, &windows, eval_from);
    let total = samples.len();
    samples.truncate(keep);
    if let Some(t) = text {
        let specials: HashSet<u32> = t
            .tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, a)| a.special)
            .map(|(id, _)| id)
            .collect();
        for s in &mut samples {
            s.pieces = s.ids.iter().map(|&id| piece(t, &specials, id)).collect();
        }
    }
    Ok(Preview { format: data.format, stats, samples, total })
}

fn piece(t: &TextSide, specials: &HashSet<u32>, id: u32) -> Piece {
    if specials.contains(&id) {
        let text = t.tokenizer.id_to_token(id).unwrap_or_else(|| format!("<{id}>"));
        return Piece { text, special: true };
    }
    let text = t.tokenizer.decode(&[id], false).unwrap_or_else(|_| format!("<{id}>"));
    Piece { text, special: false }
}

fn stats(
    data: &DataConfig,
    report: &DataReport,
    samples: &[Sample],
    windows: &[Window],
    eval_from: usize,
) -> Stats {
    let seq = data.seq_len;
    let jsonl = !matches!(data.format, DataFormat::Text | DataFormat::Tokens);
    let mut st = Stats {
        seq_len: seq,
        // JSONL: the lines read; text: the documents; tokens: none.
        samples: if jsonl { samples.len() } else { report.samples },
        windows: windows.len(),
        eval_windows: windows.len() - eval_from,
        label_tokens: windows.iter().map(|w| w.mask.iter().skip(1).filter(|&&m| m > 0.5).count()).sum(),
        ..Default::default()
    };
    st.tokens = if jsonl {
        samples.iter().filter(|s| s.trained()).map(|s| s.ids.len().min(seq)).sum()
    } else {
        windows.len() * seq
    };
    st.padding = (windows.len() * seq).saturating_sub(st.tokens);
    let mut bins = [0usize; 9];
    let edge = |i: usize| i * seq / 8;
    for s in samples {
        match &s.fate {
            Fate::Kept => {}
            Fate::Truncated => st.truncated.add(&s.source),
            Fate::TooLong => st.too_long.add(&s.source),
            Fate::Empty => st.empty.add(&s.source),
            Fate::Invalid(why) => {
                st.invalid.add(&s.source);
                if s.fatal && st.fatal.is_none() {
                    st.fatal = Some(format!("{}: {why}", s.source));
                }
            }
        }
        if jsonl && !s.ids.is_empty() {
            let n = s.ids.len();
            bins[(0..8).find(|&i| n <= edge(i + 1)).unwrap_or(8)] += 1;
        }
    }
    if jsonl {
        st.lengths =
            (0..8).map(|i| Bin { from: edge(i) + 1, to: Some(edge(i + 1)), count: bins[i] }).collect();
        st.lengths.push(Bin { from: seq + 1, to: None, count: bins[8] });
    }
    st
}

/// How a token is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Carries loss.
    Loss,
    /// In the window, no loss (prompt, template).
    Context,
    /// Not in any window: cut off by truncation, or the whole sample dropped or in eval.
    Unused,
}

/// A run of text to draw: a token, or the part of one up to a line break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seg {
    pub text: String,
    pub mark: Mark,
    pub special: bool,
    /// Alternates token by token, so neighbouring tokens can be told apart.
    pub odd: bool,
    /// A window edge (packing) or the truncation point falls just before this token.
    pub cut: bool,
}

impl Sample {
    /// The sample as lines of segments: a line break inside a token ends a line (shown `↵`).
    pub fn lines(&self) -> Vec<Vec<Seg>> {
        let mut lines = vec![vec![]];
        let cut_at = self.cuts.iter().find(|_| self.fate == Fate::Truncated).copied();
        for (i, p) in self.pieces.iter().enumerate() {
            let mark = match (self.trained() && !self.eval, cut_at) {
                (false, _) => Mark::Unused,
                (true, Some(c)) if i >= c => Mark::Unused,
                _ if self.labels.get(i) == Some(&true) => Mark::Loss,
                _ => Mark::Context,
            };
            let seg = |text: &str, cut: bool| Seg {
                text: text.to_string(),
                mark,
                special: p.special,
                odd: i % 2 == 1,
                cut,
            };
            let mut parts = p.text.split('\n').peekable();
            let mut first = true;
            while let Some(part) = parts.next() {
                let cut = first && self.cuts.contains(&i);
                let brk = parts.peek().is_some();
                let text = if brk { format!("{part}↵") } else { part.to_string() };
                if let Some(line) = lines.last_mut().filter(|_| !text.is_empty() || cut) {
                    line.push(seg(&text, cut));
                }
                if brk {
                    lines.push(vec![]);
                }
                first = false;
            }
        }
        lines
    }
}
