//! Fused CPU kernels with a backward, for the training path: one pass over the data where the
//! composed ops in `ops.rs` make several, and fewer intermediates kept alive for the backward.
//!
//! Each is a candle `CustomOp` whose `bwd` is itself a fused kernel. Rows run in parallel on
//! rayon's pool, in a fixed split, so results do not depend on scheduling. f32 and f64 are
//! supported (f64 for the finite-difference checks in `tests/grad_check.rs`, which also compare
//! each kernel with its composed version). Other devices use the composed version until they
//! have kernels of their own (see `ops.rs`).

use candle_core::{CpuStorage, Layout, Result, Shape};

/// A kernel's input storage and output, to keep the `CustomOp` signatures short.
type S = CpuStorage;
type Out = Result<(CpuStorage, Shape)>;

/// The contiguous data of a storage, as `T`.
fn data<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let all = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("fused op: the input must be contiguous"),
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

mod linear_ce;
mod rms_norm;
mod softmax;
mod swiglu;

pub use linear_ce::linear_cross_entropy;
pub use rms_norm::rms_norm;
pub use softmax::causal_softmax;
pub use swiglu::swiglu;
