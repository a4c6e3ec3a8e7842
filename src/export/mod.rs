//! `whet export`: a run (its newest checkpoint) or a model to what people deploy: a merged HF
//! directory, a PEFT adapter, or a GGUF for llama.cpp and Ollama. `whet merge` is the short
//! form of `--format merged`.
//!
//! A LoRA run is merged onto its base; a QLoRA run onto the base dequantized exactly as it was
//! trained against (the quantized weights, not the original floats), so the merged model
//! computes what the run computed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

mod gguf;

use crate::engine::build;
use crate::engine::checkpoint;
use crate::engine::config::MethodKind;
use crate::load::{self, TextSide};
use crate::model::lora::LoraSettings;
use crate::model::quant::QuantKind;
use crate::model::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An HF directory with the adapter folded in (transformers loads it)
    Merged,
    /// The LoRA adapter alone, as PEFT saves it
    Peft,
    /// One GGUF file for llama.cpp (with --ollama, a Modelfile beside it)
    Gguf,
    /// The LoRA alone as a GGUF adapter, for llama.cpp's --lora over the base GGUF
    GgufAdapter,
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ExportArgs {
    /// A run directory (its newest checkpoint), or a model: an HF directory or a .gguf file
    pub source: PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
    /// GGUF tensor type: f16 (default), f32, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2k … q6k
    #[arg(long)]
    pub quant: Option<String>,
    /// A new path; an existing one is replaced only with --force
    #[arg(long)]
    pub out: PathBuf,
    /// A PEFT adapter to fold into a model source
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Replace an existing output (a directory only if whet wrote it)
    #[arg(long)]
    pub force: bool,
    /// Also write an Ollama Modelfile beside the GGUF
    #[arg(long)]
    pub ollama: bool,
    /// Largest safetensors shard for --format merged, in bytes
    #[arg(long, default_value_t = load::hf::DEFAULT_SHARD)]
    pub max_shard_bytes: u64,
}

/// What an export reads: the model's config and float weights (adapter merged), its text side.
struct Source {
    cfg: Config,
    weights: HashMap<String, Tensor>,
    text: Option<TextSide>,
    /// LoRA / QLoRA: the adapter, unmerged, and the base model's path.
    adapter: Option<(LoraSettings, HashMap<String, Tensor>, Option<PathBuf>)>,
    /// The GGUF the model came from: its tokenizer metadata is copied as it is.
    gguf: Option<PathBuf>,
    reading: Vec<PathBuf>,
    name: String,
}

/// Runs the export, reporting each stage to `progress`; returns the path written.
pub fn run(a: &ExportArgs, progress: &mut dyn FnMut(String)) -> Result<PathBuf> {
    let quant = match (&a.quant, a.format) {
        (None, _) => GgmlDType::F16,
        (Some(q), Format::Gguf) => gguf_type(q)?,
        (Some(_), _) => bail!("--quant applies to --format gguf only"),
    };
    check_out(&a.out, a.force, a.format)?;
    let dev = Device::Cpu;
    progress(format!("reading {}", a.source.display()));
    let src = open(a, &dev)?;
    let reading: Vec<&Path> = src.reading.iter().map(PathBuf::as_path).collect();
    let out = match a.format {
        Format::Merged => {
            progress(format!("writing {} (HF directory)", a.out.display()));
            load::hf::write_dir_sharded(
                &a.out,
                &src.cfg,
                &src.weights,
                src.text.as_ref(),
                &reading,
                a.max_shard_bytes,
            )?
        }
        Format::Peft => {
            let (s, tensors, base) = src
                .adapter
                .as_ref()
                .ok_or_else(|| anyhow!("{}: --format peft needs a LoRA or QLoRA run", a.source.display()))?;
            progress(format!("writing {} (PEFT adapter)", a.out.display()));
            load::peft::write_adapter(&a.out, s, tensors, base.as_deref())?
        }
        Format::Gguf => {
            gguf::write_gguf(&src, &a.out, quant, progress)?;
            if a.ollama {
                let mf = a.out.with_file_name("Modelfile");
                load::atomic_dir::write_file(&mf, gguf::modelfile(&a.out, src.text.as_ref()).as_bytes())?;
                progress(format!("wrote {}", mf.display()));
            }
            a.out.clone()
        }
        Format::GgufAdapter => {
            let (s, tensors, _) = src.adapter.as_ref().ok_or_else(|| {
                anyhow!(
                    "{}: --format gguf-adapter needs a LoRA or QLoRA run, or --adapter",
                    a.source.display()
                )
            })?;
            gguf::write_gguf_adapter(&src, s, tensors, &a.out, progress)?;
            a.out.clone()
        }
    };
    Ok(out)
}

