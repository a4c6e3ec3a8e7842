//! Rotary position embedding in one pass. Composed, each call made seven (B, nh, T, hs)
//! tensors (two halves, a negation, a concatenation, two products and a sum), and the graph
//! kept them all. The backward is the same rotation by the opposite angle.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

use super::{data, held, wide, Out, S};
use crate::model::config::RopeLayout;

/// Rotates contiguous `x` (B, nh, T, hs) by the angles whose `cos` and `sin` are given per
/// position, (T, hs/2) in `x`'s dtype. `Half` pairs element i with i + hs/2 (HF's
/// `rotate_half`); `Interleaved` pairs 2i with 2i+1.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let (_, _, t, hs) = x.dims4()?;
    if hs % 2 != 0 || hs == 0 || cos.dims() != [t, hs / 2] || sin.dims() != [t, hs / 2] {
        candle_core::bail!(
            "rope: x {:?}, cos {:?} and sin {:?} disagree",
            x.shape(),
            cos.shape(),
            sin.shape()
        );
    }
    let op = Rope { cos: cos.contiguous()?, sin: sin.contiguous()?, layout, inverse: false, heads: 1 };
    x.apply_op1(op)
}

/// [`rope`] on contiguous `x` (B, T, n·hs) as a projection makes it, n heads of `hs` per
/// position: attention's fused path reads this layout as it is, with no transpose.
pub fn rope_rows(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout, hs: usize) -> Result<Tensor> {
    let (_, t, w) = x.dims3()?;
    x.apply_op1(row_rotation(cos, sin, layout, hs, (t, w))?.0)
}

/// The rotation [`rope_rows`] applies to rows (B, T, width) in heads of `hs`, for an op that
/// rotates its own output (`fused::linear_rope`).
#[derive(Debug)]
pub struct RowRotation(Rope);

/// [`RowRotation`] by `cos` and `sin` (T, hs/2) for rows of (B, T, width); checks they agree.
pub fn row_rotation(
    cos: &Tensor,
    sin: &Tensor,
    layout: RopeLayout,
    hs: usize,
    (t, width): (usize, usize),
) -> Result<RowRotation> {
    let half = [t, hs / 2];
    if !hs.is_multiple_of(2)
        || hs == 0
        || !width.is_multiple_of(hs)
        || cos.dims() != half
        || sin.dims() != half
    {
        candle_core::bail!(
            "rope: rows of {width} for {t} positions in heads of {hs}, cos {:?} and sin {:?} disagree",
            cos.shape(),
            sin.shape()
        );
    }
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    Ok(RowRotation(Rope { cos, sin, layout, inverse: false, heads: width / hs }))
}

impl RowRotation {
    /// The rotated rows of `y` (B·T·width elements).
    pub(super) fn rotate<T: Float + WithDType + Send + Sync>(&self, y: &[T]) -> Result<Vec<T>> {
        self.0.run(y)
    }

    /// Whether this rotation is for rows of (·, t, width).
    pub(super) fn fits(&self, (t, width): (usize, usize)) -> bool {
        let half = self.0.cos.dims().get(1).copied().unwrap_or(0);
        self.0.cos.dims().first() == Some(&t) && width == self.0.heads * 2 * half
    }

    /// `g` rotated back (by −θ): the backward of [`Self::rotate`].
    pub(super) fn undo(&self, g: &Tensor) -> Result<Tensor> {
        g.contiguous()?.apply_op1_no_bwd(&self.0.inverted())
    }
}

#[derive(Clone, Debug)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    layout: RopeLayout,
    /// Rotate by −θ: the backward.
    inverse: bool,
    /// Consecutive rows of hs that share a position: 1 for (B, nh, T, hs), n for (B, T, n·hs).
    heads: usize,
}

impl Rope {
    /// The same rotation by the opposite angle.
    fn inverted(&self) -> Rope {
        Rope { inverse: !self.inverse, ..self.clone() }
    }

    fn run<T: Float + WithDType + Send + Sync>(&self, x: &[T]) -> Result<Vec<T>> {
        let (t, half) = self.cos.dims2()?;
        let (cs, cl) = self.cos.storage_and_layout();
        let (ss, sl) = self.sin.storage_and_layout();
        let (cos, sin) = (held::<T>(&cs, cl)?, held::<T>(&ss, sl)?);
        let hs = 2 * half;
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(hs).zip(x.par_chunks(hs)).enumerate().for_each(|(row, (y, x))| {
            wide(
                #[inline(always)]
                || {
                    // rows are (b, head, position) or (b, position, head)
                    let p = (row / self.heads) % t;
                    let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
                    for i in 0..half {
                        let (ci, si) = (c[i], if self.inverse { -s[i] } else { s[i] });
                        let (a, b) = match self.layout {
                            RopeLayout::Half => (i, i + half),
                            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                        };
                        // As the composed form: x·cos + rotate(x)·sin.
                        y[a] = x[a] * ci + (-x[b]) * si;
                        y[b] = x[b] * ci + x[a] * si;
                    }
                },
            )
        });
        Ok(out)
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout) -> Out {
        let out = float_op!("rope", [(x, xs, xl)], |T| self.run::<T>(x)?);
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, xs: &super::C, xl: &Layout) -> super::CudaOut {
        let (cs, cl) = self.cos.storage_and_layout();
        let (ss, sl) = self.sin.storage_and_layout();
        let (candle_core::Storage::Cuda(cs), candle_core::Storage::Cuda(ss)) = (&*cs, &*ss) else {
            candle_core::bail!("rope: the tables are not on the input's device");
        };
        if self.heads != 1 {
            candle_core::bail!("rope: the CUDA kernel takes (B, nh, T, hs) only");
        }
        let interleaved = matches!(self.layout, RopeLayout::Interleaved);
        let y = super::cuda::rope((xs, xl), (cs, cl), (ss, sl), interleaved, self.inverse)?;
        Ok((y, xl.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&self.inverted())?))
    }
}
