//! Differentiable building blocks for the training path.
//!
//! candle-nn's fused kernels (`softmax_last_dim`, `rms_norm`, `rope*`) have no backward, and
//! gradients silently stop at them (huggingface/candle#2168 for RmsNorm, #3569 for softmax,
//! #3568 for rope). Everything here is
//! composed from primitives that candle's autograd knows, and each op has a finite-difference
//! check in `tests/grad_check.rs`. Where `Kernels::Fused` asks for it and the inputs are f32/f64
//! on the CPU, the same call sites use the fused CustomOps of `fused/` instead; the composed
//! forms stay the reference they are tested against.

use candle_core::{DType, Device, Result, Tensor, D};

use super::config::{Config, Kernels, Llama3RopeScaling, RopeLayout};
pub use super::dropout::Dropout;
use super::fused::RowRotation;
use super::quant::Frozen;

/// Softmax over the last dim. The max is detached: softmax is shift-invariant, so its gradient
/// through the max is exactly zero and need not be traced.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Whether the fused kernels of softmax, RMSNorm, SwiGLU and rope serve these inputs: asked
/// for, all of one dtype on one device, and that a pair with kernels: the CPU with f32 or f64,
/// or (in a `cuda` build) a GPU with f32 or bf16. Anything else takes the composed ops.
pub fn fused(kernels: Kernels, xs: &[&Tensor]) -> bool {
    let (dtype, dev) = (xs[0].dtype(), xs[0].device());
    let served = match dev {
        Device::Cpu => matches!(dtype, DType::F32 | DType::F64),
        Device::Cuda(_) => cfg!(feature = "cuda") && matches!(dtype, DType::F32 | DType::BF16),
        _ => false,
    };
    kernels == Kernels::Fused
        && served
        && xs.iter().all(|x| x.dtype() == dtype && x.device().same_device(dev))
}

/// Whether the CPU-only fused kernels (the LoRA projection, the fused loss head) serve these
/// inputs: asked for, on the CPU, and all f32 or all f64.
pub fn fused_on_cpu(kernels: Kernels, xs: &[&Tensor]) -> bool {
    xs[0].device().is_cpu() && fused(kernels, xs)
}

/// Attention probabilities: `softmax(scale · scores + causal mask)` over the last dim of
/// `scores` (B, nh, T, T_all), where query i sits at position `pos + i`. With the fused kernel
/// on the CPU, one pass with a fused backward (`fused::causal_softmax`); otherwise composed.
pub fn causal_softmax(scores: &Tensor, scale: f64, pos: usize, kernels: Kernels) -> Result<Tensor> {
    if fused(kernels, &[scores]) {
        return super::fused::causal_softmax(&scores.contiguous()?, scale, pos);
    }
    causal_softmax_composed(scores, scale, pos)
}

/// The composed form of [`causal_softmax`]: the reference its kernel is tested against. Half
/// precision scores are upcast: the probabilities are computed in f32, as the kernels do.
pub fn causal_softmax_composed(scores: &Tensor, scale: f64, pos: usize) -> Result<Tensor> {
    if matches!(scores.dtype(), DType::BF16 | DType::F16) {
        return causal_softmax_composed(&scores.to_dtype(DType::F32)?, scale, pos)?.to_dtype(scores.dtype());
    }
    let t = scores.dim(D::Minus2)?;
    let att = (scores * scale)?;
    let att = if t > 1 {
        att.broadcast_add(&causal_mask(t, pos, scores.device())?.to_dtype(att.dtype())?)?
    } else {
        att // one new token sees every cached position
    };
    softmax_last(&att)
}

/// log-softmax over the last dim, stable and differentiable.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// RMSNorm as in HF's LlamaRMSNorm: `w * x / sqrt(mean(x²) + eps)`, computed in at least f32.
/// With the fused kernels on the CPU (f32/f64), one pass with a fused backward.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, kernels: Kernels) -> Result<Tensor> {
    if fused(kernels, &[x, w]) {
        return super::fused::rms_norm(&x.contiguous()?, &w.contiguous()?, eps);
    }
    rms_norm_composed(x, w, eps)
}

