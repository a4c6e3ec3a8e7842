//! The CUDA side of the fused ops: each `cuda_fwd` of softmax, RMSNorm, SwiGLU and rope calls
//! one of these, which launches the matching kernel of `kernels.cu` (compiled to PTX by
//! build.rs). f32 and bf16 storage; the kernels compute in f32 either way.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
const MODULE: &str = "whet-fused";
/// Threads per block: a multiple of 32, as the kernels' block reduction needs.
const THREADS: u32 = 256;
/// Rows per block of RMSNorm's weight-gradient partial sums.
const DW_CHUNK: usize = 256;

/// A storage type the kernels have entry points for (`whet_<kernel>_<SUFFIX>`).
trait Elem: CudaDType + DeviceRepr + candle_core::WithDType {
    const SUFFIX: &'static str;
}
impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
}
impl Elem for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// Runs `$body` with `$t` the storage's element type, f32 or bf16.
macro_rules! by_dtype {
    ($name:literal, $dtype:expr, |$t:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            d => candle_core::bail!("{}: f32 or bf16 on CUDA, got {d:?}", $name),
        }
    };
}

/// Launches kernel `whet_<$kernel>_<suffix of $t>` with the arguments in order.
macro_rules! launch {
    ($dev:expr, $t:ty, $kernel:literal, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let name = format!(concat!("whet_", $kernel, "_{}"), <$t as Elem>::SUFFIX);
        let f = $dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        let mut b = f.builder();
        $(b.arg($arg);)*
        // SAFETY: the arguments follow the kernel's signature in kernels.cu, and each buffer
        // holds every element that the launch configuration's threads reach.
        unsafe { b.launch($cfg) }.w()?;
    }};
}

/// The contiguous elements of an input.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("fused op: the input must be contiguous"),
    }
}

fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("fused op: {v} is too large for a kernel")))
}

