//! `whet bench forward|kernels|matmul`: the benchmarks' whet side. Each prints JSON lines for
//! a script in `scripts/bench/` (or `scripts/device-check.sh`) to set beside PyTorch.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Tensor};

use crate::cli::{load, resolve_model, DeviceArgs};
use crate::generate::{self, Sampling};

/// `whet bench forward`: one JSON line with the median forward time of a `tokens`-long
/// sequence and greedy-generation throughput, for `scripts/bench/forward.sh` to set beside
/// PyTorch.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchForwardArgs {
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    pub tokens: usize,
    #[arg(long, default_value_t = 32)]
    pub gen_tokens: usize,
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn bench_forward(a: BenchForwardArgs) -> Result<()> {
    let (tokens, gen_tokens, reps) = (a.tokens, a.gen_tokens, a.reps);
    let dev = a.device.resolve()?;
    let lm = load(&resolve_model(a.model)?, None, &dev)?;
    let vocab = lm.model.config().vocab_size as u32;
    // A fixed pseudo-random sequence; the benchmark measures arithmetic, not text.
    let ids: Vec<u32> = (0..tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let x = Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?;
    lm.model.forward(&x, None)?.sum_all()?.to_scalar::<f32>()?; // warm-up
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        lm.model.forward(&x, None)?.sum_all()?.to_scalar::<f32>()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let fwd = times[times.len() / 2];
    let sampling = Sampling { temperature: 0.0, top_p: 1.0, seed: 0, ignore_eos: true };
    let prompt = &ids[..16.min(ids.len())];
    let t = Instant::now();
    let produced = generate::generate(&lm, prompt, gen_tokens, &sampling, |_| {})?.len();
    let gen_s = t.elapsed().as_secs_f64();
    let r = serde_json::json!({
        "forward_tokens": tokens, "forward_s": fwd, "forward_tok_per_s": tokens as f64 / fwd,
        "gen_tokens": produced, "gen_s": gen_s, "gen_tok_per_s": produced as f64 / gen_s,
    });
    println!("{r}");
    if produced == 0 {
        return Err(anyhow!("generation stopped at once (EOS); the benchmark measured nothing"));
    }
    Ok(())
}

/// `whet bench kernels`: the fused kernels on a device, checked and timed.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchKernelsArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The storage type to check: f32, or bf16 (CUDA only).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
}

pub fn bench_kernels(a: BenchKernelsArgs) -> Result<()> {
    let dev = a.device.resolve()?;
    let dtype = if a.dtype == "bf16" { DType::BF16 } else { DType::F32 };
    let checks = crate::kernel_check::check_kernels(&dev, dtype)?;
    let mut out = std::io::stdout().lock();
    for c in &checks {
        writeln!(out, "{}", serde_json::to_string(c)?)?;
    }
    let bad: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.op.as_str()).collect();
    if !bad.is_empty() {
        bail!("fused kernels off on {} {}: {}", crate::engine::device::name(&dev), a.dtype, bad.join(", "));
    }
    Ok(())
}

/// `whet bench matmul`: candle's matmul (the `gemm` crate) on the shapes of one training step
/// at `tokens` tokens, of SmolLM2-135M or of `train.sh`'s pretraining workload (a)
/// (`scripts/bench/matmul.sh` times a BLAS, PyTorch's, on the same shapes). One JSON line per
/// shape with the median time and GFLOP/s.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchMatmulArgs {
    /// Tokens per step (batch × sequence); attention runs as 2 sequences of tokens/2. At most
    /// 8192: the lm_head's product is then already 1.6 GB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(4..=8192))]
    pub tokens: u64,
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
    /// Whose shapes: SmolLM2-135M (attention over 2 sequences of tokens/2), or workload (a) of
    /// `train.sh`, hidden 256, intermediate 688, vocab 8192 (sequences of 256).
    #[arg(long, default_value = "smollm2", value_parser = ["smollm2", "pretrain"])]
    pub arch: String,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// (name, batch, m, k, n, whether the right operand is a transposed (n, k) weight).
pub fn matmul_shapes(tokens: usize, arch: &str) -> Vec<(&'static str, usize, usize, usize, usize, bool)> {
    let ((c, q, kv, i, v, heads, hs), (b, t)) = match arch {
        "pretrain" => ((256, 256, 128, 688, 8192, 4, 64), (tokens.div_ceil(256), tokens.min(256))),
        _ => ((576, 576, 192, 1536, 49152, 9, 64), (2, tokens / 2)),
    };
    vec![
        ("q/o x@Wt", 1, tokens, c, q, true),
        ("k/v x@Wt", 1, tokens, c, kv, true),
        ("gate/up x@Wt", 1, tokens, c, i, true),
        ("down x@Wt", 1, tokens, i, c, true),
        ("lm_head x@Wt", 1, tokens, c, v, true),
        // The same forward products over weights stored (in, out), as inference keeps them
        // (`Proj::inference_layout`).
        ("q/o x@W(in,out)", 1, tokens, c, q, false),
        ("k/v x@W(in,out)", 1, tokens, c, kv, false),
        ("gate/up x@W(in,out)", 1, tokens, c, i, false),
        ("down x@W(in,out)", 1, tokens, i, c, false),
        ("lm_head x@W(in,out)", 1, tokens, c, v, false),
        ("gate/up dX=dY@W", 1, tokens, i, c, false),
        ("down dX=dY@W", 1, tokens, c, i, false),
        ("gate/up dW=dYt@X", 1, i, tokens, c, false),
        ("lm_head dX=dY@W", 1, tokens, v, c, false),
        ("scores q@kt", b * heads, t, hs, t, true),
        ("att@v", b * heads, t, t, hs, false),
    ]
}

pub fn bench_matmul(a: BenchMatmulArgs) -> Result<()> {
    let dev = a.device.resolve()?;
    let mut out = std::io::stdout().lock();
    for (name, batch, m, k, n, transposed) in matmul_shapes(a.tokens as usize, &a.arch) {
        let x = Tensor::randn(0f32, 1.0, (batch, m, k), &dev)?;
        let y = if transposed {
            Tensor::randn(0f32, 1.0, (batch, n, k), &dev)?.transpose(1, 2)? // a weight's layout
        } else {
            Tensor::randn(0f32, 1.0, (batch, k, n), &dev)?
        };
        let mut times = Vec::new();
        for rep in 0..=a.reps.max(1) {
            dev.synchronize()?;
            let t = Instant::now();
            let z = x.matmul(&y)?;
            dev.synchronize()?;
            drop(z);
            if rep > 0 {
                times.push(t.elapsed().as_secs_f64()); // the first run warms caches and pools
            }
        }
        times.sort_by(f64::total_cmp);
        let s = times[times.len() / 2];
        let flops = 2.0 * (batch * m * k * n) as f64;
        let r = serde_json::json!({"shape": name, "b": batch, "m": m, "k": k, "n": n, "transposed": transposed, "ms": s * 1e3, "gflops": flops / s / 1e9});
        writeln!(out, "{r}")?;
    }
    Ok(())
}
