//! A LoRA projection on a frozen base in one op: `y = x Wᵀ + s · ((m ⊙ x) Aᵀ) Bᵀ`, where `m`
//! is the adapter's dropout mask. Composed, each projection kept five (…, out) tensors alive
//! for the backward (the base product and its copy, `(xAᵀ)Bᵀ`, its scaled copy, the sum); this
//! keeps only its output, and the backward recomputes the small (…, r) product. With QLoRA the
//! base is quantized: the op holds the quantized weight and dequantizes it for the forward's
//! product and again in the backward, so no layer's float weight outlives its use.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use num_traits::Float;

use super::{data, held, map2, matmul, Out, S};
use crate::model::quant::Frozen;

/// `x Wᵀ + scale · ((mask ⊙ x) Aᵀ) Bᵀ` for `x` (…, in), a frozen `w` (out, in), `a` (r, in),
/// `b` (out, r) and an optional dropout `mask` shaped like `x`. Gradients reach `x`, `a` and
/// `b`, never `w`.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    lora_linear_frozen(x, Frozen::Dense(w.clone()), a, b, scale, mask)
}

/// [`lora_linear`] over a float or quantized (QLoRA) base.
pub fn lora_linear_frozen(
    x: &Tensor,
    w: Frozen,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let w = match w {
        Frozen::Dense(t) => Frozen::Dense(t.contiguous()?),
        q => q,
    };
    let (d_out, d_in) = w.dims()?;
    let r = a.dim(0)?;
    let m = x.elem_count() / d_in.max(1);
    let shapes_agree = x.dims().last() == Some(&d_in)
        && a.dims() == [r, d_in]
        && b.dims() == [d_out, r]
        && mask.is_none_or(|mk| mk.shape() == x.shape());
    if !shapes_agree || d_in == 0 {
        candle_core::bail!(
            "lora linear: x {:?}, base {:?}, A {:?} and B {:?} disagree",
            x.shape(),
            (d_out, d_in),
            a.shape(),
            b.shape()
        );
    }
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = d_out;
    }
    let mask = mask.map(|mk| mk.contiguous()?.reshape((m, d_in))).transpose()?;
    let op = LoraLinear { w, mask, scale };
    let x = x.contiguous()?.reshape((m, d_in))?; // (…, in) -> (M, in)
    x.apply_op3(&a.contiguous()?, &b.contiguous()?, op)?.reshape(out_dims) // (M, out) -> (…, out)
}

struct LoraLinear {
    /// (out, in), frozen
    w: Frozen,
    /// (M, in), already scaled by 1/(1-p)
    mask: Option<Tensor>,
    scale: f64,
}

impl LoraLinear {
    fn forward<T: Float + WithDType + Send + Sync + std::ops::MulAssign>(
        &self,
        x: &[T],
        a: &[T],
        b: &[T],
    ) -> Result<Vec<T>> {
        let (d_out, d_in) = self.w.dims()?;
        let (m, r) = (x.len() / d_in, a.len() / d_in);
        let w = self.w.weight(T::DTYPE)?; // a dequantized base lives for this product only
        let (ws, wl) = w.storage_and_layout();
        let w = held::<T>(&ws, wl)?;
        let ms = self.mask.as_ref().map(|mk| mk.storage_and_layout());
        let dropped: Vec<T>;
        let xd = match &ms {
            Some((s, l)) => {
                dropped = map2(x, held::<T>(s, l)?, |v, k| v * k);
                &dropped[..]
            }
            None => x,
        };
        let scale = T::from(self.scale).unwrap_or(T::nan());
        let mut xa = vec![T::zero(); m * r]; // (M, r) = s · xd Aᵀ
        matmul((m, r, d_in), (&mut xa, (r, 1)), (xd, (d_in, 1)), (a, (1, d_in)), false);
        xa.iter_mut().for_each(|v| *v *= scale);
        let mut y = vec![T::zero(); m * d_out]; // (M, out) = x Wᵀ, then += xa Bᵀ
        matmul((m, d_out, d_in), (&mut y, (d_out, 1)), (x, (d_in, 1)), (w, (1, d_in)), false);
        matmul((m, d_out, r), (&mut y, (d_out, 1)), (&xa, (r, 1)), (b, (1, r)), true);
        Ok(y)
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout, as_: &S, al: &Layout, bs: &S, bl: &Layout) -> Out {
        let out = float_op!("lora linear", [(x, xs, xl), (a, as_, al), (b, bs, bl)], |T| self
            .forward::<T>(x, a, b)?);
        Ok((out, Shape::from((xl.dims()[0], self.w.dims()?.0))))
    }

    /// With `xd = m ⊙ x` and `gb = g B` (M, r): dx = g W + s · m ⊙ (gb A),
    /// dA = s · gbᵀ xd, dB = s · gᵀ (xd Aᵀ). Only what tracks a gradient is computed.
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_a, want_b) = (x.track_op(), a.track_op(), b.track_op());
        // Detached: a gradient that kept the forward graph alive would keep every step's
        // activations alive through the optimizer's moments.
        let (x, a, b, g) = (&x.detach(), &a.detach(), &b.detach(), &g.detach());
        let xd = match &self.mask {
            Some(mk) => (x * mk)?,
            None => x.clone(),
        };
        let gb = g.matmul(b)?; // (M, out) @ (out, r) -> (M, r)
        let dx = if want_x {
            let dxd = (gb.matmul(a)? * self.scale)?; // (M, r) @ (r, in)
            let dxd = match &self.mask {
                Some(mk) => (dxd * mk)?,
                None => dxd,
            };
            Some((g.matmul(&self.w.weight(g.dtype())?)? + dxd)?) // (M, out) @ (out, in)
        } else {
            None
        };
        let da = if want_a { Some((gb.t()?.matmul(&xd)? * self.scale)?) } else { None };
        let db = if want_b { Some((g.t()?.matmul(&xd.matmul(&a.t()?)?)? * self.scale)?) } else { None };
        Ok((dx, da, db))
    }
}