/// The composed form of [`rms_norm`]: the reference its kernel is tested against.
pub fn rms_norm_composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = if dtype == DType::F64 { x.clone() } else { x.to_dtype(DType::F32)? };
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_div(&(var + eps)?.sqrt()?)?;
    x.to_dtype(dtype)?.broadcast_mul(w)
}

/// SwiGLU gate: `silu(g) * u`. With the fused kernels on the CPU (f32/f64), one pass with a
/// fused backward that recomputes the sigmoid instead of keeping `silu(g)`.
pub fn swiglu(g: &Tensor, u: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if fused(kernels, &[g, u]) {
        return super::fused::swiglu(&g.contiguous()?, &u.contiguous()?);
    }
    swiglu_composed(g, u)
}

/// The composed form of [`swiglu`]: the reference its kernel is tested against.
pub fn swiglu_composed(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.silu()? * u
}

/// Precomputed rotary tables for positions `0..max_pos`.
#[derive(Debug, Clone)]
pub struct Rope {
    /// (max_pos, hs/2)
    cos: Tensor,
    /// (max_pos, hs/2)
    sin: Tensor,
    layout: RopeLayout,
    kernels: Kernels,
}

impl Rope {
    pub fn new(cfg: &Config, max_pos: usize, dev: &Device) -> Result<Self> {
        let inv_freq = inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let half = inv_freq.len();
        // HF computes inv_freq in f32 and positions × inv_freq in f32; do the same so long
        // positions round the same way.
        let mut angles = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for &f in &inv_freq {
                angles.push(p as f32 * f);
            }
        }
        let angles = Tensor::from_vec(angles, (max_pos, half), dev)?;
        Ok(Self { cos: angles.cos()?, sin: angles.sin()?, layout: cfg.rope_layout, kernels: cfg.kernels })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// The (T, hs/2) cos and sin of positions `pos..pos+T`, in `dtype`.
    fn tables(&self, pos: usize, t: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        if pos + t > self.max_positions() {
            candle_core::bail!(
                "position {} is past the rotary table ({} positions)",
                pos + t,
                self.max_positions()
            );
        }
        // The tables are f32; a gradient check runs in f64.
        Ok((self.cos.narrow(0, pos, t)?.to_dtype(dtype)?, self.sin.narrow(0, pos, t)?.to_dtype(dtype)?))
    }

    /// As [`Rope::apply`] for contiguous `x` (B, T, n·hs), heads of `hs`, with the fused CPU
    /// kernel: the layout the fused attention takes.
    pub fn apply_rows(&self, x: &Tensor, pos: usize, hs: usize) -> Result<Tensor> {
        let (cos, sin) = self.tables(pos, x.dim(1)?, x.dtype())?;
        super::fused::rope_rows(x, &cos, &sin, self.layout, hs)
    }

    /// The rotation [`Rope::apply_rows`] gives rows (B, T, width) at positions `pos..pos+T`, for
    /// a projection that rotates its own output (`fused::linear_rope`).
    pub fn rows(
        &self,
        pos: usize,
        (t, width): (usize, usize),
        hs: usize,
        dtype: DType,
    ) -> Result<RowRotation> {
        let (cos, sin) = self.tables(pos, t, dtype)?;
        super::fused::row_rotation(&cos, &sin, self.layout, hs, (t, width))
    }