/// `whet export` on the command line: stages and the result on stdout.
pub fn export(a: ExportArgs) -> Result<()> {
    let out = run(&a, &mut |s| println!("{s}"))?;
    println!("exported {} ({})", out.display(), human_size(disk_size(&out)));
    Ok(())
}

fn gguf_type(q: &str) -> Result<GgmlDType> {
    Ok(match q.to_ascii_lowercase().as_str() {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "bf16" => GgmlDType::BF16,
        other => match other.parse::<QuantKind>() {
            Ok(QuantKind::Ggml(t)) => t,
            Ok(_) => bail!(
                "--quant {q}: not a GGUF type (f16, f32, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2k … q6k)"
            ),
            Err(e) => bail!("--quant: {e}"),
        },
    })
}

/// An existing output is replaced only with `--force`.
fn check_out(out: &Path, force: bool, format: Format) -> Result<()> {
    let occupied = match std::fs::read_dir(out) {
        Ok(mut d) => d.next().is_some(),
        Err(_) => out.exists(),
    };
    if occupied && !force {
        bail!("{}: already exists; pass --force to replace it", out.display());
    }
    if matches!(format, Format::Gguf | Format::GgufAdapter) && out.is_dir() {
        bail!("{}: is a directory; --format gguf writes one file (e.g. --out model.gguf)", out.display());
    }
    Ok(())
}

fn open(a: &ExportArgs, dev: &Device) -> Result<Source> {
    if a.source.join("checkpoints").is_dir() || a.source.join("state.json").exists() {
        if a.adapter.is_some() {
            bail!("--adapter applies to a model source; a run brings its own");
        }
        return open_run(&a.source, dev);
    }
    let (cfg, mut weights) = load::load_weights(&a.source, dev)?;
    let text = Some(load::load_text(&a.source)?);
    let mut adapter = None;
    let mut reading = vec![a.source.clone()];
    if let Some(dir) = &a.adapter {
        let (s, tensors) = load::peft::read_adapter(dir, dev)?;
        load::merge_lora(&mut weights, &s, &tensors, dir)?;
        adapter = Some((s, tensors, Some(a.source.clone())));
        reading.push(dir.clone());
    }
    Ok(Source {
        cfg,
        weights,
        text,
        adapter,
        gguf: load::is_gguf(&a.source).then(|| a.source.clone()),
        reading,
        name: stem(&a.source),
    })
}

/// A run's newest checkpoint, rebuilt as training built it, and merged.
fn open_run(run: &Path, dev: &Device) -> Result<Source> {
    let root = run.join("checkpoints");
    let ck = checkpoint::load_latest(&root, dev)?.ok_or_else(|| {
        anyhow!("{}: no complete checkpoint to export (train first, or save one)", run.display())
    })?;
    let cfg = ck.state.config;
    let model_path = cfg.model.path.clone().filter(|_| cfg.method.kind != MethodKind::Pretrain);
    let text = crate::data::dataset::run_text_side(model_path.as_deref(), &cfg.data, &cfg.tokenizer, run)?;
    let vocab = text.as_ref().map(|t| t.tokenizer.get_vocab_size(true)).unwrap_or(0);
    let t = build::trainable(&cfg, vocab, Some(&ck.weights), dev)?;
    let trained: HashMap<String, Tensor> =
        t.vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let mut reading = vec![run.to_path_buf()];
    reading.extend(model_path.clone());
    let (weights, adapter) = if cfg.method.kind.is_lora() {
        let s = cfg.method.lora();
        // QLoRA: the base as it was trained against, dequantized.
        let mut w = load::quantized::dequantized(&t.base, &t.quant)?;
        load::merge_lora(&mut w, &s, &trained, &ck.path)?;
        (w, Some((s, trained, model_path.clone())))
    } else {
        (trained, None)
    };
    Ok(Source {
        cfg: t.config,
        weights,
        text,
        adapter,
        gguf: model_path.filter(|p| load::is_gguf(p)),
        reading,
        name: stem(run),
    })
}

fn stem(p: &Path) -> String {
    p.file_stem().and_then(|s| s.to_str()).unwrap_or("whet-model").to_string()
}

/// Bytes under a path (a file, or a directory's files).
pub fn disk_size(p: &Path) -> u64 {
    match std::fs::read_dir(p) {
        Ok(d) => d.filter_map(|e| e.ok()).map(|e| disk_size(&e.path())).sum(),
        Err(_) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
    }
}

pub fn human_size(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}
