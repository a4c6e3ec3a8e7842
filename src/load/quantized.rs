//! A QLoRA base: the seven projections of every layer quantized, the rest (embeddings, norms,
//! lm_head) in f32, read one tensor at a time so the float model never exists whole.
//!
//! An HF directory is read with `pread` (`FileExt::read_exact_at`), not mapped: mapped pages
//! count toward RSS while the map lives, and the point is to stay small. A GGUF base with
//! `keep` takes each quantized projection's bytes as they are, undoing llama.cpp's Q/K row
//! permutation on whole rows; other types dequantize one tensor and requantize it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::{gguf, gguf_file::GgufFile, hf, is_gguf};
use crate::model::quant::{QWeight, QuantKind, QuantWeights};
use crate::model::Config;

/// What QLoRA trains over.
pub struct QuantBase {
    pub config: Config,
    /// Embeddings, norms, lm_head, biases: f32.
    pub floats: HashMap<String, Tensor>,
    pub quant: QuantWeights,
}

impl QuantBase {
    /// Bytes of the quantized projections, and the types used, for the log.
    pub fn summary(&self) -> String {
        let bytes: usize = self.quant.values().map(QWeight::bytes).sum();
        let mut types: Vec<String> = self.quant.values().map(QWeight::type_name).collect();
        types.sort();
        types.dedup();
        format!(
            "{} projections quantized ({}), {:.1} MiB",
            self.quant.len(),
            types.join(", "),
            bytes as f64 / 1048576.0
        )
    }

    /// Every weight in f32 under its HF name: the base the adapters were trained against,
    /// for merging and export.
    pub fn dequantized(&self) -> Result<HashMap<String, Tensor>> {
        dequantized(&self.floats, &self.quant)
    }
}

/// The float weights with the quantized ones dequantized beside them, under HF names.
pub fn dequantized(
    floats: &HashMap<String, Tensor>,
    quant: &QuantWeights,
) -> Result<HashMap<String, Tensor>> {
    let mut out = floats.clone();
    for (name, q) in quant {
        out.insert(name.clone(), q.dequantize().with_context(|| format!("dequantizing {name}"))?);
    }
    Ok(out)
}

/// The base projections QLoRA quantizes: the seven linears of each layer.
pub fn is_projection(name: &str) -> bool {
    const MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    name.starts_with("model.layers.")
        && name.ends_with(".weight")
        && MODULES.iter().any(|m| name.ends_with(&format!(".{m}.weight")))
}

pub fn load(path: &Path, kind: QuantKind, dev: &Device) -> Result<QuantBase> {
    if is_gguf(path) {
        return from_gguf(path, kind, dev);
    }
    if !path.is_dir() {
        bail!("{}: not a model (expected an HF directory or a .gguf file)", path.display());
    }
    if is_bnb_4bit(path)? {
        let base = load_bnb_4bit(path, dev)?;
        return match kind {
            // The stored NF4 blocks are bitsandbytes' own: taken as they are.
            QuantKind::Nf4 | QuantKind::Keep => Ok(base),
            other => {
                let QuantBase { config, floats, quant } = base;
                let mut out = QuantBase { config, floats, quant: HashMap::new() };
                for (name, q) in quant {
                    let w = q.dequantize()?;
                    let q = QWeight::quantize(&w, other, &name)
                        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
                    out.quant.insert(name, q);
                }
                Ok(out)
            }
        };
    }
    if kind == QuantKind::Keep {
        bail!(
            "method.quant = \"keep\" keeps a GGUF file's own types; {} is an HF directory: choose nf4 or a GGUF type (q4_0, q8_0, q4k, …)",
            path.display()
        );
    }
    let hc = hf::config(path)?;
    let config = hc.to_config().map_err(|e| anyhow!("{}: {e}", path.join("config.json").display()))?;
    let mut base = QuantBase { config, floats: HashMap::new(), quant: HashMap::new() };
    for file in hf::weight_files(path)? {
        for_each_tensor(&file, dev, |name, t| {
            if base.quant.contains_key(&name) || base.floats.contains_key(&name) {
                bail!("{}: tensor {name} is also in an earlier shard; which one is meant?", file.display());
            }
            if is_projection(&name) {
                let q = QWeight::quantize(&t, kind, &name).map_err(|e| anyhow!("{}: {e}", file.display()))?;
                base.quant.insert(name, q);
            } else {
                base.floats.insert(name, t.to_dtype(DType::F32)?);
            }
            Ok(())
        })?;
    }
    Ok(base)
}