    /// Rotates `x` of shape (B, nh, T, hs) for positions `pos..pos+T`.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (_b, _nh, t, hs) = x.dims4()?;
        let (cos, sin) = self.tables(pos, t, x.dtype())?;
        if fused(self.kernels, &[x]) {
            return super::fused::rope(&x.contiguous()?, &cos, &sin, self.layout);
        }
        match self.layout {
            RopeLayout::Half => {
                let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?; // (T, hs)
                let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?;
                let x1 = x.narrow(D::Minus1, 0, hs / 2)?;
                let x2 = x.narrow(D::Minus1, hs / 2, hs / 2)?;
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?; // rotate_half(x)
                x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
            }
            RopeLayout::Interleaved => {
                let (b, nh, t, hs) = x.dims4()?;
                // (B, nh, T, hs) -> (B, nh, T, hs/2, 2)
                let xp = x.reshape((b, nh, t, hs / 2, 2))?;
                let x0 = xp.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?; // (B, nh, T, hs/2)
                let x1 = xp.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
                let o0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
                let o1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
                // (B, nh, T, hs/2, 2) -> (B, nh, T, hs)
                Tensor::stack(&[&o0, &o1], D::Minus1)?.reshape((b, nh, t, hs))
            }
        }
    }
}

/// The rotary frequencies `1 / theta^(2i/hs)`, with Llama 3.1 scaling when configured.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<&Llama3RopeScaling>) -> Vec<f32> {
    let base: Vec<f32> =
        (0..head_dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
    let Some(s) = scaling else { return base };
    let old = s.original_max_position_embeddings as f32;
    let low_wavelen = old / s.low_freq_factor as f32;
    let high_wavelen = old / s.high_freq_factor as f32;
    let factor = s.factor as f32;
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (old / wavelen - s.low_freq_factor as f32)
                    / (s.high_freq_factor as f32 - s.low_freq_factor as f32);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// Additive causal mask of shape (T, T + pos): 0 where key ≤ query position, -inf above.
pub fn causal_mask(t: usize, pos: usize, dev: &Device) -> Result<Tensor> {
    let total = t + pos;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j > i + pos { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, total), dev)
}

/// Mean next-token cross-entropy, as HF's `ForCausalLMLoss`: position t predicts token t+1.
/// `logits`: (B, T, V); `ids`: (B, T) u32; `mask`: optional (B, T), 1 where the *label*
/// token counts. Returns (scalar loss, number of counted predictions).
pub fn causal_lm_loss(logits: &Tensor, ids: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, f64)> {
    let (sum, n) = causal_lm_nll_sum(logits, ids, mask)?;
    Ok((mean_over_labels(sum, n)?, n))
}

/// A summed NLL over its `n` counted labels; none counted is an error, not a NaN.
pub fn mean_over_labels(sum: Tensor, n: f64) -> Result<Tensor> {
    if n == 0.0 {
        candle_core::bail!("every label is masked out; nothing to learn from");
    }
    sum / n
}

/// The summed next-token NLL and the number of counted predictions. Training divides the sum
/// by the count over all micro-batches of a step, so gradient accumulation does not change the
/// loss (HF's accumulation bug came from averaging per micro-batch).
pub fn causal_lm_nll_sum(logits: &Tensor, ids: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, f64)> {
    let (b, t, v) = logits.dims3()?;
    if t < 2 {
        candle_core::bail!("a sequence needs at least 2 tokens for a next-token loss, got {t}");
    }
    let pred = logits.narrow(1, 0, t - 1)?; // (B, T-1, V)
    let labels = ids.narrow(1, 1, t - 1)?.contiguous()?; // (B, T-1)
    let logp = log_softmax_last(&pred.reshape((b * (t - 1), v))?)?; // (B*(T-1), V)
    let labels = labels.reshape((b * (t - 1), 1))?;
    let nll = logp.gather(&labels, 1)?.neg()?.squeeze(1)?; // (B*(T-1),)
    match mask {
        None => Ok((nll.sum_all()?, (b * (t - 1)) as f64)),
        Some(m) => {
            let m = m.narrow(1, 1, t - 1)?.contiguous()?.reshape(b * (t - 1))?.to_dtype(nll.dtype())?;
            let n = m.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            Ok(((nll * m)?.sum_all()?, n))
        }
    }
}

