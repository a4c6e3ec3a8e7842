//! `whet bench kernels`: every fused op with a kernel on a device (causal softmax, RMSNorm,
//! SwiGLU, rope, and the loss head fused with the lm_head), checked and timed there. Values and input gradients are compared with the
//! composed ops in f64 on the CPU, run on the same inputs rounded to the dtype under test, and
//! both forms are timed (forward + backward) on the device. This is how a GPU box checks the
//! CUDA kernels without a Rust toolchain: `scripts/device-check.sh` runs it.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use serde::Serialize;

use candle_core::quantized::GgmlDType;

use crate::model::ops::{self, Rope};
use crate::model::quant::{quant_linear, QWeight, QuantKind};
use crate::model::{Config, Kernels, RopeLayout};

/// One op on one device and dtype: its largest errors, relative to the reference's largest
/// magnitude, and its time beside the composed ops'.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    pub op: String,
    pub device: String,
    pub dtype: String,
    /// max |fused − reference| / max |reference| over the output.
    pub value_err: f64,
    /// The same over every input's gradient.
    pub grad_err: f64,
    pub tolerance: f64,
    pub ok: bool,
    /// Median forward + backward time, fused and composed, on the device.
    pub fused_ms: f64,
    pub composed_ms: f64,
}

/// The error a dtype is allowed: f32 rounding grown over a row's sums, or bf16's 8-bit
/// mantissa (the kernels compute in f32 and round once on output).
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        DType::F32 => 1e-4,
        _ => 2e-2,
    }
}

/// How a case runs its op on its inputs with either kernel choice.
type RunOp = Box<dyn Fn(&[Tensor], Kernels) -> Result<Tensor>>;

/// An op under test: its inputs (f64, CPU) and how to run it.
struct Case {
    name: &'static str,
    inputs: Vec<Tensor>,
    run: RunOp,
}

