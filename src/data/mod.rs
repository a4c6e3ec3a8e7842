//! Training data: files → token streams or samples → fixed-length windows with label masks →
//! batches in a reproducible order.
//!
//! A window of T tokens gives T−1 predictions: position t predicts token t+1, and `mask[t+1]`
//! says whether that label counts (as HF shifts labels inside the model).

pub mod batcher;
pub mod config;
pub mod dataset;
pub mod jsonl;
pub mod preview;
pub mod tokens;

pub use batcher::{Batcher, Cursor};

/// One training window: `ids` and a 0/1 `mask` over the same positions (1 = this token is a label).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub ids: Vec<u32>,
    pub mask: Vec<f32>,
}

/// Cuts a stream into consecutive non-overlapping windows of `seq_len` (the tail that does not
/// fill a window is dropped).
pub fn windows(ids: &[u32], mask: &[f32], seq_len: usize) -> Vec<Window> {
    ids.chunks_exact(seq_len)
        .zip(mask.chunks_exact(seq_len))
        .map(|(i, m)| Window { ids: i.to_vec(), mask: m.to_vec() })
        .collect()
}

/// Counts of what the loader dropped, reported to the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataReport {
    pub samples: usize,
    pub windows: usize,
    pub skipped_invalid: usize,
    pub dropped_empty: usize,
    pub dropped_too_long: usize,
    pub truncated: usize,
}

/// A sentence for the log: "385 samples in 385 windows (2 invalid lines skipped, 3 truncated)".
impl std::fmt::Display for DataReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
        if self.samples > 0 {
            write!(f, "{} in {}", n(self.samples, "sample"), n(self.windows, "window"))?;
        } else {
            write!(f, "{}", n(self.windows, "window"))?;
        }
        let notes: Vec<String> = [
            (self.skipped_invalid, "invalid line skipped", "invalid lines skipped"),
            (self.dropped_empty, "empty sample dropped", "empty samples dropped"),
            (self.dropped_too_long, "too-long sample dropped", "too-long samples dropped"),
            (self.truncated, "sample truncated", "samples truncated"),
        ]
        .iter()
        .filter(|(k, _, _)| *k > 0)
        .map(|(k, one, many)| format!("{k} {}", if *k == 1 { one } else { many }))
        .collect();
        if !notes.is_empty() {
            write!(f, " ({})", notes.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::DataReport;

    #[test]
    fn the_report_reads_as_a_sentence() {
        let r = DataReport { samples: 385, windows: 385, ..Default::default() };
        assert_eq!(r.to_string(), "385 samples in 385 windows");
        let r = DataReport { windows: 42, skipped_invalid: 1, truncated: 3, ..Default::default() };
        assert_eq!(r.to_string(), "42 windows (1 invalid line skipped, 3 samples truncated)");
    }
}
