//! Cross-entropy fused with the lm_head projection, as Liger's fused linear cross-entropy: the
//! (rows × vocab) logits are made one block of rows at a time and never exist whole. With a
//! 49 152-token vocabulary they were the largest buffers of a step, several of them kept alive
//! by the graph until the backward ended.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};

use super::exp::KernelExp;
use rayon::prelude::*;

use super::{data, matmul, wide, Out, S};

/// Elements of one block of logits (32 MiB in f32): big enough for the matmuls to run at full
/// speed, small beside the model.
const BLOCK_ELEMS: usize = 1 << 23;

/// The summed `weight · NLL` of each row's label under `softmax(h @ wᵀ)`, for contiguous `h`
/// (N, C) and `w` (V, C), with one label and one weight per row; rows of weight 0 cost nothing.
///
/// The loss is a scalar, so its backward only scales the gradients: they are computed in the
/// same pass, block by block, and kept by the op until the backward asks for them. dL/dh (N, C)
/// when `h` tracks a gradient, dL/dw (V, C) when `w` does (not for a frozen tied embedding).
/// dL/dw is made in `w`'s gradient buffer when one is lent and unwritten this step (the first
/// micro-batch), and scaled there by the backward: no second buffer of the embedding's size.
pub fn linear_cross_entropy(h: &Tensor, w: &Tensor, labels: Vec<u32>, weights: Vec<f64>) -> Result<Tensor> {
    check_shapes(h, w, &labels, &weights)?;
    let want_dw = w.track_op().then(|| w.clone());
    h.apply_op2(w, LinearCe { labels, weights, want_dh: h.track_op(), want_dw, grads: Mutex::default() })
}

/// Checks `h` (N, C), `w` (V, C), N labels inside the vocabulary (where they count) and N
/// weights agree; returns V.
pub(super) fn check_shapes(h: &Tensor, w: &Tensor, labels: &[u32], weights: &[f64]) -> Result<usize> {
    let (n, c) = h.dims2()?;
    let (v, c_w) = w.dims2()?;
    if c != c_w || labels.len() != n || weights.len() != n {
        candle_core::bail!(
            "linear cross-entropy: hidden {:?}, weight {:?}, {} labels and {} weights disagree",
            h.shape(),
            w.shape(),
            labels.len(),
            weights.len()
        );
    }
    if let Some(bad) = labels.iter().zip(weights).find(|(&l, &wt)| wt != 0.0 && l as usize >= v) {
        candle_core::bail!("label id {} is outside the model's vocabulary of {v} tokens", bad.0);
    }
    Ok(v)
}

struct LinearCe {
    labels: Vec<u32>,
    weights: Vec<f64>,
    want_dh: bool,
    /// The weight, when it wants dL/dw: its id finds its gradient buffer.
    want_dw: Option<Tensor>,
    /// dL/dh and dL/dw for a loss gradient of 1, set by the forward.
    grads: Mutex<Option<(Option<Tensor>, Dw)>>,
}

/// Where the forward left dL/dw (for a loss gradient of 1).
enum Dw {
    None,
    Kept(Tensor),
    /// In the weight's gradient buffer, to be scaled there.
    InBuffer,
}

impl CustomOp2 for LinearCe {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(&self, hs: &S, hl: &Layout, ws: &S, wl: &Layout) -> Out {
        let (n, c) = hl.shape().dims2()?;
        let v = wl.shape().dims2()?.0;
        let out = float_op!("linear cross-entropy", [(h, hs, hl), (w, ws, wl)], |T| {
            let run =
                |dw: Option<&mut [T]>| forward::<T>(h, w, c, &self.labels, &self.weights, self.want_dh, dw);
            // Set only when the weight's gradient buffer took dL/dw.
            let mut done = None;
            if let Some(weight) = &self.want_dw {
                crate::model::grad_sink::write_first(weight, |dst| done = Some(run(Some(dst))))?;
            }
            let ((loss, dh), dw) = match (done, &self.want_dw) {
                (Some(done), _) => (done, Dw::InBuffer),
                (None, Some(_)) => {
                    let mut dw = vec![<T as num_traits::Zero>::zero(); w.len()];
                    (run(Some(&mut dw)), Dw::Kept(Tensor::from_vec(dw, (v, c), &Device::Cpu)?))
                }
                (None, None) => (run(None), Dw::None),
            };
            let dh = dh.map(|d| Tensor::from_vec(d, (n, c), &Device::Cpu)).transpose()?;
            *self
                .grads
                .lock()
                .map_err(|_| candle_core::Error::Msg("linear cross-entropy: poisoned".into()))? =
                Some((dh, dw));
            vec![loss as T]
        });
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        _h: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let stash = self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("linear cross-entropy: poisoned".into()))?;
        let Some((dh, dw)) = stash.as_ref() else {
            candle_core::bail!("linear cross-entropy: backward before forward");
        };
        let scale = |d: &Tensor| d.broadcast_mul(g);
        // dL/dw is as big as the embedding: into its gradient buffer when one is lent.
        let dw = match dw {
            Dw::None => None,
            Dw::InBuffer => {
                rescale_buffer(g, w)?;
                None
            }
            Dw::Kept(dw) if scaled_into_buffer(dw, g, w)? => None,
            Dw::Kept(dw) => Some(scale(dw)?),
        };
        Ok((dh.as_ref().map(scale).transpose()?, dw))
    }
}