/// Uniform in [-1, 1), f64 on the CPU, from a fixed generator: the same inputs on every machine
/// (the gradient checks of `tests/grad_check.rs` draw theirs from it too).
pub fn lcg(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// SmolLM2-135M's attention and MLP widths, small batch: the shapes a step runs.
fn rope_config(layout: RopeLayout, kernels: Kernels) -> Config {
    Config {
        vocab_size: 64,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 1,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        rope_layout: layout,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        attention_bias: false,
        o_bias: false,
        mlp_bias: false,
        kernels,
        precision: Default::default(),
    }
}

fn cases() -> Result<Vec<Case>> {
    let mut cases = vec![
        Case {
            name: "causal-softmax",
            inputs: vec![(lcg(&[2, 9, 128, 128], 1)? * 4.0)?],
            run: Box::new(|x, k| ops::causal_softmax(&x[0], 0.125, 0, k)),
        },
        Case {
            name: "causal-softmax-cached",
            inputs: vec![(lcg(&[2, 9, 16, 144], 2)? * 4.0)?],
            run: Box::new(|x, k| ops::causal_softmax(&x[0], 0.125, 128, k)),
        },
        Case {
            name: "rms-norm",
            inputs: vec![lcg(&[2, 128, 576], 3)?, (lcg(&[576], 4)? + 1.0)?],
            run: Box::new(|x, k| ops::rms_norm(&x[0], &x[1], 1e-5, k)),
        },
        Case {
            name: "swiglu",
            inputs: vec![(lcg(&[2, 128, 1536], 5)? * 3.0)?, lcg(&[2, 128, 1536], 6)?],
            run: Box::new(|x, k| ops::swiglu(&x[0], &x[1], k)),
        },
    ];
    cases.push(Case {
        name: "linear-cross-entropy",
        inputs: vec![lcg(&[2, 128, 576], 8)?, (lcg(&[8192, 576], 9)? * 0.2)?],
        run: Box::new(|x, k| {
            let ids: Vec<u32> = (0..256u32).map(|i| i.wrapping_mul(2654435761) % 8192).collect();
            let ids = Tensor::from_vec(ids, (2, 128), x[0].device())?;
            match k {
                Kernels::Fused => Ok(ops::causal_lm_nll_sum_fused(&x[0], &x[1], &ids, None)?.0),
                Kernels::Composed => {
                    // The loss in f32 at least, as the fused head computes it.
                    let acc = if x[0].dtype() == DType::F64 { DType::F64 } else { DType::F32 };
                    let logits = x[0].broadcast_matmul(&x[1].t()?)?.to_dtype(acc)?;
                    Ok(ops::causal_lm_nll_sum(&logits, &ids, None)?.0)
                }
            }
        }),
    });
    for (name, layout) in [("rope-half", RopeLayout::Half), ("rope-interleaved", RopeLayout::Interleaved)] {
        cases.push(Case {
            name,
            inputs: vec![lcg(&[2, 9, 128, 64], 7)?],
            run: Box::new(move |x, k| {
                Rope::new(&rope_config(layout, k), 256, x[0].device())?.apply(&x[0], 3)
            }),
        });
    }
    // QLoRA's base: the quantized linear on the device (NF4 dequantized with candle's ops
    // there, a GGUF type with candle's quantized kernels) against the same dequantized weights
    // in f64. Quantized once per device, outside the timed op.
    for (name, kind) in
        [("quant-linear-nf4", QuantKind::Nf4), ("quant-linear-q4_0", QuantKind::Ggml(GgmlDType::Q4_0))]
    {
        let w = (lcg(&[1536, 576], 10)? * 0.1)?.to_dtype(DType::F32)?;
        let dense = QWeight::quantize(&w, kind, name)?.dequantize()?.to_dtype(DType::F64)?;
        let on_device: std::cell::RefCell<Option<QWeight>> = Default::default();
        cases.push(Case {
            name,
            inputs: vec![lcg(&[2, 128, 576], 11)?],
            run: Box::new(move |x, k| match k {
                Kernels::Composed => {
                    let d = dense.to_dtype(x[0].dtype())?.to_device(x[0].device())?;
                    x[0].broadcast_matmul(&d.t()?) // (…, in) @ (in, out)
                }
                Kernels::Fused => {
                    let mut cached = on_device.borrow_mut();
                    if cached.as_ref().is_none_or(|q| !q.device().same_device(x[0].device())) {
                        *cached = Some(QWeight::quantize(&w.to_device(x[0].device())?, kind, name)?);
                    }
                    let q = cached.as_ref().ok_or_else(|| candle_core::Error::Msg("no weight".into()))?;
                    quant_linear(&x[0], q)
                }
            }),
        });
    }
    Ok(cases)
}

/// The op's output and the gradients of Σ y ⊙ r for each input.
fn value_and_grads(case: &Case, inputs: &[Tensor], r: &Tensor, k: Kernels) -> Result<(Tensor, Vec<Tensor>)> {
    let vars = inputs.iter().map(Var::from_tensor).collect::<Result<Vec<_>>>()?;
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = (case.run)(&xs, k)?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let g = vars
        .iter()
        .map(|v| {
            grads
                .get(v)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("{}: no gradient", case.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((y, g))
}

/// max |a − b| / max |b|, in f64 on the CPU.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_dtype(DType::F64)?.to_device(&Device::Cpu)?, b.to_dtype(DType::F64)?);
    let diff = (a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / scale.max(1e-30))
}

/// The median time of forward + backward with kernels `k`, synchronised with the device.
fn time_ms(case: &Case, inputs: &[Tensor], r: &Tensor, k: Kernels, dev: &Device) -> Result<f64> {
    let mut times = Vec::new();
    for rep in 0..6 {
        dev.synchronize()?;
        let t = Instant::now();
        value_and_grads(case, inputs, r, k)?;
        dev.synchronize()?;
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3); // the first run loads the kernels
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Checks and times every fused op with a kernel for (`dev`, `dtype`). An error if the device
/// has no fused kernels for that dtype: the check must not quietly test the composed ops.
pub fn check_kernels(dev: &Device, dtype: DType) -> Result<Vec<KernelCheck>> {
    let probe = Tensor::zeros(1, dtype, dev)?;
    if !ops::fused(Kernels::Fused, &[&probe]) {
        candle_core::bail!("this build has no fused kernels for {dtype:?} on {dev:?}");
    }
    let mut out = Vec::new();
    for case in cases()? {
        // Both sides start from the same numbers: the inputs rounded to the dtype under test.
        let rounded = case
            .inputs
            .iter()
            .map(|x| x.to_dtype(dtype)?.to_dtype(DType::F64))
            .collect::<Result<Vec<_>>>()?;
        let probe_y = (case.run)(&rounded, Kernels::Composed)?;
        let r = lcg(probe_y.dims(), 99)?.to_dtype(dtype)?.to_dtype(DType::F64)?;
        let (y_ref, g_ref) = value_and_grads(&case, &rounded, &r, Kernels::Composed)?;

        let on_dev = rounded.iter().map(|x| x.to_dtype(dtype)?.to_device(dev)).collect::<Result<Vec<_>>>()?;
        let r_dev = r.to_dtype(dtype)?.to_device(dev)?;
        let (y, g) = value_and_grads(&case, &on_dev, &r_dev, Kernels::Fused)?;
        let value_err = rel_err(&y, &y_ref)?;
        let mut grad_err = 0f64;
        for (g, g_ref) in g.iter().zip(&g_ref) {
            grad_err = grad_err.max(rel_err(g, g_ref)?);
        }
        let tol = tolerance(dtype);
        out.push(KernelCheck {
            op: case.name.to_string(),
            device: crate::engine::device::name(dev),
            dtype: format!("{dtype:?}").to_lowercase(),
            value_err,
            grad_err,
            tolerance: tol,
            ok: value_err <= tol && grad_err <= tol,
            fused_ms: time_ms(&case, &on_dev, &r_dev, Kernels::Fused, dev)?,
            composed_ms: time_ms(&case, &on_dev, &r_dev, Kernels::Composed, dev)?,
        });
    }
    Ok(out)
}
