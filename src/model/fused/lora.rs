//! A LoRA projection on a frozen base in one op: `y = x Wᵀ + s · ((m ⊙ x) Aᵀ) Bᵀ`, where `m`
//! is the adapter's dropout mask. Composed, each projection kept five (…, out) tensors alive
//! for the backward (the base product and its copy, `(xAᵀ)Bᵀ`, its scaled copy, the sum); this
//! keeps only its output, and the backward recomputes the small (…, r) product. With QLoRA the
//! base is quantized: the op holds the quantized weight and dequantizes it for the forward's
//! product and again in the backward, so no layer's float weight outlives its use.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use num_traits::Float;

use rayon::prelude::*;

use super::{data, held, map2, matmul, Out, CHUNK, S};
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
    let mask = mask.map(|mk| mk.contiguous()?.reshape((m, d_in))).transpose()?; // (…, in) -> (M, in)
    let op = LoraLinear { w, mask, scale };
    // The op reads (…, in) as (M, in) rows and makes (…, out) itself: reshapes around it would
    // be graph nodes, each a zeroed gradient and an added copy in candle's backward.
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op)
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
        let mut dims = xl.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.w.dims()?.0; // (M, out) is (…, out)
        }
        Ok((out, Shape::from(dims)))
    }

    /// With `xd = m ⊙ x` and `gb = g B` (M, r): dx = g W + s · m ⊙ (gb A),
    /// dA = s · gbᵀ xd, dB = s · gᵀ (xd Aᵀ). Only what tracks a gradient is computed. On the
    /// CPU in one pass of products over the raw data ([`LoraLinear::backward`]); elsewhere with
    /// candle's ops.
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want = (x.track_op(), a.track_op(), b.track_op());
        // Detached: a gradient that kept the forward graph alive would keep every step's
        // activations alive through the optimizer's moments.
        let (x, a, b, g) = (&x.detach(), &a.detach(), &b.detach(), &g.detach().contiguous()?);
        if x.device().is_cpu() {
            return self.backward_cpu(x, a, b, g, want);
        }
        let (x_dims, d_in) = (x.dims().to_vec(), a.dim(1)?);
        // (…, in) -> (M, in) and (…, out) -> (M, out), for candle's 2-D matmuls
        let (x, g) = (&x.reshape(((), d_in))?, &g.reshape(((), b.dim(0)?))?);
        let xd = match &self.mask {
            Some(mk) => (x * mk)?,
            None => x.clone(),
        };
        let gb = g.matmul(b)?; // (M, out) @ (out, r) -> (M, r)
        let dx = if want.0 {
            let dxd = (gb.matmul(a)? * self.scale)?; // (M, r) @ (r, in)
            let dxd = match &self.mask {
                Some(mk) => (dxd * mk)?,
                None => dxd,
            };
            // (M, out) @ (out, in), back to x's (…, in)
            Some((g.matmul(&self.w.weight(g.dtype())?)? + dxd)?.reshape(x_dims)?)
        } else {
            None
        };
        let da = if want.1 { Some((gb.t()?.matmul(&xd)? * self.scale)?) } else { None };
        let db = if want.2 { Some((g.t()?.matmul(&xd.matmul(&a.t()?)?)? * self.scale)?) } else { None };
        Ok((dx, da, db))
    }
}

/// The three gradients of a LoRA projection, each present when asked for.
type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);
/// The same as buffers, before they become tensors.
type Bufs<T> = (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>);

