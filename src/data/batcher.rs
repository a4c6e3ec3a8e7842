//! Batches of windows in a reproducible order. The order of epoch e is a pure function of
//! (seed, e), so a checkpoint needs only the cursor to resume exactly.

use candle_core::{Device, Result, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::Window;

/// Where the next micro-batch starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    /// Index into this epoch's order.
    pub pos: usize,
}

pub struct Batcher {
    windows: Vec<Window>,
    shuffle: bool,
    seed: u64,
    order: Vec<usize>,
    cursor: Cursor,
}

/// A micro-batch: ids (B, T) u32 and label mask (B, T) f32.
pub struct Batch {
    pub ids: Tensor,
    pub mask: Tensor,
    /// Predictions that count: Σ mask over positions 1..T.
    pub n_labels: f64,
}

impl Batcher {
    pub fn new(windows: Vec<Window>, shuffle: bool, seed: u64) -> Self {
        let mut b = Self { windows, shuffle, seed, order: vec![], cursor: Cursor::default() };
        b.order = b.order_for(0);
        b
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    pub fn seek(&mut self, c: Cursor) {
        if c.epoch != self.cursor.epoch || self.order.is_empty() {
            self.order = self.order_for(c.epoch);
        }
        self.cursor = c;
    }

    fn order_for(&self, epoch: u64) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.windows.len()).collect();
        if self.shuffle {
            let mut rng =
                ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch));
            o.shuffle(&mut rng);
        }
        o
    }

    /// Micro-batches in one epoch (a last partial batch is dropped).
    pub fn batches_per_epoch(&self, batch_size: usize) -> usize {
        self.windows.len() / batch_size.max(1)
    }

    /// The next `batch_size` windows; at the end of an epoch the next epoch starts (and a
    /// partial batch is dropped, so every batch has the same shape).
    pub fn next_batch(&mut self, batch_size: usize, dev: &Device) -> Result<Batch> {
        if batch_size == 0 || batch_size > self.windows.len() {
            candle_core::bail!(
                "batch size {batch_size} needs at least that many windows; the data has {}",
                self.windows.len()
            );
        }
        if self.cursor.pos + batch_size > self.order.len() {
            self.seek(Cursor { epoch: self.cursor.epoch + 1, pos: 0 });
        }
        let picked = &self.order[self.cursor.pos..self.cursor.pos + batch_size];
        self.cursor.pos += batch_size;
        stack(picked.iter().map(|&i| &self.windows[i]), dev)
    }

    /// Every window once, in stored order, `batch_size` at a time with a shorter last batch
    /// (evaluation: nothing is dropped and the cursor does not move).
    pub fn in_order<'a>(
        &'a self,
        batch_size: usize,
        dev: &'a Device,
    ) -> impl Iterator<Item = Result<Batch>> + 'a {
        self.windows.chunks(batch_size.max(1)).map(move |chunk| stack(chunk.iter(), dev))
    }
}

/// Stacks windows of one length into a batch: ids (B, T) and mask (B, T).
fn stack<'a>(windows: impl Iterator<Item = &'a Window> + Clone, dev: &Device) -> Result<Batch> {
    let b = windows.clone().count();
    let t = windows.clone().next().map(|w| w.ids.len()).unwrap_or(0);
    let ids: Vec<u32> = windows.clone().flat_map(|w| w.ids.iter().copied()).collect();
    let mask: Vec<f32> = windows.clone().flat_map(|w| w.mask.iter().copied()).collect();
    let n_labels = windows.map(|w| w.mask.iter().skip(1).map(|&m| m as f64).sum::<f64>()).sum();
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), dev)?,
        mask: Tensor::from_vec(mask, (b, t), dev)?,
        n_labels,
    })
}
