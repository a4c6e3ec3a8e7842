//! `y = x Wᵀ` for a few rows of x: decoding, one token at a time. A product with one row is
//! memory-bound (every weight read once per token), and candle's `gemm`, built for large
//! products, streams the weights at about a third of the rate (`whet bench matmul --tokens 4`:
//! 26 ms for the 113 MB lm_head). Here each output is a dot product over one row of W, read
//! once for all rows of x, with the rows of W split over rayon in fixed chunks. Inference
//! only: it computes the detached product of `ops::frozen_base_linear`, whose own op carries
//! the gradient.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Tensor};
use num_traits::Float;
use rayon::prelude::*;

use super::{data, reduce, Out, S};

/// The most rows of x taken this way; more go to gemm.
pub const MAX_ROWS: usize = 4;

/// Rows of W per parallel task.
const CHUNK: usize = 256;

/// `x (…, k) @ w (n, k)ᵀ -> (…, n)` on the CPU, for at most `MAX_ROWS` rows of x, both
/// contiguous; the result has no graph.
pub fn gemv(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &Gemv)
}

/// Whether `gemv` takes this product: a few contiguous f32/f64 rows on the CPU.
pub fn fits(x: &Tensor, w: &Tensor) -> bool {
    few_rows(x, w, 1)
}

/// Whether a product of a few rows of `x` by `w` fits these kernels: both contiguous f32 or
/// f64 on the CPU, `w` not empty (the kernels split it in chunks of its rows), with `w`'s
/// axis `k_axis` as long as a row of x.
fn few_rows(x: &Tensor, w: &Tensor, k_axis: usize) -> bool {
    let k = x.dims().last().copied().unwrap_or(0);
    x.device().is_cpu()
        && w.device().is_cpu()
        && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
        && x.dtype() == w.dtype()
        && w.rank() == 2
        && w.dim(k_axis).ok() == Some(k)
        && k > 0
        && w.elem_count() > 0
        && x.elem_count() / k <= MAX_ROWS
        && x.is_contiguous()
        && w.is_contiguous()
}

/// For x (…, k) times a W whose inner length is `wk`: the rows m, k, and the result's dims.
fn product_shape(op: &str, xl: &Layout, wk: usize, n: usize) -> Result<(usize, usize, Vec<usize>)> {
    let k = xl.dims().last().copied().unwrap_or(0);
    if k != wk || k == 0 {
        candle_core::bail!("{op}: x has {k} columns, w {wk}");
    }
    let mut dims = xl.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n; // (…, k) -> (…, n)
    }
    Ok((xl.shape().elem_count() / k, k, dims))
}

struct Gemv;

impl CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "gemv"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout, ws: &S, wl: &Layout) -> Out {
        let (n, wk) = wl.shape().dims2()?;
        let (m, k, dims) = product_shape("gemv", xl, wk, n)?;
        let out = float_op!("gemv", [(x, xs, xl), (w, ws, wl)], |T| products::<T>(x, w, m, k));
        Ok((out, dims.into()))
    }
}

/// `(m, k) @ (n, k)ᵀ`, row-major `(m, n)`.
fn products<T: Float + Send + Sync>(x: &[T], w: &[T], m: usize, k: usize) -> Vec<T> {
    let n = w.len() / k;
    // Column-major first, so each task writes one contiguous block: yt (n, m).
    let mut yt = vec![T::zero(); n * m];
    yt.par_chunks_mut(CHUNK * m).zip(w.par_chunks(CHUNK * k)).for_each(|(yt, w)| {
        super::wide(
            #[inline(always)]
            || {
                for (yj, wj) in yt.chunks_mut(m).zip(w.chunks(k)) {
                    for (r, y) in yj.iter_mut().enumerate() {
                        *y = reduce::dot_wide(&x[r * k..(r + 1) * k], wj);
                    }
                }
            },
        )
    });
    if m == 1 {
        return yt;
    }
    let mut y = vec![T::zero(); m * n];
    for (j, yj) in yt.chunks(m).enumerate() {
        for (r, &v) in yj.iter().enumerate() {
            y[r * n + j] = v;
        }
    }
    y
}

/// `x (…, k) @ wt (k, n) -> (…, n)` for at most `MAX_ROWS` rows of x: the same product over a
/// weight stored transposed (`Proj::inference_layout`). Each task takes a fixed block of
/// `BLOCK` rows of W, contiguous in memory, and adds `x[r, i] · wt[i, :]` into its own partial
/// sums; the partials are then added in block order, so the result does not depend on the
/// threads. No graph: inference only.
pub fn gemv_t(x: &Tensor, wt: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(wt, &GemvT)
}

/// Whether `gemv_t` takes this product: as `fits`, with W stored (k, n).
pub fn fits_t(x: &Tensor, wt: &Tensor) -> bool {
    few_rows(x, wt, 0)
}