/// One block per row.
fn per_row(rows: usize) -> Result<LaunchConfig> {
    let rows = u32::try_from(rows).map_err(|_| candle_core::Error::Msg(format!("{rows} rows")))?;
    Ok(LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// Enough blocks for one thread an element (the kernels loop if there are fewer).
fn per_elem(count: usize) -> LaunchConfig {
    let blocks = count.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// softmax(scale · x + causal mask) over rows of length `n`, `t` query rows per matrix.
pub(super) fn causal_softmax(
    s: &CudaStorage,
    l: &Layout,
    n: usize,
    t: usize,
    scale: f64,
    pos: usize,
) -> Result<CudaStorage> {
    by_dtype!("causal softmax", s.dtype(), |T| {
        let dev = &s.device;
        let rows = l.shape().elem_count() / n;
        let x = view::<T>(s, l)?;
        // SAFETY: the kernel writes every element.
        let y = unsafe { dev.alloc::<T>(rows * n)? };
        let (n, t, pos, scale) = (int(n)?, int(t)?, int(pos)?, scale as f32);
        if rows > 0 {
            launch!(dev, T, "causal_softmax_fwd", per_row(rows)?, [&x, &y, &n, &t, &scale, &pos]);
        }
        Ok(T::wrap_cuda_slice(y, dev.clone()))
    })
}

/// scale · y ⊙ (g − Σⱼ gⱼ yⱼ) over rows of length `n`.
pub(super) fn softmax_bwd(
    (ys, yl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    n: usize,
    scale: f64,
) -> Result<CudaStorage> {
    by_dtype!("causal softmax backward", ys.dtype(), |T| {
        let dev = &ys.device;
        let rows = yl.shape().elem_count() / n;
        let (y, g) = (view::<T>(ys, yl)?, view::<T>(gs, gl)?);
        // SAFETY: the kernel writes every element.
        let d = unsafe { dev.alloc::<T>(rows * n)? };
        let (n, scale) = (int(n)?, scale as f32);
        if rows > 0 {
            launch!(dev, T, "softmax_bwd", per_row(rows)?, [&y, &g, &d, &n, &scale]);
        }
        Ok(T::wrap_cuda_slice(d, dev.clone()))
    })
}

/// RMSNorm of rows of length `n = w.len()`.
pub(super) fn rms_norm(
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    eps: f64,
) -> Result<CudaStorage> {
    by_dtype!("rms norm", xs.dtype(), |T| {
        let dev = &xs.device;
        let n = wl.shape().elem_count();
        let rows = xl.shape().elem_count() / n;
        let (x, w) = (view::<T>(xs, xl)?, view::<T>(ws, wl)?);
        // SAFETY: the kernel writes every element.
        let y = unsafe { dev.alloc::<T>(rows * n)? };
        let (n, eps) = (int(n)?, eps as f32);
        if rows > 0 {
            launch!(dev, T, "rms_norm_fwd", per_row(rows)?, [&x, &w, &y, &n, &eps]);
        }
        Ok(T::wrap_cuda_slice(y, dev.clone()))
    })
}

/// dL/dx of RMSNorm.
pub(super) fn rms_norm_dx(
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    eps: f64,
) -> Result<CudaStorage> {
    by_dtype!("rms norm backward", xs.dtype(), |T| {
        let dev = &xs.device;
        let n = wl.shape().elem_count();
        let rows = xl.shape().elem_count() / n;
        let (x, w, g) = (view::<T>(xs, xl)?, view::<T>(ws, wl)?, view::<T>(gs, gl)?);
        // SAFETY: the kernel writes every element.
        let d = unsafe { dev.alloc::<T>(rows * n)? };
        let (n, eps) = (int(n)?, eps as f32);
        if rows > 0 {
            launch!(dev, T, "rms_norm_dx", per_row(rows)?, [&x, &w, &g, &d, &n, &eps]);
        }
        Ok(T::wrap_cuda_slice(d, dev.clone()))
    })
}

/// dL/dw of RMSNorm, (n,): row scales, then partial sums over chunks of rows, then the chunks
/// added in order (deterministic, like the CPU kernel).
pub(super) fn rms_norm_dw(
    (xs, xl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    n: usize,
    eps: f64,
) -> Result<CudaStorage> {
    by_dtype!("rms norm backward", xs.dtype(), |T| {
        let dev = &xs.device;
        let rows = xl.shape().elem_count() / n.max(1);
        let chunks = rows.div_ceil(DW_CHUNK).max(1);
        let (x, g) = (view::<T>(xs, xl)?, view::<T>(gs, gl)?);
        let scales = dev.alloc_zeros::<f32>(rows.max(1))?;
        let partial = dev.alloc_zeros::<f32>(chunks * n)?;
        let dw = dev.alloc_zeros::<T>(n)?;
        let (n32, rows32, chunk, chunks32, eps) =
            (int(n)?, int(rows)?, int(DW_CHUNK)?, int(chunks)?, eps as f32);
        if rows > 0 && n > 0 {
            launch!(dev, T, "rms_row_scale", per_row(rows)?, [&x, &scales, &n32, &eps]);
            let cols = n.div_ceil(THREADS as usize) as u32;
            let grid = LaunchConfig {
                grid_dim: (cols, chunks as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(dev, T, "rms_dw_partial", grid, [&x, &g, &scales, &partial, &n32, &rows32, &chunk]);
            launch!(dev, T, "rms_dw_sum", per_elem(n), [&partial, &dw, &n32, &chunks32]);
        }
        Ok(T::wrap_cuda_slice(dw, dev.clone()))
    })
}

/// silu(g) ⊙ u.
pub(super) fn swiglu(
    (gs, gl): (&CudaStorage, &Layout),
    (us, ul): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    by_dtype!("swiglu", gs.dtype(), |T| {
        let dev = &gs.device;
        let count = gl.shape().elem_count();
        let (g, u) = (view::<T>(gs, gl)?, view::<T>(us, ul)?);
        // SAFETY: the kernel writes every element.
        let y = unsafe { dev.alloc::<T>(count)? };
        if count > 0 {
            launch!(dev, T, "swiglu_fwd", per_elem(count), [&g, &u, &y, &count]);
        }
        Ok(T::wrap_cuda_slice(y, dev.clone()))
    })
}

/// dL/dg of SwiGLU for the output gradient `d`.
pub(super) fn swiglu_dg(
    (gs, gl): (&CudaStorage, &Layout),
    (us, ul): (&CudaStorage, &Layout),
    (ds, dl): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    by_dtype!("swiglu backward", gs.dtype(), |T| {
        let dev = &gs.device;
        let count = gl.shape().elem_count();
        let (g, u, d) = (view::<T>(gs, gl)?, view::<T>(us, ul)?, view::<T>(ds, dl)?);
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(count)? };
        if count > 0 {
            launch!(dev, T, "swiglu_dg", per_elem(count), [&g, &u, &d, &out, &count]);
        }
        Ok(T::wrap_cuda_slice(out, dev.clone()))
    })
}

/// dL/du of SwiGLU for the output gradient `d`.
pub(super) fn swiglu_du(
    (gs, gl): (&CudaStorage, &Layout),
    (ds, dl): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    by_dtype!("swiglu backward", gs.dtype(), |T| {
        let dev = &gs.device;
        let count = gl.shape().elem_count();
        let (g, d) = (view::<T>(gs, gl)?, view::<T>(ds, dl)?);
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(count)? };
        if count > 0 {
            launch!(dev, T, "swiglu_du", per_elem(count), [&g, &d, &out, &count]);
        }
        Ok(T::wrap_cuda_slice(out, dev.clone()))
    })
}

/// Rotary embedding of `x` by the tables `cos`, `sin` (t, half), or by −θ when `inverse`.
pub(super) fn rope(
    (xs, xl): (&CudaStorage, &Layout),
    (cs, cl): (&CudaStorage, &Layout),
    (ss, sl): (&CudaStorage, &Layout),
    interleaved: bool,
    inverse: bool,
) -> Result<CudaStorage> {
    by_dtype!("rope", xs.dtype(), |T| {
        let dev = &xs.device;
        let (t, half) = cl.shape().dims2()?;
        let count = xl.shape().elem_count();
        let pairs = count / 2;
        let (x, cos, sin) = (view::<T>(xs, xl)?, view::<T>(cs, cl)?, view::<T>(ss, sl)?);
        // SAFETY: the kernel writes every element (each thread one pair).
        let y = unsafe { dev.alloc::<T>(count)? };
        let (t, half, interleaved, inverse) = (int(t)?, int(half)?, interleaved as i32, inverse as i32);
        if pairs > 0 {
            launch!(
                dev,
                T,
                "rope",
                per_elem(pairs),
                [&x, &cos, &sin, &y, &t, &half, &interleaved, &inverse, &pairs]
            );
        }
        Ok(T::wrap_cuda_slice(y, dev.clone()))
    })
}

/// NF4 codes (`packed`, one byte a pair), scale codes and nested scales to `n` f32 values
/// (`whet_nf4_dequant`; bitsandbytes' arithmetic, see `quant/nf4.rs`).
pub(crate) fn nf4_dequant(
    (ps, pl): (&CudaStorage, &Layout),
    (qs, ql): (&CudaStorage, &Layout),
    (ns, nl): (&CudaStorage, &Layout),
    (ds, dl): (&CudaStorage, &Layout),
    offset: f32,
    n: usize,
) -> Result<CudaStorage> {
    let dev = &ps.device;
    let (packed, absmax_q) = (view::<u8>(ps, pl)?, view::<u8>(qs, ql)?);
    let (nested, dynamic) = (view::<f32>(ns, nl)?, view::<f32>(ds, dl)?);
    if packed.len() * 2 < n || absmax_q.len() * 64 < n || dynamic.len() != 256 {
        candle_core::bail!("nf4 dequant: buffers too small for {n} values");
    }
    // SAFETY: the kernel writes every one of the n elements.
    let out = unsafe { dev.alloc::<f32>(n)? };
    if n > 0 {
        let f = dev.get_or_load_custom_func("whet_nf4_dequant", MODULE, PTX)?;
        let mut b = f.builder();
        b.arg(&packed);
        b.arg(&absmax_q);
        b.arg(&nested);
        b.arg(&dynamic);
        b.arg(&offset);
        b.arg(&out);
        b.arg(&n);
        // SAFETY: the arguments follow whet_nf4_dequant's signature; the buffers were checked
        // to hold what threads up to ceil(n / 2) read.
        unsafe { b.launch(per_elem(n.div_ceil(2))) }.w()?;
    }
    Ok(f32::wrap_cuda_slice(out, dev.clone()))
}
