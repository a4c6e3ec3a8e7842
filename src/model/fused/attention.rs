//! Causal attention in one op: `softmax(scale · q kᵀ + mask) v`, per (head, block of rows) in
//! parallel, each group of query heads sharing its key/value head (GQA) without `repeat_kv`'s
//! copies. Composed, candle ran the two products as batched matmuls of tiny matrices (3.3–3.6x
//! slower than a BLAS on SmolLM2's shapes, `scripts/bench/README.md`) and kept the scores and the
//! probabilities for the backward. This keeps each row's softmax max and sum, as FlashAttention
//! keeps its log-sum-exp, and the backward recomputes the probabilities a block at a time: the
//! (B, nh, T, T) probabilities were 141 MB of a SmolLM2 step at b2×256, and grow with T².

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

use super::exp::KernelExp;
use super::softmax::{softmax_again, softmax_row};
use super::{data, held, matmul_serial, wide, Out, S};

/// Attention of contiguous `q` (B, T, nh·hs) over `k`, `v` (B, T_all, nkv·hs), in the layout the
/// projections make (`heads` = (nh, nkv), nh a multiple of nkv: query head h reads kv head
/// h / (nh / nkv)); query i sits at position `pos + i` and sees keys `0..=pos + i`. Returns
/// (B, T, nh·hs), the layout `o_proj` takes. Reading the heads through strides spares the
/// transposes and copies around the op, which were graph nodes too: each a zeroed gradient and
/// an added copy in candle's backward. The backward recomputes P from q, k and the kept row
/// statistics, then dV = Pᵀ dO, dS = scale · P ⊙ (dO vᵀ − rowsum), dQ = dS k, dK = dSᵀ q.
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
    q.apply_op3(k, v, Attention { heads: (nh, nkv), scale, pos, keep, stats: Mutex::default() })
}

struct Attention {
    heads: (usize, usize),
    scale: f64,
    pos: usize,
    /// Whether a backward may come, so the row statistics are worth keeping.
    keep: bool,
    /// Each query row's softmax max and sum (B·nh, T, 2), set by the forward when `keep`.
    stats: Mutex<Option<Tensor>>,
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

/// O (B·nh, T, hs), and when `keep` each row's softmax (max, sum) (B·nh, T, 2), in parallel
/// over (head, block of query rows).
fn forward<T: KernelExp + Send + Sync + 'static>(
    (q, k, v): (&[T], &[T], &[T]),
    d: Dims,
    scale: T,
    keep: bool,
) -> (Vec<T>, Vec<T>) {
    let Dims { rep, t, ta, hs, pos, nh, nkv } = d;
    let (qs, ks) = (nh * hs, nkv * hs); // row strides of q and of k, v
    let mut out = vec![T::zero(); q.len()];
    let mut stats = vec![T::zero(); if keep { q.len() / hs * 2 } else { 0 }];
    // One block: `o` (rows, hs) of head `h` from row `i0`; `st` its rows' (max, sum), or empty.
    let block = |h: usize, i0: usize, o: &mut [T], st: &mut [T]| {
        wide(
            #[inline(always)]
            || {
                let rows = o.len() / hs;
                let end = (pos + i0 + rows).min(ta); // the last row sees keys 0..end
                let (kg, vg) = (&k[d.kv_at(h / rep)..], &v[d.kv_at(h / rep)..]);
                let mut s = vec![T::zero(); rows * end]; // (rows, end) scores
                let mut p = vec![T::zero(); rows * end]; // (rows, end) probabilities
                matmul_serial(
                    (rows, end, hs),
                    (&mut s, (end, 1)),
                    (&q[d.q_at(h, i0)..], (qs, 1)),
                    (kg, (1, ks)),
                    false,
                ); // q kᵀ
                for (i, (si, pi)) in s.chunks(end).zip(p.chunks_mut(end)).enumerate() {
                    let (max, sum) = softmax_row(si, pi, scale, (pos + i0 + i + 1).min(ta));
                    if let Some(st) = st.get_mut(2 * i..2 * i + 2) {
                        st.copy_from_slice(&[max, sum]);
                    }
                }
                matmul_serial((rows, hs, end), (o, (hs, 1)), (&p, (end, 1)), (vg, (ks, 1)), false);
                // P v
            },
        )
    };
    if keep {
        out.par_chunks_mut(t * hs).zip(stats.par_chunks_mut(t * 2)).enumerate().for_each(|(h, (oh, sh))| {
            oh.par_chunks_mut(ROWS * hs)
                .zip(sh.par_chunks_mut(ROWS * 2))
                .enumerate()
                .for_each(|(b, (o, st))| block(h, b * ROWS, o, st))
        });
    } else {
        out.par_chunks_mut(t * hs).enumerate().for_each(|(h, oh)| {
            oh.par_chunks_mut(ROWS * hs).enumerate().for_each(|(b, o)| block(h, b * ROWS, o, &mut []))
        });
    }
    (out, stats)
}