/// Rows of W per parallel task of `gemv_t`.
const BLOCK: usize = 128;

struct GemvT;

impl CustomOp2 for GemvT {
    fn name(&self) -> &'static str {
        "gemv-t"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout, ws: &S, wl: &Layout) -> Out {
        let (wk, n) = wl.shape().dims2()?;
        let (m, k, dims) = product_shape("gemv-t", xl, wk, n)?;
        let out = float_op!("gemv-t", [(x, xs, xl), (w, ws, wl)], |T| products_t::<T>(x, w, m, k, n));
        Ok((out, dims.into()))
    }
}

/// `(m, k) @ (k, n)`, row-major `(m, n)`, over blocks of W's rows.
fn products_t<T: Float + Send + Sync>(x: &[T], wt: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
    let partials: Vec<Vec<T>> = wt
        .par_chunks(BLOCK * n)
        .enumerate()
        .map(|(b, w)| {
            let mut y = vec![T::zero(); m * n]; // (m, n)
            super::wide(
                #[inline(always)]
                || {
                    for (i, wi) in (b * BLOCK..).zip(w.chunks_exact(n)) {
                        for (r, yr) in y.chunks_exact_mut(n).enumerate() {
                            let xv = x[r * k + i];
                            for (a, &w) in yr.iter_mut().zip(wi) {
                                *a = *a + xv * w;
                            }
                        }
                    }
                },
            );
            y
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut y = parts.next().unwrap_or_else(|| vec![T::zero(); m * n]);
    for p in parts {
        for (a, &v) in y.iter_mut().zip(&p) {
            *a = *a + v;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    /// `gemv_t` over W stored (k, n) against candle's matmul, as below.
    #[test]
    fn the_transposed_form_matches_the_matmul() {
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            for (rows, k, n) in [(1, 576, 700), (2, 100, 3), (4, 1536, 257), (3, 7, 64)] {
                let x = Tensor::randn(0f64, 1.0, (1, rows, k), &dev).unwrap().to_dtype(dtype).unwrap();
                let wt = Tensor::randn(0f64, 1.0, (k, n), &dev).unwrap().to_dtype(dtype).unwrap();
                assert!(super::fits_t(&x, &wt));
                let got = super::gemv_t(&x, &wt).unwrap();
                assert_eq!(got.dims(), &[1, rows, n]);
                let diff = max_diff(&got, &x.broadcast_matmul(&wt).unwrap());
                let tol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
                assert!(diff < tol, "{dtype:?} {rows}x{k}x{n}: {diff}");
            }
        }
        let wt = Tensor::zeros((8, 3), DType::F32, &dev).unwrap();
        assert!(!super::fits_t(&Tensor::zeros((5, 8), DType::F32, &dev).unwrap(), &wt));
        assert!(!super::fits_t(&Tensor::zeros((1, 3), DType::F32, &dev).unwrap(), &wt));
        // A weight with no outputs goes to gemm: its row chunks would be empty.
        let empty = Tensor::zeros((8, 0), DType::F32, &dev).unwrap();
        assert!(!super::fits_t(&Tensor::zeros((1, 8), DType::F32, &dev).unwrap(), &empty));
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).unwrap().abs().unwrap().to_dtype(DType::F64).unwrap();
        d.flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Against candle's matmul: 1 to 4 rows, a width with a tail past the 64 lanes, f32 and f64.
    #[test]
    fn matches_the_matmul() {
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            for (rows, k, n) in [(1, 576, 700), (2, 100, 3), (4, 1536, 257), (3, 7, 1)] {
                let x = Tensor::randn(0f64, 1.0, (1, rows, k), &dev).unwrap().to_dtype(dtype).unwrap();
                let w = Tensor::randn(0f64, 1.0, (n, k), &dev).unwrap().to_dtype(dtype).unwrap();
                assert!(super::fits(&x, &w));
                let got = super::gemv(&x, &w).unwrap();
                assert_eq!(got.dims(), &[1, rows, n]);
                let diff = max_diff(&got, &x.broadcast_matmul(&w.t().unwrap()).unwrap());
                let tol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
                assert!(diff < tol, "{dtype:?} {rows}x{k}x{n}: {diff}");
            }
        }
        // Five rows, a transposed x, or mixed dtypes go to gemm.
        let w = Tensor::zeros((3, 8), DType::F32, &dev).unwrap();
        assert!(!super::fits(&Tensor::zeros((5, 8), DType::F32, &dev).unwrap(), &w));
        assert!(!super::fits(&Tensor::zeros((8, 2), DType::F32, &dev).unwrap().t().unwrap(), &w));
        assert!(!super::fits(&Tensor::zeros((1, 8), DType::F64, &dev).unwrap(), &w));
    }
}