fn from_gguf(path: &Path, kind: QuantKind, dev: &Device) -> Result<QuantBase> {
    let g = GgufFile::open(path)?;
    let config = gguf::config(&g)?;
    let file = path.display();
    let mut base = QuantBase { config, floats: HashMap::new(), quant: HashMap::new() };
    for info in &g.tensors {
        let Some(name) = gguf::hf_name(&info.name) else { continue };
        let heads = gguf::permuted_heads(gguf::arch(&g), &base.config, &name);
        let stored_float = matches!(info.dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if is_projection(&name) && kind == QuantKind::Keep && !stored_float {
            let raw = g.raw(info);
            let bytes = match heads {
                Some(h) => gguf::unpermute_rows(raw, info.shape[0], h),
                None => raw.to_vec(),
            };
            let q = qtensor_from_ggml(info.dtype, &bytes, info.shape.clone(), dev)
                .map_err(|e| anyhow!("{file}: tensor {}: {e}", info.name))?;
            base.quant.insert(name, QWeight::Ggml(std::sync::Arc::new(q)));
            continue;
        }
        let mut t = g.dequantize(info, dev)?;
        if let Some(h) = heads {
            t = gguf::unpermute(&t, h).with_context(|| format!("{file}: tensor {}", info.name))?;
        }
        if is_projection(&name) && kind != QuantKind::Keep {
            let q = QWeight::quantize(&t, kind, &name).map_err(|e| anyhow!("{file}: {e}"))?;
            base.quant.insert(name, q);
        } else {
            if is_projection(&name) {
                tracing::info!("{file}: {} is stored as {:?}; it stays float", info.name, info.dtype);
            }
            base.floats.insert(name, t);
        }
    }
    Ok(base)
}

/// Calls `f` with each tensor of a safetensors file, read on its own with `pread`, in the
/// file's order. The header is parsed and its offsets validated by the `safetensors` crate;
/// errors name the file and the tensor.
pub fn for_each_tensor(
    path: &Path,
    dev: &Device,
    mut f: impl FnMut(String, Tensor) -> Result<()>,
) -> Result<()> {
    use safetensors::{tensor::Metadata, Dtype};
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let bad = |msg: String| anyhow!("{}: not a valid safetensors file: {msg}", path.display());
    let len = file.metadata()?.len();
    let mut n = [0u8; 8];
    file.read_exact_at(&mut n, 0).map_err(|e| bad(format!("header length: {e}")))?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) || n > 100 << 20 {
        return Err(bad(format!("header length {n} exceeds the file ({len} bytes)")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8).map_err(|e| bad(format!("header: {e}")))?;
    let meta: Metadata = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    if 8 + n + meta.data_len() as u64 > len {
        return Err(bad(format!(
            "the tensors need {} bytes after the header; the file is {len}",
            meta.data_len()
        )));
    }
    for name in meta.offset_keys() {
        let info = meta.info(&name).ok_or_else(|| bad(format!("tensor {name} has no entry")))?;
        let dtype = match info.dtype {
            Dtype::U8 => DType::U8,
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(bad(format!(
                    "tensor {name}: dtype {other:?} (whet reads F32, F16, BF16, F64, U8)"
                )))
            }
        };
        let (s, e) = info.data_offsets;
        let mut buf = vec![0u8; e - s];
        file.read_exact_at(&mut buf, 8 + n + s as u64)
            .with_context(|| format!("{}: tensor {name}", path.display()))?;
        let t = Tensor::from_raw_buffer(&buf, dtype, &info.shape, dev)
            .map_err(|e| anyhow!("{}: tensor {name}: {e}", path.display()))?;
        drop(buf);
        f(name, t)?;
    }
    Ok(())
}

/// Whether `config.json` says bitsandbytes 4-bit (`quantization_config.quant_method`).
pub fn is_bnb_4bit(dir: &Path) -> Result<bool> {
    let path = dir.join("config.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(false) };
    let v: Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))?;
    let q = &v["quantization_config"];
    Ok(q["quant_method"].as_str() == Some("bitsandbytes")
        && (q["load_in_4bit"].as_bool() == Some(true) || q["_load_in_4bit"].as_bool() == Some(true)))
}

