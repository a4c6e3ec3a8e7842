//! The headless commands: `whet probe`, `whet score`, `whet generate`, `whet bench`.
//! Each loads a model, runs it and prints to stdout; errors go back to `main`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};

pub use crate::engine::device::{device, parse_device, DeviceSpec};
use crate::generate::{self, Sampling};
use crate::load::{self, LoadedModel};
use crate::logits;

/// The embedded default model, as `scripts/fetch-default-model.sh` places it.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `--model`, else `$WHET_MODEL`, else the default model under the current directory.
pub fn resolve_model(arg: Option<PathBuf>) -> Result<PathBuf> {
    let path = arg
        .or_else(|| std::env::var_os("WHET_MODEL").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL));
    if !path.exists() {
        if path == Path::new(DEFAULT_MODEL) {
            bail!("{DEFAULT_MODEL} is missing: run scripts/fetch-default-model.sh first");
        }
        bail!("{}: no such file or directory", path.display());
    }
    Ok(path)
}

/// Where a command runs: `--device cpu|cuda|cuda:N`, or `--cpu`. The default is the first
/// GPU when this binary was built with CUDA and one is present, else the CPU.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    #[arg(long, value_name = "cpu|cuda[:N]", value_parser = parse_device, conflicts_with = "cpu")]
    pub device: Option<DeviceSpec>,
    /// Run on the CPU (the same as `--device cpu`).
    #[arg(long)]
    pub cpu: bool,
}

/// What this binary can run on, for `whet --version`.
pub const VERSION: &str = if cfg!(feature = "cuda") {
    concat!(env!("CARGO_PKG_VERSION"), " (CPU and CUDA)")
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (CPU only: built without the cuda feature)")
};

impl DeviceArgs {
    /// The device asked for on the command line, if any.
    pub fn spec(&self) -> Option<DeviceSpec> {
        if self.cpu {
            Some(DeviceSpec::Cpu)
        } else {
            self.device
        }
    }

    pub fn resolve(&self) -> Result<Device> {
        device(self.spec())
    }
}

pub(crate) fn load(path: &Path, adapter: Option<&Path>, dev: &Device) -> Result<LoadedModel> {
    let t = Instant::now();
    let lm = match adapter {
        Some(a) => load::load_model_with_adapter(path, a, dev)?,
        None => load::load_model(path, dev)?,
    };
    tracing::info!("loaded {} in {:.2}s", path.display(), t.elapsed().as_secs_f64());
    Ok(lm)
}

/// Logits (T, V) of `ids` as one row-major Vec.
fn all_logits(lm: &LoadedModel, ids: &[u32]) -> Result<Vec<f32>> {
    let dev = lm.model.embed_device();
    let x = Tensor::new(ids, &dev)?.unsqueeze(0)?; // (1, T)
    let logits = lm.model.forward(&x, None)?.squeeze(0)?; // (T, V)
    Ok(logits.flatten_all()?.to_vec1()?)
}

/// The model a command runs: `--model`, an adapter on it, and the device.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// An HF model directory or a .gguf file (default: $WHET_MODEL, then the embedded
    /// SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA adapter directory to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ModelArgs {
    fn load(&self) -> Result<LoadedModel> {
        load(&resolve_model(self.model.clone())?, self.adapter.as_deref(), &self.device.resolve()?)
    }
}

/// `whet probe`: the most likely next tokens after a prompt.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "How are")]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Print one JSON object (see README).
    #[arg(long)]
    pub json: bool,
}

pub fn probe(a: ProbeArgs) -> Result<()> {
    let lm = a.model.load()?;
    let r = crate::infer::next_token(&lm.model, &lm.text, &a.prompt, a.chat, a.top_k, a.temperature)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
        return Ok(());
    }
    writeln!(out, "prompt ids ({}): {:?}", r.prompt_ids.len(), r.prompt_ids)?;
    writeln!(out, "{:>3}  {:>6}  {:>8}  {:>8}  {:<16} text", "#", "id", "prob", "logprob", "piece")?;
    for (i, t) in r.top.iter().enumerate() {
        writeln!(
            out,
            "{:>3}  {:>6}  {:>8.4}  {:>8.3}  {:<16} {:?}",
            i + 1,
            t.id,
            t.prob,
            t.logprob,
            format!("{:?}", t.piece),
            t.text
        )?;
    }
    writeln!(out, "entropy {:.4} nats   top-{} mass {:.4}", r.entropy, r.top.len(), r.cumulative)?;
    Ok(())
}

