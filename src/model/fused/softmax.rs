//! The causal softmax of attention scores: scale, mask and softmax in one pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Tensor};
use num_traits::Float;

use super::exp::KernelExp;
use rayon::prelude::*;

use super::{data, reduce, wide, Out, S};

/// `softmax(scale · s + causal mask)` over the last dim of contiguous scores `s` of shape
/// (…, T, T_all): query row i of T sits at position `pos + i` and sees keys `0..=pos + i`.
/// The backward needs only the output: dL/ds = scale · y ⊙ (g − Σⱼ gⱼ yⱼ).
pub fn causal_softmax(s: &Tensor, scale: f64, pos: usize) -> Result<Tensor> {
    s.apply_op1(CausalSoftmax { scale, pos })
}

struct CausalSoftmax {
    scale: f64,
    pos: usize,
}

/// (rows of length `n`, `t` rows per attention matrix) of a (…, T, T_all) layout.
fn rows(l: &Layout) -> Result<(usize, usize)> {
    let dims = l.dims();
    // An empty last dim would make zero-length row chunks, which rayon rejects.
    if dims.len() < 2 || dims[dims.len() - 1] == 0 {
        candle_core::bail!("causal softmax: expected (…, T, T_all) with T_all > 0, got {dims:?}");
    }
    Ok((dims[dims.len() - 1], dims[dims.len() - 2]))
}

fn softmax_fwd<T: KernelExp + Send + Sync>(x: &[T], n: usize, t: usize, scale: T, pos: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(n).zip(x.par_chunks(n)).enumerate().for_each(|(r, (y, x))| {
        wide(
            #[inline(always)]
            || {
                softmax_row(x, y, scale, (pos + r % t + 1).min(n));
            },
        )
    });
    out
}

/// `y[..visible] = softmax(scale · x[..visible])`; `y[visible..]` (the masked keys) is left as
/// it is, zero in a fresh buffer. Returns the row's max and sum, from which [`softmax_again`]
/// makes the same `y` bit for bit.
#[inline(always)]
pub(super) fn softmax_row<T: KernelExp>(x: &[T], y: &mut [T], scale: T, visible: usize) -> (T, T) {
    let (x, y) = (&x[..visible], &mut y[..visible]);
    for (yj, &xj) in y.iter_mut().zip(x) {
        *yj = xj * scale;
    }
    let max = reduce::max(y);
    // The exps in a loop of their own, which vectorizes; the sum in lanes (`reduce`).
    y.iter_mut().for_each(|yj| *yj = (*yj - max).kexp());
    let sum = reduce::sum(y);
    for yj in y.iter_mut() {
        *yj = *yj / sum;
    }
    (max, sum)
}

/// [`softmax_row`] again from its (max, sum), the same operations in the same order, so the
/// result is the same bits: attention's backward remakes its probabilities with it.
#[inline(always)]
pub(super) fn softmax_again<T: KernelExp>(
    x: &[T],
    y: &mut [T],
    scale: T,
    visible: usize,
    (max, sum): (T, T),
) {
    let (x, y) = (&x[..visible], &mut y[..visible]);
    for (yj, &xj) in y.iter_mut().zip(x) {
        *yj = (xj * scale - max).kexp() / sum;
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &S, l: &Layout) -> Out {
        let (n, t) = rows(l)?;
        let out =
            float_op!("causal softmax", [(x, s, l)], |T| softmax_fwd(x, n, t, self.scale as T, self.pos));
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &super::C, l: &Layout) -> super::CudaOut {
        let (n, t) = rows(l)?;
        Ok((super::cuda::causal_softmax(s, l, n, t, self.scale, self.pos)?, l.shape().clone()))
    }

    fn bwd(&self, _s: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(y.apply_op2_no_bwd(&g, &SoftmaxBwd { scale: self.scale })?))
    }
}

/// dL/ds = scale · y ⊙ (g − Σⱼ gⱼ yⱼ), row by row (masked entries have y = 0, so 0).
struct SoftmaxBwd {
    scale: f64,
}

fn softmax_bwd<T: Float + Send + Sync>(y: &[T], g: &[T], n: usize, scale: T) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    out.par_chunks_mut(n).zip(y.par_chunks(n).zip(g.par_chunks(n))).for_each(|(d, (y, g))| {
        wide(
            #[inline(always)]
            || {
                let dot = reduce::dot(y, g);
                for ((dj, &yj), &gj) in d.iter_mut().zip(y).zip(g) {
                    *dj = scale * yj * (gj - dot);
                }
            },
        )
    });
    out
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "causal-softmax-bwd"
    }

    fn cpu_fwd(&self, ys: &S, yl: &Layout, gs: &S, gl: &Layout) -> Out {
        let (n, _) = rows(yl)?;
        if yl.shape() != gl.shape() {
            candle_core::bail!("causal softmax backward: {:?} vs {:?}", yl.shape(), gl.shape());
        }
        let out = float_op!("causal softmax backward", [(y, ys, yl), (g, gs, gl)], |T| softmax_bwd(
            y,
            g,
            n,
            self.scale as T
        ));
        Ok((out, yl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, ys: &super::C, yl: &Layout, gs: &super::C, gl: &Layout) -> super::CudaOut {
        let (n, _) = rows(yl)?;
        if yl.shape() != gl.shape() {
            candle_core::bail!("causal softmax backward: {:?} vs {:?}", yl.shape(), gl.shape());
        }
        Ok((super::cuda::softmax_bwd((ys, yl), (gs, gl), n, self.scale)?, yl.shape().clone()))
    }
}
