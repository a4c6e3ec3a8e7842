//! A block's MLP on the fused CPU path as two ops: gate_proj and up_proj in one (`gate_up`),
//! then SwiGLU, down_proj and the residual in another (`swiglu_down_add`). As separate ops,
//! SwiGLU's output (B, T, I) stayed alive until the backward, as down_proj's input for its dW.
//! Here the backward makes it again from gate and up, which SwiGLU's backward keeps anyway:
//! one elementwise pass for B·T·I floats a layer (94 MB of (c)'s peak). Both ops make the
//! same floating-point operations in the same order as the separate ones, so the same bits.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Tensor, WithDType};
use rayon::prelude::*;

use super::exp::KernelExp;
use super::linear::{grads, product, with_last};
use super::swiglu::{silu, silu_grad};
use super::{data, held, matmul, wide, Out, S};

/// `[x Wgᵀ | x Wuᵀ]` for `x` (…, C) and trainable `wg`, `wu` (I, C): (…, 2I), each row its
/// gate then its up projection, as [`swiglu_down_add`] reads them.
pub fn gate_up(x: &Tensor, wg: &Tensor, wu: &Tensor) -> Result<Tensor> {
    if wg.dims() != wu.dims() || wg.rank() != 2 || x.dims().last() != Some(&wg.dim(1)?) || wg.dim(1)? == 0 {
        candle_core::bail!(
            "gate-up: x {:?}, gate {:?} and up {:?} disagree",
            x.shape(),
            wg.shape(),
            wu.shape()
        );
    }
    x.contiguous()?.apply_op3(&wg.contiguous()?, &wu.contiguous()?, GateUp)
}

/// `residual + (silu(gate) ⊙ up) Wdᵀ` for `gu` (…, 2I) from [`gate_up`], a trainable `wd`
/// (C, I) and `residual` (…, C): (…, C).
pub fn swiglu_down_add(gu: &Tensor, wd: &Tensor, residual: &Tensor) -> Result<Tensor> {
    let (d_out, i) = wd.dims2()?;
    let (gd, rd) = (gu.dims(), residual.dims());
    let rows_agree =
        gd.len() == rd.len() && gd[..gd.len().saturating_sub(1)] == rd[..rd.len().saturating_sub(1)];
    if gd.last() != Some(&(2 * i)) || rd.last() != Some(&d_out) || !rows_agree || i == 0 {
        candle_core::bail!(
            "swiglu-down-add: gate|up {:?}, weight {:?} and residual {:?} disagree",
            gu.shape(),
            wd.shape(),
            residual.shape()
        );
    }
    gu.contiguous()?.apply_op3(&wd.contiguous()?, &residual.contiguous()?, SwiGluDownAdd)
}

struct GateUp;

impl CustomOp3 for GateUp {
    fn name(&self) -> &'static str {
        "gate-up"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout, gs: &S, gl: &Layout, us: &S, ul: &Layout) -> Out {
        let (i, c) = gl.shape().dims2()?;
        let out = float_op!("gate-up", [(x, xs, xl), (wg, gs, gl), (wu, us, ul)], |T| {
            let m = x.len() / c; // (…, C) read as (M, C)
            let mut y: Vec<T> = vec![0.0; m * 2 * i]; // (M, 2I): gate | up
            matmul((m, i, c), (&mut y, (2 * i, 1)), (x, (c, 1)), (wg, (1, c)), false);
            matmul((m, i, c), (&mut y[i..], (2 * i, 1)), (x, (c, 1)), (wu, (1, c)), false);
            y
        });
        Ok((out, with_last(xl, 2 * i))) // (M, 2I) is (…, 2I)
    }

    /// Each projection's backward on its half of g; x's gradient is their sum, as candle
    /// summed the two linears' (a + b: the same bits in either order). Not the second product
    /// added into the first: gemm would add it a block of the inner dimension at a time, which
    /// rounds differently.
    fn bwd(
        &self,
        x: &Tensor,
        wg: &Tensor,
        wu: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want_x = x.track_op();
        let i = wg.dim(0)?;
        // Detached, as in `linear`: no gradient carries a graph.
        let (xd, wgd, wud, g) = (x.detach(), wg.detach(), wu.detach(), g.detach().contiguous()?);
        let (xs, xl) = xd.storage_and_layout();
        let (gs, gl) = wgd.storage_and_layout();
        let (us, ul) = wud.storage_and_layout();
        let (ds, dl) = g.storage_and_layout();
        macro_rules! go {
            ($t:ty) => {{
                let (xv, gv, uv, dv) =
                    (held::<$t>(&xs, xl)?, held::<$t>(&gs, gl)?, held::<$t>(&us, ul)?, held::<$t>(&ds, dl)?);
                let (dx_g, dwg) = grads::<$t>((xv, gv, (dv, 2 * i)), (want_x, wg.track_op()), wg)?;
                let (dx_u, dwu) = grads::<$t>((xv, uv, (&dv[i..], 2 * i)), (want_x, wu.track_op()), wu)?;
                let dx = match (dx_g, dx_u) {
                    (Some(mut a), Some(b)) => {
                        a.iter_mut().zip(&b).for_each(|(a, &b)| *a += b);
                        Some(Tensor::from_vec(a, x.shape(), x.device())?)
                    }
                    _ => None,
                };
                (dx, dwg, dwu)
            }};
        }
        Ok(match x.dtype() {
            candle_core::DType::F32 => go!(f32),
            candle_core::DType::F64 => go!(f64),
            dt => candle_core::bail!("gate-up: f32 or f64 only, not {dt:?}"),
        })
    }
}

