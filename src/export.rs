//! `whet export`: a run (its newest checkpoint) or a model to what people deploy: a merged HF
//! directory, a PEFT adapter, or a GGUF for llama.cpp and Ollama. `whet merge` is the short
//! form of `--format merged`.
//!
//! A LoRA run is merged onto its base; a QLoRA run onto the base dequantized exactly as it was
//! trained against (the quantized weights, not the original floats), so the merged model
//! computes what the run computed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use crate::engine::build;
use crate::engine::checkpoint;
use crate::engine::config::MethodKind;
use crate::load::gguf_file::{GgufFile, Value};
use crate::load::gguf_write::{self, GgufTensor};
use crate::load::{self, gguf, TextSide};
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
            write_gguf(&src, &a.out, quant, progress)?;
            if a.ollama {
                let mf = a.out.with_file_name("Modelfile");
                load::atomic_dir::write_file(&mf, modelfile(&a.out, src.text.as_ref()).as_bytes())?;
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
            write_gguf_adapter(&src, s, tensors, &a.out, progress)?;
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
        let s = LoraSettings { ..cfg.method.lora() };
        // QLoRA: the base as it was trained against, dequantized.
        let mut w = t.base.clone();
        for (name, q) in &t.quant {
            w.insert(name.clone(), q.dequantize().with_context(|| format!("dequantizing {name}"))?);
        }
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

fn write_gguf(src: &Source, out: &Path, want: GgmlDType, progress: &mut dyn FnMut(String)) -> Result<()> {
    let (arch, mut meta) = gguf_write::model_metadata(&src.cfg, &src.name, want)?;
    meta.extend(match &src.gguf {
        // The tokenizer as llama.cpp's converter wrote it, key for key.
        Some(p) => {
            let g = GgufFile::open(p)?;
            let mut keys: Vec<(String, Value)> =
                g.metadata.into_iter().filter(|(k, _)| k.starts_with("tokenizer.")).collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            keys
        }
        None => {
            let text = src
                .text
                .as_ref()
                .ok_or_else(|| anyhow!("GGUF export needs a tokenizer; this run has none"))?;
            gguf_write::tokenizer_metadata(text, src.cfg.vocab_size)?
        }
    });
    let mut names: Vec<&String> = src.weights.keys().collect();
    // Layers in numeric order, then the rest.
    names.sort_by_key(|n| (n.split('.').nth(2).and_then(|l| l.parse::<usize>().ok()), n.to_string()));
    let mut tensors = vec![];
    for name in names {
        if name == "lm_head.weight" && src.cfg.tie_word_embeddings {
            continue;
        }
        let g =
            gguf::gguf_name(name).ok_or_else(|| anyhow!("GGUF export: no GGUF name for tensor {name}"))?;
        let mut t = src.weights[name].clone();
        if let Some(h) = permuted_heads(&arch, &src.cfg, name) {
            t = gguf::permute(&t, h)?;
        }
        let dtype = match t.dims() {
            [_] => GgmlDType::F32, // norms and biases stay f32, as llama.cpp keeps them
            [_, cols] => {
                let ty = gguf_write::fit_type(want, *cols);
                if ty != want {
                    tracing::info!(
                        "{g}: {cols} columns do not fit {} blocks; using {}",
                        gguf_write::type_label(want),
                        gguf_write::type_label(ty)
                    );
                    progress(format!(
                        "{g}: {} instead of {}",
                        gguf_write::type_label(ty),
                        gguf_write::type_label(want)
                    ));
                }
                ty
            }
            d => bail!("GGUF export: tensor {name} has {} dimensions", d.len()),
        };
        let data = gguf_write::encode(&t, dtype).with_context(|| format!("GGUF export: tensor {name}"))?;
        tensors.push(GgufTensor { name: g, shape: t.dims().to_vec(), dtype, data });
    }
    progress(format!(
        "writing {} ({} tensors, {})",
        out.display(),
        tensors.len(),
        gguf_write::type_label(want)
    ));
    gguf_write::write(out, &meta, &tensors)
}

/// How many heads llama.cpp permuted the rows of `name` over (q and k of a llama model).
fn permuted_heads(arch: &str, cfg: &Config, name: &str) -> Option<usize> {
    match () {
        _ if arch != "llama" => None,
        _ if name.contains(".q_proj.") => Some(cfg.num_attention_heads),
        _ if name.contains(".k_proj.") => Some(cfg.num_key_value_heads),
        _ => None,
    }
}

/// The adapter as llama.cpp's `convert_lora_to_gguf.py` writes it: `general.type = "adapter"`,
/// `adapter.lora.alpha`, and per module `<base tensor>.lora_a` (r, in) and `.lora_b` (out, r),
/// B's rows permuted for q and k as the base's are (the permutation acts on the output side).
/// llama.cpp scales by alpha / r, so rsLoRA's alpha / √r is written as alpha · √r.
fn write_gguf_adapter(
    src: &Source,
    s: &LoraSettings,
    tensors: &HashMap<String, Tensor>,
    out: &Path,
    progress: &mut dyn FnMut(String),
) -> Result<()> {
    let (arch, _) = gguf_write::model_metadata(&src.cfg, &src.name, GgmlDType::F32)?;
    let alpha = if s.rslora { s.alpha * (s.r as f64).sqrt() } else { s.alpha };
    let meta = vec![
        ("general.architecture".to_string(), Value::Str(arch.clone())),
        ("general.type".into(), Value::Str("adapter".into())),
        ("general.name".into(), Value::Str(src.name.clone())),
        ("adapter.type".into(), Value::Str("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32(alpha as f32)),
    ];
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut out_tensors = vec![];
    for name in names {
        let (module, part) = match (name.strip_suffix(".lora_A.weight"), name.strip_suffix(".lora_B.weight"))
        {
            (Some(m), _) => (m, "lora_a"),
            (_, Some(m)) => (m, "lora_b"),
            _ => bail!("GGUF adapter: unexpected tensor {name}"),
        };
        let base = format!("{module}.weight");
        let g = gguf::gguf_name(&base).ok_or_else(|| anyhow!("GGUF adapter: no GGUF name for {base}"))?;
        let mut t = tensors[name].clone();
        if let (Some(h), "lora_b") = (permuted_heads(&arch, &src.cfg, &base), part) {
            t = gguf::permute(&t, h)?;
        }
        let data = gguf_write::encode(&t, GgmlDType::F32)?;
        out_tensors.push(GgufTensor {
            name: format!("{g}.{part}"),
            shape: t.dims().to_vec(),
            dtype: GgmlDType::F32,
            data,
        });
    }
    progress(format!("writing {} ({} adapter tensors, alpha {alpha})", out.display(), out_tensors.len()));
    gguf_write::write(out, &meta, &out_tensors)
}

/// An Ollama Modelfile: FROM the GGUF, its stop tokens, and its chat template in Ollama's Go
/// syntax when it is one Ollama's templates can say (ChatML); otherwise Ollama reads
/// `tokenizer.chat_template` from the GGUF itself.
fn modelfile(gguf: &Path, text: Option<&TextSide>) -> String {
    let file = gguf.file_name().and_then(|f| f.to_str()).unwrap_or("model.gguf");
    let mut m = format!("FROM ./{file}\n");
    let template = text.and_then(|t| t.chat_template.as_deref()).unwrap_or("");
    let mut stops: Vec<String> = text.and_then(|t| t.eos_token.clone()).into_iter().collect();
    if template.contains("<|im_start|>") {
        m.push_str(
            "TEMPLATE \"\"\"{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\
             {{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}\
             <|im_start|>assistant\n\"\"\"\n",
        );
        stops.push("<|im_end|>".into());
    } else if !template.is_empty() {
        m.push_str(
            "# The chat template is the GGUF's tokenizer.chat_template; Ollama reads it from there.\n",
        );
    }
    stops.sort();
    stops.dedup();
    for s in stops {
        m.push_str(&format!("PARAMETER stop \"{s}\"\n"));
    }
    m
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
