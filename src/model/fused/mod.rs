//! Fused CPU kernels with a backward, for the training path: one pass over the data where the
//! composed ops in `ops.rs` make several, and fewer intermediates kept alive for the backward.
//!
//! Each is a candle `CustomOp` with a `bwd`: a fused kernel of its own (softmax, RMSNorm,
//! SwiGLU, rope), a few matmuls (the LoRA projection), or gradients the forward already made
//! (the loss head). Backwards return tensors with no graph. Rows run in parallel on
//! rayon's pool, in a fixed split, so results do not depend on scheduling. f32 and f64 are
//! supported (f64 for the finite-difference checks in `tests/grad_check.rs`, which also compare
//! each kernel with its composed version). Other devices use the composed version until they
//! have kernels of their own (see `ops.rs`).

use candle_core::{CpuStorage, Layout, Result, Shape};
use rayon::prelude::*;

pub(crate) use crate::simd::wide;

/// A kernel's input storage and output, to keep the `CustomOp` signatures short.
type S = CpuStorage;
type Out = Result<(CpuStorage, Shape)>;
/// The same for a CUDA kernel (launched from `cuda.rs`).
#[cfg(feature = "cuda")]
type C = candle_core::CudaStorage;
#[cfg(feature = "cuda")]
type CudaOut = Result<(candle_core::CudaStorage, Shape)>;

/// The contiguous data of a storage, as `T`.
fn data<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let all = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("fused op: the input must be contiguous"),
    }
}

/// The contiguous CPU data of a tensor an op holds (a weight or a table, not an argument),
/// read through its storage guard.
fn held<'a, T: candle_core::WithDType>(s: &'a candle_core::Storage, l: &Layout) -> Result<&'a [T]> {
    match s {
        candle_core::Storage::Cpu(s) => data(s, l),
        _ => candle_core::bail!("fused op: a tensor the op holds is not on the CPU"),
    }
}

/// Runs `$body` on the inputs' data as `&[T]`, for T = f32 and f64 (`T` names the type inside
/// the body), and wraps the result back into a storage.
macro_rules! float_op {
    ($name:literal, [$(($a:ident, $s:expr, $l:expr)),+], |$t:ident| $body:expr) => {
        match ($($s,)+) {
            ($(float_op!(@pat F32 $a),)+) => {
                type $t = f32;
                $(let $a = data::<f32>($s, $l)?;)+
                CpuStorage::F32($body)
            }
            ($(float_op!(@pat F64 $a),)+) => {
                type $t = f64;
                $(let $a = data::<f64>($s, $l)?;)+
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: f32 or f64 only", $name),
        }
    };
    (@pat $v:ident $a:ident) => {
        CpuStorage::$v(_)
    };
}

/// Elements per parallel chunk of an elementwise kernel.
const CHUNK: usize = 4096;

/// `out[i] = f(a[i], b[i])` (or with a third input), in parallel chunks.
pub(crate) fn map2<T: num_traits::Float + Send + Sync>(
    a: &[T],
    b: &[T],
    f: impl Fn(T, T) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(o, (a, b))| {
        wide(
            #[inline(always)]
            || {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = f(a, b);
                }
            },
        )
    });
    out
}

pub(crate) fn map3<T: num_traits::Float + Send + Sync>(
    a: &[T],
    b: &[T],
    c: &[T],
    f: impl Fn(T, T, T) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK).zip(c.par_chunks(CHUNK))))
        .for_each(|(o, (a, (b, c)))| {
            wide(
                #[inline(always)]
                || {
                    for (((o, &a), &b), &c) in o.iter_mut().zip(a).zip(b).zip(c) {
                        *o = f(a, b, c);
                    }
                },
            )
        });
    out
}