/// [`causal_lm_nll_sum`] of the logits `hidden @ wᵀ`, for the final normed hidden states
/// `hidden` (B, T, C) and the lm_head `w` (V, C), fused: the logits never exist whole (the CPU
/// kernel `fused::linear_cross_entropy` for f32/f64 on the CPU, else
/// `fused::chunked_linear_cross_entropy`). Each position is a row whose label is the next token;
/// the last position of a sequence predicts nothing and gets weight 0.
pub fn causal_lm_nll_sum_fused(
    hidden: &Tensor,
    w: &Tensor,
    ids: &Tensor,
    mask: Option<&Tensor>,
) -> Result<(Tensor, f64)> {
    let (b, t, c) = hidden.dims3()?;
    if t < 2 {
        candle_core::bail!("a sequence needs at least 2 tokens for a next-token loss, got {t}");
    }
    let ids: Vec<Vec<u32>> = ids.to_vec2()?;
    let mask: Option<Vec<Vec<f64>>> = mask.map(|m| m.to_dtype(DType::F64)?.to_vec2()).transpose()?;
    let (mut labels, mut weights) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
    for s in 0..b {
        for p in 0..t {
            let next = (p + 1 < t).then_some(p + 1);
            labels.push(next.map_or(0, |q| ids[s][q]));
            weights.push(next.map_or(0.0, |q| mask.as_ref().map_or(1.0, |m| m[s][q])));
        }
    }
    let n = weights.iter().sum();
    let h = hidden.reshape((b * t, c))?.contiguous()?; // (B, T, C) -> (B*T, C)
    let w = w.contiguous()?;
    if fused_on_cpu(Kernels::Fused, &[&h, &w]) {
        return Ok((super::fused::linear_cross_entropy(&h, &w, labels, weights)?, n));
    }
    Ok((super::fused::chunked_linear_cross_entropy(&h, &w, &labels, &weights, None)?, n))
}

/// `x @ wᵀ` for a frozen `w` (out, in): the backward gives dL/dx only.
///
/// candle's matmul backward always computes the gradient of both operands, so a LoRA run
/// would pay for (and hold) a dense gradient of every frozen base weight. Here the product is
/// computed detached, and a custom op re-attaches it to `x` with a backward of `g @ w`.
/// Checked against finite differences in `tests/grad_check.rs`.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    frozen_base_linear(x, &Frozen::Dense(w.clone()))
}

/// [`frozen_linear`] over a float or quantized base; a quantized one is dequantized for the
/// product and dropped, and dequantized again in the backward.
pub fn frozen_base_linear(x: &Tensor, w: &Frozen) -> Result<Tensor> {
    let y = {
        let wd = w.weight(x.dtype())?;
        let x = x.detach();
        // One token at a time (decoding) is memory-bound: a dot product per weight row.
        if super::fused::gemv::fits(&x, &wd) {
            super::fused::gemv::gemv(&x, &wd)? // (…, in) -> (…, out)
        } else {
            x.broadcast_matmul(&wd.t()?)?.contiguous()? // (…, in) -> (…, out)
        }
    };
    if !x.track_op() {
        return Ok(y); // inference: nothing upstream wants a gradient
    }
    x.apply_op2(&y, FrozenLinear { w: w.clone() })
}

/// Forward: a copy of the precomputed product. Backward: (g @ w) for x, nothing for w.
struct FrozenLinear {
    w: Frozen,
}

pub(crate) fn copy_contiguous<S: candle_core::backend::BackendStorage>(
    s: &S,
    l: &candle_core::Layout,
) -> Result<(S, candle_core::Shape)> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("a precomputed result must be contiguous from offset 0");
    }
    Ok((s.try_clone(l)?, l.shape().clone()))
}

macro_rules! copy_second_arg {
    () => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            s: &candle_core::CpuStorage,
            l: &candle_core::Layout,
        ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
            copy_contiguous(s, l)
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            _: &candle_core::CudaStorage,
            _: &candle_core::Layout,
            s: &candle_core::CudaStorage,
            l: &candle_core::Layout,
        ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
            copy_contiguous(s, l)
        }
    };
}

impl candle_core::CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }
    copy_second_arg!();

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // (…, out) @ (out, in) -> (…, in)
        Ok((Some(g.broadcast_matmul(&self.w.weight(g.dtype())?)?.detach()), None))
    }
}
