//! Training data: files → token streams or samples → fixed-length windows with label masks →
//! batches in a reproducible order.
//!
//! A window of T tokens gives T−1 predictions: position t predicts token t+1, and `mask[t+1]`
//! says whether that label counts (as HF shifts labels inside the model).

pub mod batcher;
pub mod jsonl;
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
