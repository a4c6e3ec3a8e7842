//! Causal attention in one op: `softmax(scale · q kᵀ + mask) v`, per (head, block of rows) in
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

/// Attention of contiguous `q` (B, T, nh·hs) over `k`, `v` (B, T_all, nkv·hs), in the layout the
/// projections make (`heads` = (nh, nkv), nh a multiple of nkv: query head h reads kv head
/// h / (nh / nkv)); query i sits at position `pos + i` and sees keys `0..=pos + i`. Returns
/// (B, T, nh·hs), the layout `o_proj` takes. Reading the heads through strides spares the
/// transposes and copies around the op, which were graph nodes too: each a zeroed gradient and
/// an added copy in candle's backward. The backward uses the kept probabilities:
/// dV = Pᵀ dO, dS = scale · P ⊙ (dO vᵀ − rowsum), dQ = dS k, dK = dSᵀ q.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (nh, nkv): (usize, usize),
    scale: f64,
    pos: usize,
) -> Result<Tensor> {
    let (b, t, wq) = q.dims3()?;
    let (bk, ta, wk) = k.dims3()?;
    let hs = wq.checked_div(nh).unwrap_or(0);
    let agree = k.dims() == v.dims() && bk == b && hs > 0 && wq == nh * hs && nkv > 0 && nh % nkv == 0;
    if !agree || wk != nkv * hs || ta == 0 || pos + t > ta {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} in {nh} and {nkv} heads at position {pos} disagree",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    let keep = q.track_op() || k.track_op() || v.track_op();
    q.apply_op3(k, v, Attention { heads: (nh, nkv), scale, pos, keep, probs: Mutex::default() })
}

struct Attention {
    heads: (usize, usize),
    scale: f64,
    pos: usize,
    /// Whether a backward may come, so the probabilities are worth keeping.
    keep: bool,
    /// P (B·nh, T, T_all), set by the forward when `keep`.
    probs: Mutex<Option<Tensor>>,
}

/// The sizes of one call: query heads per kv head, T, T_all, hs, the position, and the heads
/// per token of q and of k/v.
#[derive(Clone, Copy)]
struct Dims {
    rep: usize,
    t: usize,
    ta: usize,
    hs: usize,
    pos: usize,
    nh: usize,
    nkv: usize,
}

impl Dims {
    /// Where row `i` of query head `h` (of all B·nh) starts in q, dO or O: (B, T, nh, hs).
    fn q_at(&self, h: usize, i: usize) -> usize {
        ((h / self.nh * self.t + i) * self.nh + h % self.nh) * self.hs
    }

    /// Where kv group `g` (of all B·nkv) starts in k or v: (B, T_all, nkv, hs).
    fn kv_at(&self, g: usize) -> usize {
        (g / self.nkv * self.ta * self.nkv + g % self.nkv) * self.hs
    }
}

fn dims(ql: &Layout, kl: &Layout, (nh, nkv): (usize, usize), pos: usize) -> Result<Dims> {
    let (_, t, wq) = ql.shape().dims3()?;
    let (_, ta, _) = kl.shape().dims3()?;
    Ok(Dims { rep: nh / nkv, t, ta, hs: wq / nh, pos, nh, nkv })
}

/// (B·n, T, hs) per head -> (B, T, n·hs) per token, in parallel over tokens.
fn heads_to_tokens<T: Float + Send + Sync>(x: &[T], n: usize, t: usize, hs: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(n * hs).enumerate().for_each(|(row, o)| {
        let (b, i) = (row / t, row % t);
        for (h, oh) in o.chunks_mut(hs).enumerate() {
            oh.copy_from_slice(&x[((b * n + h) * t + i) * hs..][..hs]);
        }
    });
    out
}

/// Query rows per task. A block's keys end at its last row's position, so the masked part of
/// the scores is mostly never computed, and the tasks (heads × blocks) keep both cores busy
/// where the groups alone (3 for SmolLM2 at batch 1) would not.
const ROWS: usize = 32;

