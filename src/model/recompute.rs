//! Activation checkpointing per block (`optim.gradient_checkpointing`), as
//! `torch.utils.checkpoint` does it for HF models: the forward keeps only each block's input,
//! and the backward runs one block at a time, recomputing its forward first.
//!
//! candle cannot express this as one custom op: a `CustomOp`'s backward returns gradients for
//! its (at most 3) tensor arguments, and a block has 9 or more weights. So the backward is
//! chained by hand, with candle's own `backward` inside each segment:
//!   head:   L = nll(norm(x_L))                  → dW_head, dL/dx_L
//!   block i (L-1 … 0): y = block_i(x_i), recomputed; backward of Σ y ⊙ dL/dy
//!                                               → dW_i, dL/dx_i
//!   embedding: backward of Σ embed(ids) ⊙ dL/dx_0  → dW_embed
//! Only one block's graph is alive at a time. The gradients equal those of one whole
//! backward up to the order of float additions.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use super::ops::Dropout;
use super::Llama;
use crate::optim::grads::accumulate;

impl Llama {
    /// The summed next-token NLL of `ids` (B, T) (as `train_nll_sum`, detached) and the
    /// gradients of `scale ·` it for each of `vars` that has one, with one block's activations alive at a
    /// time. Dropout replays the same masks when a block is recomputed.
    pub fn train_grads_checkpointed(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        drop: &mut Dropout,
        scale: f64,
        vars: &[Var],
    ) -> Result<(Tensor, GradStore)> {
        // Forward: the block inputs, detached, and each block's dropout state.
        let mut inputs = Vec::with_capacity(self.layers.len());
        // The embedding's graph is only a lookup; it is kept for the last segment.
        let x0 = self.cfg.precision.cast(&self.embed(ids)?)?; // (B, T) -> (B, T, C)
        let mut x = x0.detach();
        for layer in &self.layers {
            let replay = drop.clone();
            let y = layer.forward(&x, &self.rope, 0, None, Some(drop))?.detach();
            inputs.push((std::mem::replace(&mut x, y), replay));
        }
        // Head: the loss from the last block's output, and dL/dx_L.
        let top = Var::from_tensor(&x)?;
        let (nll, _) = self.nll_sum(&self.norm.forward(top.as_tensor())?, ids, mask, true)?;
        let grads = (&nll * scale)?.backward()?;
        let mut dy = grad_of(&grads, top.as_tensor(), "the last block's output")?;
        // Only the vars' gradients are kept across segments, not the head's intermediates.
        let mut sum = accumulate(Some(GradStore::default()), grads, vars)?;
        // Blocks, last to first: recompute, then backpropagate dL/dy through the block alone.
        for (layer, (x, mut replay)) in self.layers.iter().zip(inputs).rev() {
            let x = Var::from_tensor(&x)?;
            let y = layer.forward(x.as_tensor(), &self.rope, 0, None, Some(&mut replay))?;
            let grads = (y * &dy)?.sum_all()?.backward()?;
            dy = grad_of(&grads, x.as_tensor(), "a block's input")?;
            sum = accumulate(Some(sum), grads, vars)?;
        }
        // The embedding, when it trains.
        if x0.track_op() {
            sum = accumulate(Some(sum), (x0 * &dy)?.sum_all()?.backward()?, vars)?;
        }
        Ok((nll.detach(), sum))
    }
}

fn grad_of(grads: &GradStore, t: &Tensor, what: &str) -> Result<Tensor> {
    match grads.get(t) {
        Some(g) => Ok(g.clone()), // candle's backward makes gradients without a graph
        None => candle_core::bail!("gradient checkpointing: no gradient reached {what}"),
    }
}