impl LoraLinear {
    /// [`CustomOp3::bwd`] on the CPU: every product goes straight into its result through
    /// `matmul`'s strides and accumulation, so there is no transpose copy, no scaling pass over
    /// a large tensor and no separate sum, and no candle op per term.
    fn backward_cpu(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        g: &Tensor,
        want: (bool, bool, bool),
    ) -> Result<Grads> {
        let w = if want.0 { Some(self.w.weight(g.dtype())?) } else { None };
        let (xs, xl) = x.storage_and_layout();
        let (as_, al) = a.storage_and_layout();
        let (bs, bl) = b.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let ws = w.as_ref().map(|w| w.storage_and_layout());
        let ms = self.mask.as_ref().map(|mk| mk.storage_and_layout());
        macro_rules! go {
            ($t:ty) => {{
                let w = match &ws {
                    Some((s, l)) => Some(held::<$t>(s, l)?),
                    None => None,
                };
                let mask = match &ms {
                    Some((s, l)) => Some(held::<$t>(s, l)?),
                    None => None,
                };
                let inputs =
                    (held::<$t>(&xs, xl)?, held::<$t>(&as_, al)?, held::<$t>(&bs, bl)?, held::<$t>(&gs, gl)?);
                self.backward::<$t>(inputs, w, mask, want)?
            }};
        }
        // Each result owns its Vec: no copy into the tensor.
        fn tensors<T: WithDType>(v: Bufs<T>, like: [&Tensor; 3]) -> Result<Grads> {
            let t = |v: Option<Vec<T>>, like: &Tensor| {
                v.map(|v| Tensor::from_vec(v, like.shape(), like.device())).transpose()
            };
            Ok((t(v.0, like[0])?, t(v.1, like[1])?, t(v.2, like[2])?))
        }
        match x.dtype() {
            candle_core::DType::F32 => tensors(go!(f32), [x, a, b]),
            candle_core::DType::F64 => tensors(go!(f64), [x, a, b]),
            dt => candle_core::bail!("lora linear: f32 or f64 only on the CPU, not {dt:?}"),
        }
    }

    /// The backward's arithmetic on `x` (M, in), `a` (r, in), `b` (out, r) and `g` (M, out).
    fn backward<T: Float + WithDType + Send + Sync + std::ops::MulAssign>(
        &self,
        (x, a, b, g): (&[T], &[T], &[T], &[T]),
        w: Option<&[T]>,
        mask: Option<&[T]>,
        want: (bool, bool, bool),
    ) -> Result<Bufs<T>> {
        let (d_out, d_in) = self.w.dims()?;
        let (m, r) = (x.len() / d_in, a.len() / d_in);
        let scale = T::from(self.scale).unwrap_or(T::nan());
        let mut gbs = vec![T::zero(); m * r]; // (M, r) = s · g B
        matmul((m, r, d_out), (&mut gbs, (r, 1)), (g, (d_out, 1)), (b, (r, 1)), false);
        gbs.iter_mut().for_each(|v| *v *= scale);
        let dx = match w {
            Some(w) => {
                let mut dx = vec![T::zero(); m * d_in]; // (M, in) = g W
                matmul((m, d_in, d_out), (&mut dx, (d_in, 1)), (g, (d_out, 1)), (w, (d_in, 1)), false);
                match mask {
                    // += gbs A, straight into dx
                    None => matmul((m, d_in, r), (&mut dx, (d_in, 1)), (&gbs, (r, 1)), (a, (d_in, 1)), true),
                    Some(mk) => {
                        let mut t = vec![T::zero(); m * d_in]; // (M, in) = gbs A, then m ⊙ it
                        matmul((m, d_in, r), (&mut t, (d_in, 1)), (&gbs, (r, 1)), (a, (d_in, 1)), false);
                        dx.par_chunks_mut(CHUNK).zip(t.par_chunks(CHUNK).zip(mk.par_chunks(CHUNK))).for_each(
                            |(d, (t, k))| d.iter_mut().zip(t).zip(k).for_each(|((d, &t), &k)| *d += t * k),
                        );
                    }
                }
                Some(dx)
            }
            None => None,
        };
        if !want.1 && !want.2 {
            return Ok((dx, None, None));
        }
        let dropped: Vec<T>;
        let xd = match mask {
            Some(mk) => {
                dropped = map2(x, mk, |v, k| v * k);
                &dropped[..]
            }
            None => x,
        };
        // dA (r, in) = gbsᵀ xd: gbsᵀ read through its strides.
        let da = want.1.then(|| {
            let mut da = vec![T::zero(); r * d_in];
            matmul((r, d_in, m), (&mut da, (d_in, 1)), (&gbs, (1, r)), (xd, (d_in, 1)), false);
            da
        });
        // dB (out, r) = gᵀ (s · xd Aᵀ): the (M, r) product again, as the forward made it.
        let db = want.2.then(|| {
            let mut xa = vec![T::zero(); m * r];
            matmul((m, r, d_in), (&mut xa, (r, 1)), (xd, (d_in, 1)), (a, (1, d_in)), false);
            xa.iter_mut().for_each(|v| *v *= scale);
            let mut db = vec![T::zero(); d_out * r];
            matmul((d_out, r, m), (&mut db, (r, 1)), (g, (1, d_out)), (&xa, (r, 1)), false);
            db
        });
        Ok((dx, da, db))
    }
}
