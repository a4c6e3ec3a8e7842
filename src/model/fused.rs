//! Fused CPU kernels with a backward, for the training path: one pass over the data where the
//! composed ops in `ops.rs` make several, and fewer intermediates kept alive for the backward.
//!
//! Each is a candle `CustomOp` whose `bwd` is itself a fused kernel. Rows run in parallel on
//! rayon's pool. f32 and f64 are supported (f64 for the finite-difference checks in
//! `tests/grad_check.rs`, which also compare each kernel with its composed version). Other
//! devices use the composed version until they have kernels of their own (see `ops.rs`).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use num_traits::Float;
use rayon::prelude::*;

/// `softmax(scale · s + causal mask)` over the last dim of contiguous scores `s` of shape
/// (…, T, T_all): query row i of T sits at position `pos + i` and sees keys `0..=pos + i`.
/// The backward needs only the output: dL/ds = scale · y ⊙ (g − Σⱼ gⱼ yⱼ).
pub fn causal_softmax(s: &Tensor, scale: f64, pos: usize) -> Result<Tensor> {
    s.apply_op1(CausalSoftmax { scale, pos })
}

struct CausalSoftmax {
    scale: f64,
    pos: usize,
}

/// The contiguous data of a storage, as `T`.
fn data<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let all = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("fused op: the input must be contiguous"),
    }
}

/// (rows of length `n`, `t` rows per attention matrix) of a (…, T, T_all) layout.
fn rows(l: &Layout) -> Result<(usize, usize)> {
    let dims = l.dims();
    if dims.len() < 2 {
        candle_core::bail!("causal softmax: expected (…, T, T_all), got {dims:?}");
    }
    Ok((dims[dims.len() - 1], dims[dims.len() - 2]))
}

fn softmax_fwd<T: Float + Send + Sync>(x: &[T], n: usize, t: usize, scale: T, pos: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(n).zip(x.par_chunks(n)).enumerate().for_each(|(r, (y, x))| {
        let visible = (pos + r % t + 1).min(n);
        let (x, y) = (&x[..visible], &mut y[..visible]);
        let mut max = T::neg_infinity();
        for (yj, &xj) in y.iter_mut().zip(x) {
            *yj = xj * scale;
            max = max.max(*yj);
        }
        let mut sum = T::zero();
        for yj in y.iter_mut() {
            *yj = (*yj - max).exp();
            sum = sum + *yj;
        }
        for yj in y.iter_mut() {
            *yj = *yj / sum;
        }
    });
    out
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, t) = rows(l)?;
        let out = match s {
            CpuStorage::F32(_) => {
                CpuStorage::F32(softmax_fwd(data::<f32>(s, l)?, n, t, self.scale as f32, self.pos))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(softmax_fwd(data::<f64>(s, l)?, n, t, self.scale, self.pos))
            }
            _ => candle_core::bail!("causal softmax: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _s: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(y.apply_op2_no_bwd(&g, &SoftmaxBwd { scale: self.scale })?))
    }
}

/// dL/ds = scale · y ⊙ (g − Σⱼ gⱼ yⱼ), row by row (masked entries have y = 0, so 0).
struct SoftmaxBwd {
    scale: f64,
}

fn softmax_bwd<T: Float + Send + Sync>(y: &[T], g: &[T], n: usize, scale: T) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    out.par_chunks_mut(n).zip(y.par_chunks(n).zip(g.par_chunks(n))).for_each(|(d, (y, g))| {
        let dot = y.iter().zip(g).fold(T::zero(), |acc, (&yj, &gj)| acc + yj * gj);
        for ((dj, &yj), &gj) in d.iter_mut().zip(y).zip(g) {
            *dj = scale * yj * (gj - dot);
        }
    });
    out
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, _) = rows(yl)?;
        if yl.shape() != gl.shape() {
            candle_core::bail!("causal softmax backward: {:?} vs {:?}", yl.shape(), gl.shape());
        }
        let out = match (ys, gs) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(softmax_bwd(data::<f32>(ys, yl)?, data::<f32>(gs, gl)?, n, self.scale as f32))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(softmax_bwd(data::<f64>(ys, yl)?, data::<f64>(gs, gl)?, n, self.scale))
            }
            _ => candle_core::bail!("causal softmax backward: f32 or f64 only"),
        };
        Ok((out, yl.shape().clone()))
    }
}

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
fn rms<T: Float>(x: &[T], eps: T) -> T {
    let ss = x.iter().fold(T::zero(), |acc, &v| acc + v * v);
    (ss / T::from(x.len()).unwrap_or(T::one()) + eps).sqrt()
}

fn rms_norm_fwd<T: Float + Send + Sync>(x: &[T], w: &[T], eps: T) -> Vec<T> {
    let n = w.len();
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(y, x)| {
        let s = rms(x, eps);
        for ((yj, &xj), &wj) in y.iter_mut().zip(x).zip(w) {
            *yj = xj / s * wj;
        }
    });
    out
}