/// dQ (B·nh, T, hs), dK and dV (B·nkv, T_all, hs), in parallel over the kv groups; a group's
/// dK and dV sum over its query heads and their row blocks in order. `st` holds each query
/// row's softmax (max, sum) from the forward.
fn backward<T: KernelExp + Send + Sync + 'static>(
    (q, k, v): (&[T], &[T], &[T]),
    st: &[T],
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
                    let kv = (&k[d.kv_at(grp)..], &v[d.kv_at(grp)..]);
                    let mut scratch = (vec![T::zero(); ROWS * ta], vec![T::zero(); ROWS * ta]);
                    for (r, dqh) in dqg.chunks_mut(t * hs).enumerate() {
                        let h = grp * rep + r;
                        for (b, dqb) in dqh.chunks_mut(ROWS * hs).enumerate() {
                            let (i0, rows) = (b * ROWS, dqb.len() / hs);
                            let at = d.q_at(h, i0);
                            let ins = (&q[at..], &g[at..], &st[(h * t + i0) * 2..][..rows * 2]);
                            let end = (pos + i0 + rows).min(ta); // the last row sees keys 0..end
                            let outs = (dqb, &mut *dkg, &mut *dvg);
                            let sizes = (pos + i0, end, hs, (nh * hs, nkv * hs));
                            backward_block(ins, kv, outs, &mut scratch, sizes, scale);
                        }
                    }
                },
            )
        });
    (dq, dk, dv)
}

/// One block of a head's backward: its rows of q and dO (rows, hs; row stride `qs`), the first
/// at position `at`, and their softmax (max, sum); its keys stop at `end`, and k and v rows have
/// stride `ks`. Remakes the block's P, writes its dQ, and adds into the group's dK and dV
/// (T_all, hs), which start at zero. `p` and `ds` are scratch of at least rows × end.
#[inline(always)]
fn backward_block<T: KernelExp + 'static>(
    (qb, gb, st): (&[T], &[T], &[T]),
    (kg, vg): (&[T], &[T]),
    (dqb, dk, dv): (&mut [T], &mut [T], &mut [T]),
    (p, ds): &mut (Vec<T>, Vec<T>),
    (at, end, hs, (qs, ks)): (usize, usize, usize, (usize, usize)),
    scale: T,
) {
    let rows = dqb.len() / hs;
    // (rows, end) each. P again: the scores as the forward made them, then its softmax from
    // the kept (max, sum).
    let (p, ds) = (&mut p[..rows * end], &mut ds[..rows * end]);
    matmul_serial((rows, end, hs), (ds, (end, 1)), (qb, (qs, 1)), (kg, (1, ks)), false); // q kᵀ
    p.fill(T::zero()); // the masked keys
    for (i, (si, pi)) in ds.chunks(end).zip(p.chunks_mut(end)).enumerate() {
        softmax_again(si, pi, scale, (at + i + 1).min(end), (st[2 * i], st[2 * i + 1]));
    }
    matmul_serial((end, hs, rows), (dv, (hs, 1)), (p, (1, end)), (gb, (qs, 1)), true); // dV += Pᵀ dO
    matmul_serial((rows, end, hs), (ds, (end, 1)), (gb, (qs, 1)), (vg, (1, ks)), false); // dP = dO vᵀ
    for (dsi, pi) in ds.chunks_mut(end).zip(p.chunks(end)) {
        let dot = super::reduce::dot(dsi, pi);
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
            let (o, st) = forward::<T>((q, k, v), d, self.scale as T, self.keep);
            if self.keep {
                let st = cpu(st, &[q.len() / d.hs / d.t, d.t, 2])?; // (B·nh, T, (max, sum))
                *self.stats.lock().map_err(|_| candle_core::Error::Msg("attention: poisoned".into()))? =
                    Some(st);
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
        let stash = self.stats.lock().map_err(|_| candle_core::Error::Msg("attention: poisoned".into()))?;
        let Some(st) = stash.as_ref() else {
            candle_core::bail!("attention: backward without the forward's softmax statistics");
        };
        let g = g.contiguous()?;
        let d = dims(q.layout(), k.layout(), self.heads, self.pos)?;
        let (qd, kd) = (q.dims().to_vec(), k.dims().to_vec());
        let ((qs, ql), (ks, kl), (vs, vl)) =
            (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
        let ((ss, sl), (gs, gl)) = (st.storage_and_layout(), g.storage_and_layout());
        macro_rules! run {
            ($t:ty) => {{
                let ins = (held::<$t>(&qs, ql)?, held::<$t>(&ks, kl)?, held::<$t>(&vs, vl)?);
                let (dq, dk, dv) =
                    backward::<$t>(ins, held::<$t>(&ss, sl)?, held::<$t>(&gs, gl)?, d, self.scale as $t);
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