/// An HF directory bitsandbytes saved in 4-bit: each projection's NF4 blocks taken as stored
/// (`weight`, `weight.absmax`, `weight.nested_absmax`, the code books and the JSON quant
/// state), the other tensors as floats.
pub fn load_bnb_4bit(dir: &Path, dev: &Device) -> Result<QuantBase> {
    use crate::model::quant::nf4::{dynamic_code, Nf4Parts, Nf4Tensor, NF4};
    let hc = hf::config(dir)?;
    let config = hc.to_config().map_err(|e| anyhow!("{}: {e}", dir.join("config.json").display()))?;
    let mut all: HashMap<String, Tensor> = HashMap::new();
    for file in hf::weight_files(dir)? {
        for_each_tensor(&file, &Device::Cpu, |name, t| {
            all.insert(name, t);
            Ok(())
        })?;
    }
    const STATE: &str = ".quant_state.bitsandbytes__nf4";
    let states: Vec<String> = all.keys().filter_map(|k| k.strip_suffix(STATE).map(str::to_string)).collect();
    let mut base = QuantBase { config, floats: HashMap::new(), quant: HashMap::new() };
    let file = dir.display();
    for w in states {
        let take = |all: &mut HashMap<String, Tensor>, suffix: &str| {
            all.remove(&format!("{w}{suffix}")).ok_or_else(|| anyhow!("{file}: {w}{suffix} is missing"))
        };
        let state_bytes = take(&mut all, STATE)?.flatten_all()?.to_vec1::<u8>()?;
        let state: Value =
            serde_json::from_slice(&state_bytes).map_err(|e| anyhow!("{file}: {w}{STATE}: {e}"))?;
        let bad = |what: &str| {
            anyhow!("{file}: {w}: {what} (whet reads NF4, blocks of 64, double-quantized scales in blocks of 256)")
        };
        if state["quant_type"].as_str() != Some("nf4") || state["blocksize"].as_u64() != Some(64) {
            return Err(bad(&format!("quant_type {} blocksize {}", state["quant_type"], state["blocksize"])));
        }
        if state["nested_blocksize"].as_u64() != Some(256) {
            return Err(bad("no double quantization (nested_blocksize 256)"));
        }
        let offset = state["nested_offset"].as_f64().ok_or_else(|| bad("nested_offset is missing"))? as f32;
        let dims: Vec<usize> = state["shape"]
            .as_array()
            .map(|s| s.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect())
            .unwrap_or_default();
        let [d_out, d_in] = dims[..] else { return Err(bad(&format!("shape {}", state["shape"]))) };
        let f32s =
            |t: Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
        if f32s(take(&mut all, ".quant_map")?)? != NF4.to_vec() {
            return Err(bad("quant_map is not the NF4 code book"));
        }
        if f32s(take(&mut all, ".nested_quant_map")?)? != dynamic_code().to_vec() {
            return Err(bad("nested_quant_map is not the signed dynamic map"));
        }
        let parts = Nf4Parts {
            packed: take(&mut all, "")?.flatten_all()?.to_vec1::<u8>()?,
            absmax_q: take(&mut all, ".absmax")?.flatten_all()?.to_vec1::<u8>()?,
            nested_absmax: f32s(take(&mut all, ".nested_absmax")?)?,
            offset,
        };
        let t = Nf4Tensor::new(&parts, (d_out, d_in), dev).map_err(|e| anyhow!("{file}: {w}: {e}"))?;
        base.quant.insert(w, QWeight::Nf4(std::sync::Arc::new(t)));
    }
    for (name, t) in all {
        if t.dtype() == DType::U8 {
            bail!("{file}: tensor {name} is 8-bit with no NF4 quant state");
        }
        base.floats.insert(name, t.to_dtype(DType::F32)?.to_device(dev)?);
    }
    Ok(base)
}