/// `dst (m, n) = lhs (m, k) @ rhs (k, n)`, plus `dst` when `acc`, each matrix given with its
/// (row, column) strides so transposes cost nothing. f32 or f64 (gemm panics on other types,
/// and only `float_op!` bodies call this).
pub(crate) fn matmul<T: num_traits::Float + 'static>(
    dims: (usize, usize, usize),
    dst: (&mut [T], (usize, usize)),
    lhs: (&[T], (usize, usize)),
    rhs: (&[T], (usize, usize)),
    acc: bool,
) {
    matmul_with(gemm::Parallelism::Rayon(rayon::current_num_threads()), dims, dst, lhs, rhs, acc)
}

/// [`matmul`] on one thread: for small products inside a task that already runs in parallel.
pub(crate) fn matmul_serial<T: num_traits::Float + 'static>(
    dims: (usize, usize, usize),
    dst: (&mut [T], (usize, usize)),
    lhs: (&[T], (usize, usize)),
    rhs: (&[T], (usize, usize)),
    acc: bool,
) {
    matmul_with(gemm::Parallelism::None, dims, dst, lhs, rhs, acc)
}

fn matmul_with<T: num_traits::Float + 'static>(
    parallelism: gemm::Parallelism,
    (m, n, k): (usize, usize, usize),
    (dst, ds): (&mut [T], (usize, usize)),
    (lhs, ls): (&[T], (usize, usize)),
    (rhs, rs): (&[T], (usize, usize)),
    acc: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |(r, c): (usize, usize), rows: usize, cols: usize| (rows - 1) * r + (cols - 1) * c;
    assert!(last(ds, m, n) < dst.len(), "matmul: dst out of bounds");
    if k == 0 {
        if !acc {
            dst.iter_mut().for_each(|x| *x = T::zero());
        }
        return;
    }
    assert!(last(ls, m, k) < lhs.len() && last(rs, k, n) < rhs.len(), "matmul: input out of bounds");
    // SAFETY: every index the three strided views reach was checked in bounds above, and `dst`
    // is an exclusive borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            ds.1 as isize,
            ds.0 as isize,
            acc,
            lhs.as_ptr(),
            ls.1 as isize,
            ls.0 as isize,
            rhs.as_ptr(),
            rs.1 as isize,
            rs.0 as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

mod attention;
mod chunked_ce;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod embedding;
mod exp;
pub mod gemv;
mod linear;
mod linear_ce;
mod lora;
mod mlp;
mod reduce;
mod rms_norm;
mod rope;
mod softmax;
mod swiglu;

pub use attention::attention;
pub use chunked_ce::chunked_linear_cross_entropy;
pub use embedding::embedding;
pub use linear::{linear, linear_add, linear_rope};
pub use linear_ce::linear_cross_entropy;
pub use lora::{lora_linear, lora_linear_frozen};
pub use mlp::{gate_up, swiglu_down_add};
pub use rms_norm::rms_norm;
pub use rope::{rope, rope_rows, row_rotation, RowRotation};
pub use softmax::causal_softmax;
pub use swiglu::swiglu;

#[cfg(test)]
mod tests {
    use super::exp::KernelExp;
    use super::{softmax::softmax_row, wide};

    /// The vector forms `wide` compiles give the bits of the scalar loop: exp alone, and the
    /// softmax row (exp, max, sum, divide) over values with ties, tiny and large magnitudes.
    #[test]
    fn wide_loops_give_the_scalar_bits() {
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 * 0.037 - 20.0).collect();
        let scalar: Vec<f32> = x.iter().map(|&v| (v * 0.5).kexp()).collect();
        let mut y = vec![0.0f32; x.len()];
        wide(
            #[inline(always)]
            || y.iter_mut().zip(&x).for_each(|(y, &v)| *y = (v * 0.5).kexp()),
        );
        assert_eq!(bits(&y), bits(&scalar));
        let (mut a, mut b) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        softmax_row(&x, &mut a, 0.125, 900);
        wide(
            #[inline(always)]
            || softmax_row(&x, &mut b, 0.125, 900),
        );
        assert_eq!(bits(&a), bits(&b));
        assert!((a[..900].iter().sum::<f32>() - 1.0).abs() < 1e-5 && a[900] == 0.0);
    }
}
