//! The GGUF side of `whet export`: the whole model for llama.cpp, the LoRA as llama.cpp's
//! adapter, and the Ollama Modelfile beside a GGUF.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::Tensor;

use super::Source;
use crate::load::gguf_file::{GgufFile, Value};
use crate::load::gguf_write::{self, GgufTensor};
use crate::load::{gguf, TextSide};
use crate::model::lora::LoraSettings;

pub(super) fn write_gguf(
    src: &Source,
    out: &Path,
    want: GgmlDType,
    progress: &mut dyn FnMut(String),
) -> Result<()> {
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
    // The whole-model tensors, then the layers in numeric order.
    let key = |n: &str| (n.split('.').nth(2).and_then(|l| l.parse::<usize>().ok()), n.to_string());
    let mut names: Vec<&String> = src.weights.keys().collect();
    names.sort_by_cached_key(|n| key(n));
    let mut tensors = vec![];
    for name in names {
        if name == "lm_head.weight" && src.cfg.tie_word_embeddings {
            continue;
        }
        let g =
            gguf::gguf_name(name).ok_or_else(|| anyhow!("GGUF export: no GGUF name for tensor {name}"))?;
        let mut t = src.weights[name].clone();
        if let Some(h) = gguf::permuted_heads(&arch, &src.cfg, name) {
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

/// The adapter as llama.cpp's `convert_lora_to_gguf.py` writes it: `general.type = "adapter"`,
/// `adapter.lora.alpha`, and per module `<base tensor>.lora_a` (r, in) and `.lora_b` (out, r),
/// B's rows permuted for q and k as the base's are (the permutation acts on the output side).
/// llama.cpp scales by alpha / r, so rsLoRA's alpha / √r is written as alpha · √r.
pub(super) fn write_gguf_adapter(
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
        if let (Some(h), "lora_b") = (gguf::permuted_heads(&arch, &src.cfg, &base), part) {
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
pub(super) fn modelfile(gguf: &Path, text: Option<&TextSide>) -> String {
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
