//! LoRA (Hu et al., 2021, arXiv:2106.09685) as PEFT implements it (`peft/tuners/lora/layer.py`):
//! `y = W x + b + scale · B (A x)`, with `scale = alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
//! A is (r, in) and B is (out, r), the shapes PEFT saves.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::config::{Config, Kernels, Precision};
use super::quant::{quant_linear, Frozen, QWeight, QuantWeights};

/// The LoRA settings whet reads and writes, under PEFT's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names such as `q_proj`, `down_proj`.
    pub targets: Vec<String>,
    pub rslora: bool,
}

impl LoraSettings {
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub fn targets(&self, module: &str) -> bool {
        self.targets.iter().any(|t| t == module)
    }
}

/// The adapter weights beside the base: a VarBuilder over HF-style names
/// (`model.layers.0.self_attn.q_proj.lora_A.weight`) and the settings; with QLoRA, the
/// quantized base projections, which take the place of the float ones.
#[derive(Clone)]
pub struct Adapters<'a> {
    pub vb: VarBuilder<'a>,
    pub settings: &'a LoraSettings,
    pub quant: Option<&'a QuantWeights>,
}

impl<'a> Adapters<'a> {
    pub fn pp(&self, s: &str) -> Self {
        Self { vb: self.vb.pp(s), settings: self.settings, quant: self.quant }
    }
}

/// The frozen part of a projection.
#[derive(Debug, Clone)]
enum Base {
    Dense(Linear),
    /// QLoRA: a quantized weight (`quant::quant_linear`), its bias in float.
    Quant(QWeight, Option<Tensor>),
    /// A frozen float weight stored transposed, (in, out), and its bias: inference on the CPU
    /// (`Proj::inference_layout`).
    DenseT(Tensor, Option<Tensor>),
}

/// A linear projection, optionally with a LoRA adapter.
#[derive(Debug, Clone)]
pub struct Proj {
    base: Base,
    lora: Option<Lora>,
    kernels: Kernels,
    precision: Precision,
}

#[derive(Debug, Clone)]
struct Lora {
    /// (r, in)
    a: Tensor,
    /// (out, r)
    b: Tensor,
    scale: f64,
}

impl Proj {
    /// Loads `vb/weight` (+ bias) and, when `module` is a LoRA target, `lora_A`/`lora_B`.
    pub fn load(
        vb: VarBuilder,
        d_in: usize,
        d_out: usize,
        bias: bool,
        module: &str,
        adapters: Option<&Adapters>,
        cfg: &Config,
    ) -> Result<Self> {
        let p = cfg.precision;
        let quant = adapters.and_then(|a| a.quant).and_then(|q| q.get(&format!("{}.weight", vb.prefix())));
        let b = if bias { Some(p.keep(vb.get(d_out, "bias")?)?) } else { None };
        let base = match quant {
            Some(q) if q.dims() != (d_out, d_in) => {
                candle_core::bail!(
                    "{}.weight: quantized shape {:?}, expected {:?}",
                    vb.prefix(),
                    q.dims(),
                    (d_out, d_in)
                )
            }
            Some(q) => Base::Quant(q.clone(), b),
            None => Base::Dense(Linear::new(p.keep(vb.get((d_out, d_in), "weight")?)?, b)),
        };
        let lora = match adapters {
            Some(ad) if ad.settings.targets(module) => {
                let r = ad.settings.r;
                let vb = ad.vb.pp(module);
                Some(Lora {
                    a: p.keep(vb.get((r, d_in), "lora_A.weight")?)?,
                    b: p.keep(vb.get((d_out, r), "lora_B.weight")?)?,
                    scale: ad.settings.scale(),
                })
            }
            _ => None,
        };
        Ok(Self { base, lora, kernels: cfg.kernels, precision: p })
    }

    /// A projection with no adapter (the lm_head).
    pub fn plain(w: Tensor, precision: Precision) -> Result<Self> {
        let w = precision.keep(w)?;
        Ok(Self {
            base: Base::Dense(Linear::new(w, None)),
            lora: None,
            kernels: Kernels::Composed,
            precision,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, None)
    }

    /// The adapter, its frozen base (float or quantized) and the bias, when the adapter and
    /// the base run as one fused op on the CPU (`fused::lora_linear_frozen`).
    fn fused_lora<'a>(&'a self, x: &'a Tensor) -> Option<(Frozen, &'a Lora, Option<&'a Tensor>)> {
        let l = self.lora.as_ref()?;
        let (w, bias, typed) = match &self.base {
            Base::Dense(b) if !b.weight().track_op() => {
                (Frozen::Dense(b.weight().clone()), b.bias(), b.weight())
            }
            Base::Quant(q, bias) => (Frozen::Quant(q.clone()), bias.as_ref(), x),
            Base::Dense(_) | Base::DenseT(..) => return None,
        };
        super::ops::fused_on_cpu(self.kernels, &[typed, &l.a, &l.b]).then_some((w, l, bias))
    }