fn rms_norm_dx<T: Float + Send + Sync>(x: &[T], w: &[T], g: &[T], eps: T) -> Vec<T> {
    let n = w.len();
    let inv_n = T::one() / T::from(n).unwrap_or(T::one());
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(n).zip(x.par_chunks(n).zip(g.par_chunks(n))).for_each(|(d, (x, g))| {
        let s = rms(x, eps);
        let dot = x.iter().zip(g).zip(w).fold(T::zero(), |acc, ((&xj, &gj), &wj)| acc + gj * wj * (xj / s));
        let m = dot * inv_n;
        for (((dj, &xj), &gj), &wj) in d.iter_mut().zip(x).zip(g).zip(w) {
            *dj = (gj * wj - xj / s * m) / s;
        }
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
            let mut acc = vec![T::zero(); n];
            for (x, g) in xb.chunks(n).zip(gb.chunks(n)) {
                let s = rms(x, eps);
                for ((a, &xj), &gj) in acc.iter_mut().zip(x).zip(g) {
                    *a = *a + gj * (xj / s);
                }
            }
            acc
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

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = wl.shape().elem_count();
        if xl.dims().last() != Some(&n) {
            candle_core::bail!("rms norm: x {:?} and weight {:?} disagree", xl.shape(), wl.shape());
        }
        let out = match (xs, ws) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(rms_norm_fwd(data::<f32>(xs, xl)?, data::<f32>(ws, wl)?, self.eps as f32))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(rms_norm_fwd(data::<f64>(xs, xl)?, data::<f64>(ws, wl)?, self.eps))
            }
            _ => candle_core::bail!("rms norm: f32 or f64 only"),
        };
        Ok((out, xl.shape().clone()))
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

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (xs, ws, gs) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(rms_norm_dx(
                data::<f32>(xs, xl)?,
                data::<f32>(ws, wl)?,
                data::<f32>(gs, gl)?,
                self.eps as f32,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(rms_norm_dx(
                data::<f64>(xs, xl)?,
                data::<f64>(ws, wl)?,
                data::<f64>(gs, gl)?,
                self.eps,
            )),
            _ => candle_core::bail!("rms norm backward: f32 or f64 only"),
        };
        Ok((out, xl.shape().clone()))
    }
}

struct RmsNormDw {
    eps: f64,
}

impl CustomOp2 for RmsNormDw {
    fn name(&self) -> &'static str {
        "rms-norm-dw"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = *xl.dims().last().unwrap_or(&0);
        let out = match (xs, gs) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(rms_norm_dw(data::<f32>(xs, xl)?, data::<f32>(gs, gl)?, n, self.eps as f32))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(rms_norm_dw(data::<f64>(xs, xl)?, data::<f64>(gs, gl)?, n, self.eps))
            }
            _ => candle_core::bail!("rms norm backward: f32 or f64 only"),
        };
        Ok((out, Shape::from(n)))
    }
}

/// SwiGLU `silu(g) ⊙ u` on contiguous `g` and `u` of one shape. The backward recomputes the
/// sigmoid instead of keeping `silu(g)` alive: dL/dg = d ⊙ u ⊙ σ(g)(1 + g(1 − σ(g))),
/// dL/du = d ⊙ silu(g).
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.apply_op2(u, SwiGlu)
}

/// Elements per parallel chunk of an elementwise kernel.
const CHUNK: usize = 4096;

fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// `out[i] = f(a[i], b[i])` (or with a third input), in parallel chunks.
fn map2<T: Float + Send + Sync>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(o, (a, b))| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = f(a, b);
        }
    });
    out
}

fn map3<T: Float + Send + Sync>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK).zip(c.par_chunks(CHUNK))))
        .for_each(|(o, (a, (b, c)))| {
            for (((o, &a), &b), &c) in o.iter_mut().zip(a).zip(b).zip(c) {
                *o = f(a, b, c);
            }
        });
    out
}

/// Runs an elementwise kernel of two same-shape inputs in f32 or f64.
macro_rules! elementwise2 {
    ($name:literal, $s1:expr, $l1:expr, $s2:expr, $l2:expr, $f:expr) => {{
        if $l1.shape() != $l2.shape() {
            candle_core::bail!("{}: shapes {:?} and {:?} differ", $name, $l1.shape(), $l2.shape());
        }
        let out = match ($s1, $s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(map2(data::<f32>($s1, $l1)?, data::<f32>($s2, $l2)?, $f))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(map2(data::<f64>($s1, $l1)?, data::<f64>($s2, $l2)?, $f))
            }
            _ => candle_core::bail!("{}: f32 or f64 only", $name),
        };
        Ok((out, $l1.shape().clone()))
    }};
}

fn silu<T: Float>(g: T) -> T {
    g / (T::one() + (-g).exp())
}

fn silu_grad<T: Float>(g: T) -> T {
    let s = sigmoid(g);
    s * (T::one() + g * (T::one() - s))
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        elementwise2!("swiglu", gs, gl, us, ul, |g, u| silu(g) * u)
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        d: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = d.contiguous()?;
        let dg = g.apply_op3_no_bwd(u, &d, &SwiGluDg)?;
        let du = g.apply_op2_no_bwd(&d, &SwiGluDu)?;
        Ok((Some(dg), Some(du)))
    }
}

/// dL/dg = d ⊙ u ⊙ silu'(g).
struct SwiGluDg;

impl candle_core::CustomOp3 for SwiGluDg {
    fn name(&self) -> &'static str {
        "swiglu-dg"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if gl.shape() != ul.shape() || gl.shape() != dl.shape() {
            candle_core::bail!("swiglu backward: shapes differ");
        }
        let out = match (gs, us, ds) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(map3(
                data::<f32>(gs, gl)?,
                data::<f32>(us, ul)?,
                data::<f32>(ds, dl)?,
                |g, u, d| d * u * silu_grad(g),
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(map3(
                data::<f64>(gs, gl)?,
                data::<f64>(us, ul)?,
                data::<f64>(ds, dl)?,
                |g, u, d| d * u * silu_grad(g),
            )),
            _ => candle_core::bail!("swiglu backward: f32 or f64 only"),
        };
        Ok((out, gl.shape().clone()))
    }
}

/// dL/du = d ⊙ silu(g).
struct SwiGluDu;

impl CustomOp2 for SwiGluDu {
    fn name(&self) -> &'static str {
        "swiglu-du"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        elementwise2!("swiglu backward", gs, gl, ds, dl, |g, d| d * silu(g))
    }
}