/// `whet score`: per-token negative log-likelihood and perplexity of a text.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    pub text: Option<String>,
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let text = match (&a.text, &a.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("{}: cannot read", f.display()))?
        }
        (None, None) => bail!("give --text or --file"),
    };
    let json = a.json;
    let lm = a.model.load()?;
    let ids = lm.encode_prompt(&text, false)?;
    if ids.len() < 2 {
        bail!("the text has {} token(s); scoring needs at least 2", ids.len());
    }
    if ids.len() > lm.model.max_positions() {
        bail!(
            "the text has {} tokens, more than the model's context ({})",
            ids.len(),
            lm.model.max_positions()
        );
    }
    let vocab = lm.model.config().vocab_size;
    let r = logits::score(&ids, &all_logits(&lm, &ids)?, vocab);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
        return Ok(());
    }
    writeln!(out, "{:>5}  {:>6}  {:>8}  token", "pos", "id", "nll")?;
    for (i, nll) in r.nll.iter().enumerate() {
        let id = ids[i + 1];
        let text = lm.text.tokenizer.decode(&[id], false).unwrap_or_default();
        writeln!(out, "{:>5}  {:>6}  {:>8.4}  {:?}", i + 1, id, nll, text)?;
    }
    writeln!(
        out,
        "mean nll {:.4}   perplexity {:.3}   ({} predictions)",
        r.mean_nll,
        r.perplexity,
        r.nll.len()
    )?;
    Ok(())
}