struct SwiGluDownAdd;

impl CustomOp3 for SwiGluDownAdd {
    fn name(&self) -> &'static str {
        "swiglu-down-add"
    }

    fn cpu_fwd(&self, gs: &S, gl: &Layout, ws: &S, wl: &Layout, rs: &S, rl: &Layout) -> Out {
        let i = wl.shape().dims2()?.1;
        let out = float_op!("swiglu-down-add", [(gu, gs, gl), (w, ws, wl), (r, rs, rl)], |T| {
            let mut y = product::<T>(&swiglu_rows(gu, i), w, i);
            // The residual after the product, as `linear_add` adds it.
            y.iter_mut().zip(r).for_each(|(y, &r)| *y += r);
            y
        });
        Ok((out, rl.shape().clone()))
    }

    /// down_proj's backward on SwiGLU's output made again, then SwiGLU's backward into one
    /// (…, 2I) gradient; the residual's gradient is g itself.
    fn bwd(
        &self,
        gu: &Tensor,
        wd: &Tensor,
        residual: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (c, i) = wd.dims2()?;
        let (gud, wdd, gd) = (gu.detach(), wd.detach(), g.detach().contiguous()?);
        let (us, ul) = gud.storage_and_layout();
        let (ws, wl) = wdd.storage_and_layout();
        let (ds, dl) = gd.storage_and_layout();
        macro_rules! go {
            ($t:ty) => {{
                let (uv, wv, dv) = (held::<$t>(&us, ul)?, held::<$t>(&ws, wl)?, held::<$t>(&ds, dl)?);
                let h = swiglu_rows(uv, i); // (M, I)
                let (dh, dw) = grads::<$t>((&h, wv, (dv, c)), (gu.track_op(), wd.track_op()), wd)?;
                drop(h);
                let dgu =
                    dh.map(|dh| Tensor::from_vec(swiglu_back_rows(uv, &dh, i), gu.shape(), gu.device()));
                (dgu.transpose()?, dw)
            }};
        }
        let (dgu, dw) = match gu.dtype() {
            candle_core::DType::F32 => go!(f32),
            candle_core::DType::F64 => go!(f64),
            dt => candle_core::bail!("swiglu-down-add: f32 or f64 only, not {dt:?}"),
        };
        Ok((dgu, dw, residual.track_op().then(|| g.clone())))
    }
}

/// Rows per parallel task of the elementwise passes.
const ROWS: usize = 8;

/// `silu(gate) ⊙ up` for rows of `gu` (M, 2I): (M, I).
fn swiglu_rows<T: KernelExp + WithDType>(gu: &[T], i: usize) -> Vec<T> {
    let mut h = vec![T::zero(); gu.len() / 2]; // (M, I)
    h.par_chunks_mut(ROWS * i).zip(gu.par_chunks(ROWS * 2 * i)).for_each(|(h, gu)| {
        wide(
            #[inline(always)]
            || {
                for (h, gu) in h.chunks_mut(i).zip(gu.chunks(2 * i)) {
                    let (gate, up) = gu.split_at(i);
                    for ((h, &g), &u) in h.iter_mut().zip(gate).zip(up) {
                        *h = silu(g) * u;
                    }
                }
            },
        )
    });
    h
}

/// SwiGLU's backward for rows of `gu` (M, 2I) and dL/dh (M, I): (M, 2I), dL/dgate =
/// dh ⊙ up ⊙ silu'(gate) then dL/dup = dh ⊙ silu(gate) in each row.
fn swiglu_back_rows<T: KernelExp + WithDType>(gu: &[T], dh: &[T], i: usize) -> Vec<T> {
    let mut out = vec![T::zero(); gu.len()]; // (M, 2I)
    out.par_chunks_mut(ROWS * 2 * i).zip(gu.par_chunks(ROWS * 2 * i).zip(dh.par_chunks(ROWS * i))).for_each(
        |(out, (gu, dh))| {
            wide(
                #[inline(always)]
                || {
                    for ((out, gu), dh) in out.chunks_mut(2 * i).zip(gu.chunks(2 * i)).zip(dh.chunks(i)) {
                        let (gate, up) = gu.split_at(i);
                        let (dgate, dup) = out.split_at_mut(i);
                        for ((((dg, du), &g), &u), &d) in
                            dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up).zip(dh)
                        {
                            *dg = d * u * silu_grad(g);
                            *du = d * silu(g);
                        }
                    }
                },
            )
        },
    );
    out
}