/// O (B·nh, T, hs), and P when `keep`, in parallel over (head, block of query rows).
fn forward<T: KernelExp + Send + Sync + 'static>(
    (q, k, v): (&[T], &[T], &[T]),
    d: Dims,
    scale: T,
    keep: bool,
) -> (Vec<T>, Vec<T>) {
    let Dims { rep, t, ta, hs, pos, nh, nkv } = d;
    let (qs, ks) = (nh * hs, nkv * hs); // row strides of q and of k, v
    let mut out = vec![T::zero(); q.len()];
    let mut probs = if keep { vec![T::zero(); q.len() / hs * ta] } else { Vec::new() };
    // One block: `o` (rows, hs) of head `h` from row `i0`; `p` its (rows, T_all) probabilities.
    let block = |h: usize, i0: usize, o: &mut [T], p: Option<&mut [T]>| {
        wide(
            #[inline(always)]
            || {
                let rows = o.len() / hs;
                let end = (pos + i0 + rows).min(ta); // the last row sees keys 0..end
                let (kg, vg) = (&k[d.kv_at(h / rep)..], &v[d.kv_at(h / rep)..]);
                let qb = &q[d.q_at(h, i0)..];
                let mut s = vec![T::zero(); rows * end]; // (rows, end) scores
                matmul_serial((rows, end, hs), (&mut s, (end, 1)), (qb, (qs, 1)), (kg, (1, ks)), false); // q kᵀ
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
                matmul_serial((rows, hs, end), (o, (hs, 1)), (p, (stride, 1)), (vg, (ks, 1)), false);
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

/// dQ (B·nh, T, hs), dK and dV (B·nkv, T_all, hs), in parallel over the kv groups; a group's
/// dK and dV sum over its query heads and their row blocks in order.
fn backward<T: Float + Send + Sync + 'static>(
    (q, k, v): (&[T], &[T], &[T]),
    p: &[T],
    g: &[T],
    d: Dims,
    scale: T,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims { rep, t, ta, hs, pos, nh, nkv } = d;
    let (mut dq, mut dk, mut dv) =
        (vec![T::zero(); q.len()], vec![T::zero(); k.len()], vec![T::zero(); v.len()]);
    dq.par_chunks_mut(rep * t * hs)
        .zip(dk.par_chunks_mut(ta * hs).zip(dv.par_chunks_mut(ta * hs)))
        .enumerate()
        .for_each(|(grp, (dqg, (dkg, dvg)))| {
            wide(
                #[inline(always)]
                || {
                    let (kg, vg) = (&k[d.kv_at(grp)..], &v[d.kv_at(grp)..]);
                    let mut ds = vec![T::zero(); ROWS * ta];
                    for (r, dqh) in dqg.chunks_mut(t * hs).enumerate() {
                        let h = grp * rep + r;
                        for (b, dqb) in dqh.chunks_mut(ROWS * hs).enumerate() {
                            let (i0, rows) = (b * ROWS, dqb.len() / hs);
                            let (at, pt) = (d.q_at(h, i0), (h * t + i0) * ta);
                            let ins = (&q[at..], &g[at..], &p[pt..][..rows * ta]);
                            let end = (pos + i0 + rows).min(ta); // the last row sees keys 0..end
                            let outs = (dqb, &mut *dkg, &mut *dvg);
                            let sizes = (end, ta, hs, (nh * hs, nkv * hs));
                            backward_block(ins, (kg, vg), outs, &mut ds, sizes, scale);
                        }
                    }
                },
            )
        });
    (dq, dk, dv)
}

/// One block of a head's backward: its rows of q and dO (rows, hs; row stride `qs`) and of P
/// (rows, T_all), whose keys stop at `end`; k and v rows have stride `ks`. Writes the block's
/// dQ and adds into the group's dK and dV (T_all, hs), which start at zero. `ds` is scratch of
/// at least rows × end.
#[inline(always)]
fn backward_block<T: Float + 'static>(
    (qb, gb, pb): (&[T], &[T], &[T]),
    (kg, vg): (&[T], &[T]),
    (dqb, dk, dv): (&mut [T], &mut [T], &mut [T]),
    ds: &mut [T],
    (end, ta, hs, (qs, ks)): (usize, usize, usize, (usize, usize)),
    scale: T,
) {
    let rows = dqb.len() / hs;
    let ds = &mut ds[..rows * end]; // (rows, end): dP, then dS in place
    matmul_serial((end, hs, rows), (dv, (hs, 1)), (pb, (1, ta)), (gb, (qs, 1)), true); // dV += Pᵀ dO
    matmul_serial((rows, end, hs), (ds, (end, 1)), (gb, (qs, 1)), (vg, (1, ks)), false); // dP = dO vᵀ
    for (dsi, pi) in ds.chunks_mut(end).zip(pb.chunks(ta)) {
        let dot = dsi.iter().zip(pi).fold(T::zero(), |acc, (&a, &b)| acc + a * b);
        for (x, &pj) in dsi.iter_mut().zip(pi) {
            *x = scale * pj * (*x - dot);
        }
    }
    matmul_serial((rows, hs, end), (dqb, (hs, 1)), (ds, (end, 1)), (kg, (ks, 1)), false); // dQ = dS k
    matmul_serial((end, hs, rows), (dk, (hs, 1)), (ds, (1, end)), (qb, (qs, 1)), true);
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
        let d = dims(ql, kl, self.heads, self.pos)?;
        let out = float_op!("attention", [(q, qs, ql), (k, ks, kl), (v, vs, vl)], |T| {
            let (o, p) = forward::<T>((q, k, v), d, self.scale as T, self.keep);
            if self.keep {
                let probs = cpu(p, &[q.len() / d.hs / d.t, d.t, d.ta])?; // (B·nh, T, T_all)
                *self.probs.lock().map_err(|_| candle_core::Error::Msg("attention: poisoned".into()))? =
                    Some(probs);
            }
            heads_to_tokens(&o, d.nh, d.t, d.hs) // (B·nh, T, hs) -> (B, T, nh·hs)
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
        let d = dims(q.layout(), k.layout(), self.heads, self.pos)?;
        let (qd, kd) = (q.dims().to_vec(), k.dims().to_vec());
        let ((qs, ql), (ks, kl), (vs, vl)) =
            (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
        let ((ps, pl), (gs, gl)) = (p.storage_and_layout(), g.storage_and_layout());
        macro_rules! run {
            ($t:ty) => {{
                let ins = (held::<$t>(&qs, ql)?, held::<$t>(&ks, kl)?, held::<$t>(&vs, vl)?);
                let (dq, dk, dv) =
                    backward::<$t>(ins, held::<$t>(&ps, pl)?, held::<$t>(&gs, gl)?, d, self.scale as $t);
                // per head -> per token: (B·nh, T, hs) -> (B, T, nh·hs), (B·nkv, T_all, hs) ->
                // (B, T_all, nkv·hs)
                let tokens = |x: Vec<$t>, n: usize, t: usize| heads_to_tokens(&x, n, t, d.hs);
                let (dq, dk, dv) = (tokens(dq, d.nh, d.t), tokens(dk, d.nkv, d.ta), tokens(dv, d.nkv, d.ta));
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
