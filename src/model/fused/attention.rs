//! Causal attention in one op: `softmax(scale · q kᵀ + mask) v`, per (batch, kv head) in
//! parallel, each group of query heads sharing its key/value head (GQA) without `repeat_kv`'s
//! copies. Composed, candle ran the two products as batched matmuls of tiny matrices (3.3–3.6x
//! slower than a BLAS on SmolLM2's shapes, `scripts/bench/README.md`) and kept the scores and the
//! probabilities for the backward; this keeps the probabilities only.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

use super::exp::KernelExp;
use super::softmax::softmax_row;
use super::{data, held, matmul_serial, wide, Out, S};

/// Attention of contiguous `q` (B, nh, T, hs) over `k`, `v` (B, nkv, T_all, hs), nh a multiple
/// of nkv (query head h reads kv head h / (nh / nkv)); query i sits at position `pos + i` and
/// sees keys `0..=pos + i`. Returns (B, nh, T, hs). The backward uses the kept probabilities:
/// dV = Pᵀ dO, dS = scale · P ⊙ (dO vᵀ − rowsum), dQ = dS k, dK = dSᵀ q.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, pos: usize) -> Result<Tensor> {
    let (b, nh, t, hs) = q.dims4()?;
    let (bk, nkv, ta, hk) = k.dims4()?;
    if k.dims() != v.dims() || bk != b || hk != hs || nkv == 0 || nh % nkv != 0 || ta == 0 || pos + t > ta {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} at position {pos} disagree",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    let keep = q.track_op() || k.track_op() || v.track_op();
    q.apply_op3(k, v, Attention { scale, pos, keep, probs: Mutex::default() })
}

struct Attention {
    scale: f64,
    pos: usize,
    /// Whether a backward may come, so the probabilities are worth keeping.
    keep: bool,
    /// P (B, nh, T, T_all), set by the forward when `keep`.
    probs: Mutex<Option<Tensor>>,
}

/// The sizes of one call: (B·nkv groups, heads per group, T, T_all, hs).
#[derive(Clone, Copy)]
struct Dims {
    rep: usize,
    t: usize,
    ta: usize,
    hs: usize,
    pos: usize,
}

fn dims(ql: &Layout, kl: &Layout, pos: usize) -> Result<Dims> {
    let (_, nh, t, hs) = ql.shape().dims4()?;
    let (_, nkv, ta, _) = kl.shape().dims4()?;
    Ok(Dims { rep: nh / nkv, t, ta, hs, pos })
}

/// Query rows per task. A block's keys end at its last row's position, so the masked part of
/// the scores is mostly never computed, and the tasks (heads × blocks) keep both cores busy
/// where the groups alone (3 for SmolLM2 at batch 1) would not.
const ROWS: usize = 32;

/// O, and P when `keep`, in parallel over (head, block of query rows).
fn forward<T: KernelExp + Send + Sync + 'static>(
    (q, k, v): (&[T], &[T], &[T]),
    d: Dims,
    scale: T,
    keep: bool,
) -> (Vec<T>, Vec<T>) {
    let Dims { rep, t, ta, hs, pos } = d;
    let mut out = vec![T::zero(); q.len()];
    let mut probs = if keep { vec![T::zero(); q.len() / hs * ta] } else { Vec::new() };
    // One block: `o` (rows, hs) of head `h` from row `i0`; `p` its (rows, T_all) probabilities.
    let block = |h: usize, i0: usize, o: &mut [T], p: Option<&mut [T]>| {
        wide(
            #[inline(always)]
            || {
                let rows = o.len() / hs;
                let end = (pos + i0 + rows).min(ta); // the last row sees keys 0..end
                let (kg, vg) = (&k[h / rep * ta * hs..][..end * hs], &v[h / rep * ta * hs..][..end * hs]);
                let qb = &q[(h * t + i0) * hs..][..rows * hs];
                let mut s = vec![T::zero(); rows * end]; // (rows, end) scores
                matmul_serial((rows, end, hs), (&mut s, (end, 1)), (qb, (hs, 1)), (kg, (1, hs)), false); // q kᵀ
                let mut scratch = Vec::new();
                let (p, stride) = match p {
                    Some(p) => (p, ta),
                    None => {
                        scratch.resize(rows * end, T::zero());
                        (&mut scratch[..], end)
                    }
                };
                for (i, si) in s.chunks(end).enumerate() {
                    softmax_row(si, &mut p[i * stride..][..end], scale, (pos + i0 + i + 1).min(ta));
                }
                matmul_serial((rows, hs, end), (o, (hs, 1)), (p, (stride, 1)), (vg, (hs, 1)), false);
                // P v
            },
        )
    };
    if keep {
        out.par_chunks_mut(t * hs).zip(probs.par_chunks_mut(t * ta)).enumerate().for_each(|(h, (oh, ph))| {
            oh.par_chunks_mut(ROWS * hs)
                .zip(ph.par_chunks_mut(ROWS * ta))
                .enumerate()
                .for_each(|(b, (o, p))| block(h, b * ROWS, o, Some(p)))
        });
    } else {
        out.par_chunks_mut(t * hs).enumerate().for_each(|(h, oh)| {
            oh.par_chunks_mut(ROWS * hs).enumerate().for_each(|(b, o)| block(h, b * ROWS, o, None))
        });
    }
    (out, probs)
}