/// Writes `g · dw` into `w`'s gradient buffer (`grad_sink`), if it has one.
fn scaled_into_buffer(dw: &Tensor, g: &Tensor, w: &Tensor) -> Result<bool> {
    fn go<T: candle_core::WithDType + num_traits::Float>(
        dw: &Tensor,
        g: &Tensor,
        w: &Tensor,
    ) -> Result<bool> {
        let g = g.to_dtype(T::DTYPE)?.to_scalar::<T>()?; // the loss is a scalar
        let (s, l) = dw.storage_and_layout();
        let dw = super::held::<T>(&s, l)?;
        crate::model::grad_sink::write(w, |dst: &mut [T], add| {
            let rows = dst.par_chunks_mut(1 << 14).zip(dw.par_chunks(1 << 14));
            rows.for_each(|(dst, dw)| {
                super::wide(
                    #[inline(always)]
                    || match add {
                        true => dst.iter_mut().zip(dw).for_each(|(d, &x)| *d += x * g),
                        false => dst.iter_mut().zip(dw).for_each(|(d, &x)| *d = x * g),
                    },
                )
            })
        })
    }
    match dw.dtype() {
        candle_core::DType::F32 => go::<f32>(dw, g, w),
        candle_core::DType::F64 => go::<f64>(dw, g, w),
        _ => Ok(false),
    }
}

/// Scales the dL/dw the forward left in `w`'s gradient buffer by the loss's gradient `g`: the
/// same product `dw · g` the kept path writes, so the same bits.
fn rescale_buffer(g: &Tensor, w: &Tensor) -> Result<()> {
    match w.dtype() {
        candle_core::DType::F32 => {
            crate::model::grad_sink::rescale(w, g.to_dtype(w.dtype())?.to_scalar::<f32>()?)
        }
        candle_core::DType::F64 => {
            crate::model::grad_sink::rescale(w, g.to_dtype(w.dtype())?.to_scalar::<f64>()?)
        }
        dt => candle_core::bail!("linear cross-entropy: f32 or f64 only, not {dt:?}"),
    }
}

/// The weighted NLL sum, and the gradients asked for, one block of counted rows at a time.
fn forward<T: KernelExp + Send + Sync + 'static>(
    h: &[T],
    w: &[T],
    c: usize,
    labels: &[u32],
    weights: &[f64],
    want_dh: bool,
    mut dw: Option<&mut [T]>,
) -> (f64, Option<Vec<T>>) {
    let v = w.len() / c.max(1);
    let rows: Vec<usize> = (0..labels.len()).filter(|&i| weights[i] != 0.0).collect();
    let block = (BLOCK_ELEMS / v.max(1)).clamp(1, rows.len().max(1));
    let mut dh = want_dh.then(|| vec![T::zero(); h.len()]);
    if let (Some(dw), true) = (dw.as_deref_mut(), rows.is_empty()) {
        dw.fill(T::zero()); // no block writes it: a lent buffer holds the last step's gradient
    }
    let mut hb = vec![T::zero(); block * c]; // (R, C): the block's rows of h
    let mut logits = vec![T::zero(); block * v]; // (R, V), then dL/dlogits in place
    let mut dhb = vec![T::zero(); if want_dh { block * c } else { 0 }];
    let grads = want_dh || dw.is_some();
    let mut loss = 0.0;
    for (b, ids) in rows.chunks(block).enumerate() {
        let r = ids.len();
        for (dst, &i) in hb.chunks_mut(c).zip(ids) {
            dst.copy_from_slice(&h[i * c..(i + 1) * c]);
        }
        let (hb, logits) = (&hb[..r * c], &mut logits[..r * v]);
        matmul((r, v, c), (logits, (v, 1)), (hb, (c, 1)), (w, (1, c)), false); // hb @ wᵀ
        let nll: Vec<f64> = logits
            .par_chunks_mut(v)
            .zip(ids.par_iter())
            .map(|(row, &i)| {
                wide(
                    #[inline(always)]
                    || row_nll(row, labels[i] as usize, weights[i], grads),
                )
            })
            .collect();
        loss += nll.iter().sum::<f64>(); // in row order: the same sum on every run
        if let Some(dh) = dh.as_mut() {
            let dhb = &mut dhb[..r * c];
            matmul((r, c, v), (dhb, (c, 1)), (logits, (v, 1)), (w, (c, 1)), false); // dlogits @ w
            for (src, &i) in dhb.chunks(c).zip(ids) {
                dh[i * c..(i + 1) * c].copy_from_slice(src);
            }
        }
        if let Some(dw) = dw.as_mut() {
            // dw (V, C) += dlogitsᵀ (V, R) @ hb (R, C), blocks added in order.
            matmul((v, c, r), (dw, (c, 1)), (logits, (1, v)), (hb, (c, 1)), b > 0);
        }
    }
    (loss, dh)
}

/// One row's `weight · (logsumexp − logit[label])`; the row becomes its gradient
/// `weight · (softmax − onehot(label))` in place (only read with `grad`).
#[inline(always)]
fn row_nll<T: KernelExp>(row: &mut [T], label: usize, weight: f64, grad: bool) -> f64 {
    let (max, target) = (super::reduce::max(row), row[label]);
    // One exp per logit, kept: the sum and the softmax both come from it. The exps in a loop
    // of their own, which vectorizes; the max and the sum in lanes (`reduce`).
    row.iter_mut().for_each(|x| *x = (*x - max).kexp());
    let sum = super::reduce::sum(row);
    let nll = (max + sum.ln() - target).to_f64().unwrap_or(f64::NAN);
    if grad {
        let wt = T::from(weight).unwrap_or(T::nan());
        let k = wt / sum;
        row.iter_mut().for_each(|x| *x = *x * k);
        row[label] = row[label] - wt;
    }
    weight * nll
}