/// `whet generate`: continue a prompt, streaming the text.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    let sampling = Sampling { temperature: a.temperature, top_p: a.top_p, seed: a.seed, ignore_eos: false };
    let lm = a.model.load()?;
    let ids = lm.encode_prompt(&a.prompt, a.chat)?;
    let mut out = std::io::stdout().lock();
    let t = Instant::now();
    let mut write_err = None;
    let n = generate::generate(&lm, &ids, a.max_tokens, &sampling, |s| {
        if let Err(e) = out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
            write_err.get_or_insert(e);
        }
    })?
    .len();
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    writeln!(out)?;
    tracing::info!("generated {n} tokens in {:.2}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// `whet runs`: the registered runs, one line each, and how to resume a stale one.
pub fn runs() -> Result<()> {
    use crate::engine::registry::{self, RunStatus};
    let state = crate::engine::sockets::state_dir(|k| std::env::var(k).ok())?;
    let runs = registry::list(&state);
    if runs.is_empty() {
        println!("no runs yet (they are listed in {})", state.join("runs.json").display());
    }
    for r in runs {
        let step = match (r.step, r.max_steps) {
            (Some(s), Some(m)) => format!("step {s}/{m}"),
            (Some(s), None) => format!("step {s}"),
            _ => "no steps".into(),
        };
        let loss = r.loss.map(|l| format!("loss {l:.4}")).unwrap_or_default();
        let eta = r.eta_s.map(|e| format!("ETA {:.0} min", e / 60.0)).unwrap_or_default();
        println!(
            "{:<9} {:<16} {:<12} {:<12} {}",
            format!("{:?}", r.status).to_lowercase(),
            step,
            loss,
            eta,
            r.dir.display()
        );
        if matches!(r.status, RunStatus::Stale | RunStatus::Stopped) {
            let from = r.checkpoint.map(|c| format!(" (from checkpoint step {c})")).unwrap_or_default();
            println!(
                "          resume{from}: whet train {0}/config.toml --resume {0} --detach",
                r.dir.display()
            );
        }
        if r.status == RunStatus::Running {
            println!("          attach: whet attach {}", r.dir.display());
        }
    }
    Ok(())
}

/// The run `whet attach` opens: the one named, if its host is alive, else the newest
/// running one. A run that is not running gets its status and how to resume it.
pub fn attach_target(run_dir: Option<PathBuf>) -> Result<PathBuf> {
    use crate::engine::registry::{self, RunStatus};
    let resume_hint = |d: &Path| {
        format!(
            "resume it with `whet train {0}/config.toml --resume {0} --detach`, or from the workbench's Runs",
            d.display()
        )
    };
    match run_dir {
        Some(d) => {
            let s = registry::summary(&d);
            match s.status {
                RunStatus::Running => Ok(d),
                RunStatus::Stale => {
                    bail!("{}: its engine host died (stale); {}", d.display(), resume_hint(&d))
                }
                RunStatus::Stopped => bail!("{}: not running (stopped); {}", d.display(), resume_hint(&d)),
                other => bail!("{}: not running ({other:?})", d.display()),
            }
        }
        None => {
            let state = crate::engine::sockets::state_dir(|k| std::env::var(k).ok())?;
            registry::list(&state)
                .into_iter()
                .rev()
                .find(|r| r.status == RunStatus::Running)
                .map(|r| r.dir)
                .ok_or_else(|| anyhow!("no run is training; `whet runs` lists them all"))
        }
    }
}

/// `whet merge`: base + PEFT adapter → an HF directory with the adapter folded in.
#[derive(Debug, Clone, clap::Args)]
pub struct MergeArgs {
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub adapter: PathBuf,
    /// A new or empty directory, or one whet wrote before (it is replaced).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let model = resolve_model(a.model)?;
    merge_into(&model, &a.adapter, &a.out)
}

/// Folds `adapter` into `model` and writes the result to `out` as an HF directory: the short
/// form of `whet export MODEL --adapter A --format merged`, which replaces an output whet
/// wrote before (as merge always has).
pub fn merge_into(model: &Path, adapter: &Path, out: &Path) -> Result<()> {
    load::atomic_dir::check_target(out, &[model, adapter])?;
    let a = crate::export::ExportArgs {
        source: model.to_path_buf(),
        format: crate::export::Format::Merged,
        quant: None,
        out: out.to_path_buf(),
        adapter: Some(adapter.to_path_buf()),
        force: true,
        ollama: false,
        max_shard_bytes: load::hf::DEFAULT_SHARD,
    };
    crate::export::run(&a, &mut |_| {})?;
    println!("merged {} into {}", adapter.display(), out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(parse_device("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(parse_device("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1"] {
            assert!(parse_device(bad).unwrap_err().contains("expected cpu, cuda or cuda:N"), "{bad}");
        }
        assert!(matches!(DeviceArgs { device: None, cpu: true }.resolve(), Ok(Device::Cpu)));
        assert!(matches!(device(Some(DeviceSpec::Cpu)), Ok(Device::Cpu)));
    }

    /// With no --device, a GPU only when one answers: a CUDA build on a box without one (or a
    /// CPU-only build) runs on the CPU rather than failing.
    #[test]
    fn the_default_device_is_the_cpu_unless_a_gpu_answers() {
        let gpu = cfg!(feature = "cuda") && Device::new_cuda(0).is_ok();
        let d = device(None).expect("the default device is always some device");
        assert_eq!(d.is_cuda(), gpu, "{d:?}");
    }

    /// Asking a CPU-only binary (or a machine without that GPU) for CUDA is a clear error.
    #[test]
    fn cuda_without_cuda_is_an_error_not_a_panic() {
        let e = format!("{:#}", device(Some(DeviceSpec::Cuda(7))).unwrap_err());
        if cfg!(feature = "cuda") {
            // One line: candle's backtrace (under RUST_BACKTRACE) is not for this error.
            assert!(e.contains("cuda:7") && e.contains("no usable GPU") && e.lines().count() == 1, "{e}");
        } else {
            assert!(e.contains("built without CUDA") && e.contains("--device cpu"), "{e}");
            assert!(VERSION.contains("CPU only"));
        }
    }
}