    /// The float base weight (out, in); None for a quantized or transposed one.
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.base {
            Base::Dense(l) => Some(l.weight()),
            Base::Quant(..) | Base::DenseT(..) => None,
        }
    }

    /// Stores a frozen float base with no adapter transposed, (in, out), when it lives on the
    /// CPU in f32/f64. gemm reads an (in, out) weight as it is, but packs an (out, in) one
    /// afresh for every block of rows it multiplies: on SmolLM2's shapes at 256 tokens,
    /// down_proj took 2.55 ms against 5.93 and gate_proj 2.48 against 5.52 (`whet bench
    /// matmul`; scripts/bench/README.md, seventh round). Only for models that never train: their
    /// input gradient would need the other layout.
    pub fn inference_layout(&mut self) -> Result<()> {
        let Base::Dense(l) = &self.base else { return Ok(()) };
        let w = l.weight();
        let float = matches!(w.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
        let mixed = self.precision.compute_dtype().is_some(); // its cast happens in forward_t
        if self.lora.is_some() || w.track_op() || !w.device().is_cpu() || !float || mixed {
            return Ok(());
        }
        let wt = w.t()?.contiguous()?; // (out, in) -> (in, out)
        self.base = Base::DenseT(wt, l.bias().cloned());
        Ok(())
    }

    /// The weight of a trainable float base on the fused CPU path with nothing after it (no
    /// bias, no adapter), for `xs`: such a projection can end in one op with what follows it.
    pub(crate) fn plain_trainable(&self, xs: &[&Tensor]) -> Option<&Tensor> {
        let (Base::Dense(base), None) = (&self.base, &self.lora) else { return None };
        let w = base.weight();
        let plain = w.track_op() && base.bias().is_none() && self.precision.compute_dtype().is_none();
        let served = super::ops::fused_on_cpu(self.kernels, &[&[w][..], xs].concat());
        (plain && served).then_some(w)
    }

    /// `residual + forward_t(x)`, one op for a plain trainable base (`fused::linear_add`):
    /// candle's add node would keep this projection's output alive until the backward.
    pub fn forward_add(
        &self,
        x: &Tensor,
        residual: &Tensor,
        drop: Option<&mut super::ops::Dropout>,
    ) -> Result<Tensor> {
        match self.plain_trainable(&[x, residual]) {
            Some(w) => super::fused::linear_add(x, w, residual),
            None => residual + self.forward_t(x, drop)?,
        }
    }

    /// `forward_t(x)` (B, T, n·hs) rotated by `rope` at positions `pos..` in heads of `hs`; one
    /// op for a plain trainable base (`fused::linear_rope`): the rope node would keep the
    /// unrotated projection alive until the backward.
    pub fn forward_rope(
        &self,
        x: &Tensor,
        (rope, pos, hs): (&super::ops::Rope, usize, usize),
        drop: Option<&mut super::ops::Dropout>,
    ) -> Result<Tensor> {
        match self.plain_trainable(&[x]) {
            Some(w) => {
                let rot = rope.rows(pos, (x.dim(1)?, w.dim(0)?), hs, x.dtype())?;
                super::fused::linear_rope(x, w, rot)
            }
            None => rope.apply_rows(&self.forward_t(x, drop)?.contiguous()?, pos, hs),
        }
    }

    /// With `drop`, the adapter's input gets LoRA dropout (PEFT's `lora_dropout`).
    pub fn forward_t(&self, x: &Tensor, drop: Option<&mut super::ops::Dropout>) -> Result<Tensor> {
        if let Some((w, l, bias)) = self.fused_lora(x) {
            let mask = match drop {
                Some(d) => d.mask(x, d.lora)?,
                None => None,
            };
            let y = super::fused::lora_linear_frozen(x, w, &l.a, &l.b, l.scale, mask.as_ref())?;
            return match bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            };
        }
        let add_bias = |y: Tensor, b: Option<&Tensor>| match b {
            Some(b) => y.broadcast_add(&self.precision.cast(b)?),
            None => Ok(y),
        };
        let y = match &self.base {
            Base::Quant(w, b) => add_bias(quant_linear(x, w)?, b.as_ref())?,
            Base::DenseT(wt, b) => add_bias(transposed_linear(x, wt)?, b.as_ref())?,
            // A base weight no gradient can reach (LoRA, inference) gets none computed.
            Base::Dense(base) if !base.weight().track_op() => {
                add_bias(super::ops::frozen_linear(x, base.weight())?, base.bias())?
            }
            // The f32 master weight, cast on its way in: its gradient comes back in f32.
            // On the CPU in f32/f64: one op whose backward writes dW whole (`fused::linear`).
            Base::Dense(base)
                if self.precision.compute_dtype().is_none()
                    && super::ops::fused_on_cpu(self.kernels, &[base.weight(), x]) =>
            {
                add_bias(super::fused::linear(x, base.weight())?, base.bias())?
            }
            Base::Dense(base) => match self.precision.compute_dtype() {
                Some(_) => {
                    let cast = |t: &Tensor| self.precision.cast(t);
                    Linear::new(cast(base.weight())?, base.bias().map(cast).transpose()?).forward(x)?
                }
                None => base.forward(x)?,
            },
        };
        match &self.lora {
            None => Ok(y),
            Some(l) => {
                let x = match drop {
                    Some(d) => d.apply(x, d.lora)?,
                    None => x.clone(),
                };
                let (a, b) = (self.precision.cast(&l.a)?, self.precision.cast(&l.b)?);
                // (…, in) -> (…, r) -> (…, out)
                let h = x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
                y + (h * l.scale)?
            }
        }
    }
}

/// `x @ wt` over a weight stored (in, out): (…, in) -> (…, out). A few rows of x (decoding)
/// take the memory-bound `gemv_t`; more go to gemm.
fn transposed_linear(x: &Tensor, wt: &Tensor) -> Result<Tensor> {
    use super::fused::gemv;
    if !x.track_op() && gemv::fits_t(x, wt) {
        return gemv::gemv_t(x, wt);
    }
    x.broadcast_matmul(wt)
}
