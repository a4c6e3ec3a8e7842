//! RMSNorm, with a backward that recomputes the row scale.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use num_traits::Float;
use rayon::prelude::*;

use super::{data, wide, Out, S};

/// RMSNorm `w ⊙ x / sqrt(mean(x²) + eps)` over the last dim of contiguous `x` (…, C) with
/// `w` (C,). The backward recomputes the row's scale from `x` rather than keeping a
/// normalised copy alive: dL/dx = (g⊙w − x̂ · mean(g⊙w⊙x̂)) / s, dL/dw = Σ_rows g⊙x̂.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.apply_op2(w, RmsNorm { eps })
}

struct RmsNorm {
    eps: f64,
}

/// The row's `sqrt(mean(x²) + eps)`.
#[inline(always)]
fn rms<T: Float>(x: &[T], eps: T) -> T {
    let ss = super::reduce::dot(x, x);
    (ss / T::from(x.len()).unwrap_or(T::one()) + eps).sqrt()
}

fn rms_norm_fwd<T: Float + Send + Sync>(x: &[T], w: &[T], eps: T) -> Vec<T> {
    let n = w.len();
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(y, x)| {
        wide(
            #[inline(always)]
            || {
                let s = rms(x, eps);
                for ((yj, &xj), &wj) in y.iter_mut().zip(x).zip(w) {
                    *yj = xj / s * wj;
                }
            },
        )
    });
    out
}

fn rms_norm_dx<T: Float + Send + Sync>(x: &[T], w: &[T], g: &[T], eps: T) -> Vec<T> {
    let n = w.len();
    let inv_n = T::one() / T::from(n).unwrap_or(T::one());
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(n).zip(x.par_chunks(n).zip(g.par_chunks(n))).for_each(|(d, (x, g))| {
        wide(
            #[inline(always)]
            || {
                let s = rms(x, eps);
                let dot = super::reduce::sum3(x, g, w, |xj, gj, wj| gj * wj * (xj / s));
                let m = dot * inv_n;
                for (((dj, &xj), &gj), &wj) in d.iter_mut().zip(x).zip(g).zip(w) {
                    *dj = (gj * wj - xj / s * m) / s;
                }
            },
        )
    });
    out
}

/// Rows per block of the weight-gradient sum: blocks run in parallel and are added in order,
/// so the result does not depend on scheduling (resume stays bit-exact).
const DW_BLOCK: usize = 64;

fn rms_norm_dw<T: Float + Send + Sync>(x: &[T], g: &[T], n: usize, eps: T) -> Vec<T> {
    let partial: Vec<Vec<T>> = x
        .par_chunks(n * DW_BLOCK)
        .zip(g.par_chunks(n * DW_BLOCK))
        .map(|(xb, gb)| {
            wide(
                #[inline(always)]
                || {
                    let mut acc = vec![T::zero(); n];
                    for (x, g) in xb.chunks(n).zip(gb.chunks(n)) {
                        let s = rms(x, eps);
                        for ((a, &xj), &gj) in acc.iter_mut().zip(x).zip(g) {
                            *a = *a + gj * (xj / s);
                        }
                    }
                    acc
                },
            )
        })
        .collect();
    let mut dw = vec![T::zero(); n];
    for p in partial {
        for (d, v) in dw.iter_mut().zip(p) {
            *d = *d + v;
        }
    }
    dw
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout, ws: &S, wl: &Layout) -> Out {
        let n = wl.shape().elem_count();
        // n = 0 would make zero-length row chunks, which rayon rejects.
        if n == 0 || xl.dims().last() != Some(&n) {
            candle_core::bail!("rms norm: x {:?} and weight {:?} disagree", xl.shape(), wl.shape());
        }
        let out = float_op!("rms norm", [(x, xs, xl), (w, ws, wl)], |T| rms_norm_fwd(x, w, self.eps as T));
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, xs: &super::C, xl: &Layout, ws: &super::C, wl: &Layout) -> super::CudaOut {
        let n = wl.shape().elem_count();
        if n == 0 || xl.dims().last() != Some(&n) {
            candle_core::bail!("rms norm: x {:?} and weight {:?} disagree", xl.shape(), wl.shape());
        }
        Ok((super::cuda::rms_norm((xs, xl), (ws, wl), self.eps)?, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &RmsNormDx { eps: self.eps })?;
        // A frozen norm weight (LoRA) needs no gradient.
        let dw =
            if w.track_op() { Some(x.apply_op2_no_bwd(&g, &RmsNormDw { eps: self.eps })?) } else { None };
        Ok((Some(dx), dw))
    }
}

struct RmsNormDx {
    eps: f64,
}

impl candle_core::CustomOp3 for RmsNormDx {
    fn name(&self) -> &'static str {
        "rms-norm-dx"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout, ws: &S, wl: &Layout, gs: &S, gl: &Layout) -> Out {
        let out = float_op!("rms norm backward", [(x, xs, xl), (w, ws, wl), (g, gs, gl)], |T| rms_norm_dx(
            x,
            w,
            g,
            self.eps as T
        ));
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &super::C,
        xl: &Layout,
        ws: &super::C,
        wl: &Layout,
        gs: &super::C,
        gl: &Layout,
    ) -> super::CudaOut {
        Ok((super::cuda::rms_norm_dx((xs, xl), (ws, wl), (gs, gl), self.eps)?, xl.shape().clone()))
    }
}

struct RmsNormDw {
    eps: f64,
}

impl CustomOp2 for RmsNormDw {
    fn name(&self) -> &'static str {
        "rms-norm-dw"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout, gs: &S, gl: &Layout) -> Out {
        let n = *xl.dims().last().unwrap_or(&0);
        let out = float_op!("rms norm backward", [(x, xs, xl), (g, gs, gl)], |T| rms_norm_dw(
            x,
            g,
            n,
            self.eps as T
        ));
        Ok((out, Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, xs: &super::C, xl: &Layout, gs: &super::C, gl: &Layout) -> super::CudaOut {
        let n = *xl.dims().last().unwrap_or(&0);
        Ok((super::cuda::rms_norm_dw((xs, xl), (gs, gl), n, self.eps)?, Shape::from(n)))
    }
}