/// dQ, dK, dV for every group, in parallel over (batch, kv head); a kv head's gradients sum
/// over its query heads and their row blocks in order.
fn backward<T: Float + Send + Sync + 'static>(
    (q, k, v): (&[T], &[T], &[T]),
    p: &[T],
    g: &[T],
    d: Dims,
    scale: T,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims { rep, t, ta, hs, pos } = d;
    let (mut dq, mut dk, mut dv) =
        (vec![T::zero(); q.len()], vec![T::zero(); k.len()], vec![T::zero(); v.len()]);
    dq.par_chunks_mut(rep * t * hs)
        .zip(dk.par_chunks_mut(ta * hs).zip(dv.par_chunks_mut(ta * hs)))
        .enumerate()
        .for_each(|(grp, (dqg, (dkg, dvg)))| {
            wide(
                #[inline(always)]
                || {
                    let (kg, vg) = (&k[grp * ta * hs..][..ta * hs], &v[grp * ta * hs..][..ta * hs]);
                    let mut ds = vec![T::zero(); ROWS * ta];
                    for (r, dqh) in dqg.chunks_mut(t * hs).enumerate() {
                        let h = grp * rep + r;
                        for (b, dqb) in dqh.chunks_mut(ROWS * hs).enumerate() {
                            let (i0, rows) = (b * ROWS, dqb.len() / hs);
                            let (at, pt) = ((h * t + i0) * hs, (h * t + i0) * ta);
                            let ins = (&q[at..][..rows * hs], &g[at..][..rows * hs], &p[pt..][..rows * ta]);
                            let end = (pos + i0 + rows).min(ta); // the last row sees keys 0..end
                            let outs = (dqb, &mut *dkg, &mut *dvg);
                            backward_block(ins, (kg, vg), outs, &mut ds, (end, ta, hs, scale));
                        }
                    }
                },
            )
        });
    (dq, dk, dv)
}

/// One block of a head's backward: its rows of q and dO (rows, hs) and of P (rows, T_all),
/// whose keys stop at `end`. Writes the block's dQ and adds into the group's dK and dV
/// (T_all, hs), which start at zero. `ds` is scratch of at least rows × end.
#[inline(always)]
fn backward_block<T: Float + 'static>(
    (qb, gb, pb): (&[T], &[T], &[T]),
    (kg, vg): (&[T], &[T]),
    (dqb, dk, dv): (&mut [T], &mut [T], &mut [T]),
    ds: &mut [T],
    (end, ta, hs, scale): (usize, usize, usize, T),
) {
    let rows = dqb.len() / hs;
    let ds = &mut ds[..rows * end]; // (rows, end): dP, then dS in place
    matmul_serial((end, hs, rows), (dv, (hs, 1)), (pb, (1, ta)), (gb, (hs, 1)), true); // dV += Pᵀ dO
    matmul_serial((rows, end, hs), (ds, (end, 1)), (gb, (hs, 1)), (vg, (1, hs)), false); // dP = dO vᵀ
    for (dsi, pi) in ds.chunks_mut(end).zip(pb.chunks(ta)) {
        let dot = dsi.iter().zip(pi).fold(T::zero(), |acc, (&a, &b)| acc + a * b);
        for (x, &pj) in dsi.iter_mut().zip(pi) {
            *x = scale * pj * (*x - dot);
        }
    }
    matmul_serial((rows, hs, end), (dqb, (hs, 1)), (ds, (end, 1)), (kg, (hs, 1)), false); // dQ = dS k
    matmul_serial((end, hs, rows), (dk, (hs, 1)), (ds, (1, end)), (qb, (hs, 1)), true);
    // dK += dSᵀ q
}

fn cpu<T: WithDType>(x: Vec<T>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(x, shape, &Device::Cpu)
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(&self, qs: &S, ql: &Layout, ks: &S, kl: &Layout, vs: &S, vl: &Layout) -> Out {
        let d = dims(ql, kl, self.pos)?;
        let (b, nh, t, _) = ql.shape().dims4()?;
        let out = float_op!("attention", [(q, qs, ql), (k, ks, kl), (v, vs, vl)], |T| {
            let (o, p) = forward::<T>((q, k, v), d, self.scale as T, self.keep);
            if self.keep {
                let probs = cpu(p, &[b, nh, t, d.ta])?;
                *self.probs.lock().map_err(|_| candle_core::Error::Msg("attention: poisoned".into()))? =
                    Some(probs);
            }
            o
        });
        Ok((out, ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _o: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stash = self.probs.lock().map_err(|_| candle_core::Error::Msg("attention: poisoned".into()))?;
        let Some(p) = stash.as_ref() else {
            candle_core::bail!("attention: backward without the forward's probabilities");
        };
        let g = g.contiguous()?;
        let (d, qd, kd) = (dims(q.layout(), k.layout(), self.pos)?, q.dims().to_vec(), k.dims().to_vec());
        let ((qs, ql), (ks, kl), (vs, vl)) =
            (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
        let ((ps, pl), (gs, gl)) = (p.storage_and_layout(), g.storage_and_layout());
        macro_rules! run {
            ($t:ty) => {{
                let ins = (held::<$t>(&qs, ql)?, held::<$t>(&ks, kl)?, held::<$t>(&vs, vl)?);
                let (dq, dk, dv) =
                    backward::<$t>(ins, held::<$t>(&ps, pl)?, held::<$t>(&gs, gl)?, d, self.scale as $t);
                (cpu(dq, &qd)?, cpu(dk, &kd)?, cpu(dv, &kd)?)
            }};
        }
        let (dq, dk, dv) = match q.dtype() {
            candle_core::DType::F32 => run!(f32),
            candle_core::DType::F64 => run!(f64),
            dt => candle_core::bail!("attention: f32 or f64 only, got {dt:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
