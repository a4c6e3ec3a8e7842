//! Writing GGUF v3 (ggml `docs/gguf.md`; Python `gguf.GGUFWriter` is the reference): llama-arch
//! metadata, the tokenizer, and the tensors in llama.cpp's layout, quantized as asked.
//!
//! Layout: magic, version 3, tensor and metadata counts, the metadata, the tensor infos (ggml's
//! `ne` order, the innermost dimension first), padding to `ALIGN`, then each tensor's bytes,
//! each padded to `ALIGN`. The file is written beside its target and renamed into place after
//! an fsync, so an interrupted export leaves no half-written GGUF at the path.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use serde_json::Value as Json;

use super::gguf_file::Value;
use super::TextSide;
use crate::model::quant::ggml_name;
use crate::model::Config;

const ALIGN: usize = 32;

/// One tensor as it goes into the file.
pub struct GgufTensor {
    pub name: String,
    /// candle order (outermost first).
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
    pub data: Vec<u8>,
}

fn type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`) for a file mostly of type `t`.
pub fn file_type(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 12,
        GgmlDType::Q4K => 15,
        GgmlDType::Q5K => 17,
        GgmlDType::Q6K => 18,
        GgmlDType::BF16 => 32,
        GgmlDType::Q8_1 | GgmlDType::Q8K => 7,
    }
}

/// The type a 2-D weight of `cols` columns gets when `want`'s blocks do not fit it: llama.cpp's
/// fallbacks (`llama-quant.cpp`), then f16.
pub fn fit_type(want: GgmlDType, cols: usize) -> GgmlDType {
    let fits = |t: GgmlDType| cols.is_multiple_of(t.block_size());
    let fallback = match want {
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    };
    [want, fallback, GgmlDType::F16].into_iter().find(|&t| fits(t)).unwrap_or(GgmlDType::F32)
}

/// A float tensor in type `t`, as GGUF stores it.
pub fn encode(t: &Tensor, dtype: GgmlDType) -> Result<Vec<u8>> {
    let t = t.to_dtype(DType::F32)?.to_device(&candle_core::Device::Cpu)?.contiguous()?;
    if dtype == GgmlDType::F32 {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        return Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    Ok(QTensor::quantize(&t, dtype)?.data()?.into_owned())
}

fn write_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::Str(s) => write_str(w, s),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(items) => {
            let ty = items.first().map(value_type).unwrap_or(8);
            w.write_all(&ty.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|i| write_value(w, i))
        }
    }
}

fn pad(w: &mut impl Write, at: usize) -> std::io::Result<usize> {
    let n = at.next_multiple_of(ALIGN) - at;
    w.write_all(&vec![0u8; n])?;
    Ok(at + n)
}

/// Writes a GGUF v3 file atomically (a temp file beside `path`, fsync, rename).
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: &[GgufTensor]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: create", dir.display()))?;
    let tmp = tempfile::Builder::new()
        // Every file whet writes is 0666 less the umask, as `File::create` makes them
        // (tempfile's own default, 0600, made some outputs unreadable to the group).
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .prefix(".tmp-whet-")
        .suffix(".gguf")
        .tempfile_in(&dir)
        .with_context(|| format!("{}: cannot create a temp file", dir.display()))?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        let err = |e: std::io::Error| anyhow!("{}: write: {e}", path.display());
        let mut head: Vec<u8> = vec![];
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            write_str(&mut head, k)?;
            head.extend_from_slice(&value_type(v).to_le_bytes());
            write_value(&mut head, v)?;
        }
        let mut offset = 0usize;
        for t in tensors {
            write_str(&mut head, &t.name)?;
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                head.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            head.extend_from_slice(&type_id(t.dtype).to_le_bytes());
            head.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + t.data.len()).next_multiple_of(ALIGN);
        }
        w.write_all(&head).map_err(err)?;
        pad(&mut w, head.len()).map_err(err)?;
        for t in tensors {
            w.write_all(&t.data).map_err(err)?;
            pad(&mut w, t.data.len()).map_err(err)?;
        }
        w.flush().map_err(err)?;
    }
    tmp.as_file().sync_all().with_context(|| format!("{}: fsync", path.display()))?;
    // tempfile creates 0600; an exported model is for others to read too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| anyhow!("{}: rename into place: {e}", path.display()))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        d.sync_all().ok(); // the rename's directory entry; best effort where unsupported
    }
    Ok(())
}

/// The llama-arch model keys (`llama.*`, or `qwen2.*` for a model with q/k/v biases).
pub fn model_metadata(
    cfg: &Config,
    name: &str,
    main_type: GgmlDType,
) -> Result<(String, Vec<(String, Value)>)> {
    if cfg.rope_scaling.is_some() {
        bail!("GGUF export of a model with llama3 rope scaling is not supported yet (llama.cpp needs rope_freqs)");
    }
    let arch = if cfg.attention_bias { "qwen2" } else { "llama" };
    let k = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| Value::U32(v as u32);
    let mut m = vec![
        ("general.architecture".to_string(), Value::Str(arch.into())),
        ("general.name".into(), Value::Str(name.into())),
        ("general.file_type".into(), Value::U32(file_type(main_type))),
        ("general.quantization_version".into(), Value::U32(2)),
        ("general.alignment".into(), Value::U32(ALIGN as u32)),
        (k("vocab_size"), u(cfg.vocab_size)),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("block_count"), u(cfg.num_hidden_layers)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u(cfg.num_key_value_heads)),
        (k("rope.dimension_count"), u(cfg.head_dim)),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32)),
    ];
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
        m.push((k("attention.key_length"), u(cfg.head_dim)));
        m.push((k("attention.value_length"), u(cfg.head_dim)));
    }
    Ok((arch.to_string(), m))
}

/// `tokenizer.ggml.*` for a byte-level BPE tokenizer (llama.cpp's "gpt2" model): tokens by id,
/// their types, the merges, the special ids and the chat template. `vocab` pads the list to the
/// model's embedding rows, as llama.cpp's converter does.
pub fn tokenizer_metadata(text: &TextSide, vocab: usize) -> Result<Vec<(String, Value)>> {
    let json: Json =
        serde_json::from_str(&text.tokenizer.to_string(false).map_err(|e| anyhow!("tokenizer: {e}"))?)?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        bail!(
            "GGUF export: the tokenizer is {:?}; whet writes byte-level BPE (llama.cpp's gpt2) tokenizers, or copies a GGUF's own",
            model["type"].as_str().unwrap_or("unknown")
        );
    }
    let mut tokens: HashMap<u32, (String, i32)> = HashMap::new();
    for (tok, id) in model["vocab"].as_object().ok_or_else(|| anyhow!("tokenizer: model.vocab is missing"))? {
        let id = id.as_u64().ok_or_else(|| anyhow!("tokenizer: id of {tok:?} is not an integer"))?;
        tokens.insert(id as u32, (tok.clone(), 1)); // NORMAL
    }
    for a in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else { continue };
        let ty = if a["special"].as_bool() == Some(true) { 3 } else { 4 }; // CONTROL, USER_DEFINED
        tokens.insert(id as u32, (content.to_string(), ty));
    }
    let n = (tokens.keys().max().map_or(0, |m| *m as usize + 1)).max(vocab);
    let (mut list, mut types) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for id in 0..n as u32 {
        let (t, ty) = tokens.remove(&id).unwrap_or_else(|| (format!("[PAD{id}]"), 5)); // UNUSED
        list.push(Value::Str(t));
        types.push(Value::I32(ty));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
            _ => None,
        })
        .map(Value::Str)
        .collect();
    let mut m = vec![
        ("tokenizer.ggml.model".to_string(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(list)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
    ];
    // A ByteLevel pre-tokenizer with its regex is GPT-2's split; other splits are left for
    // llama.cpp to default (it warns), rather than named wrongly.
    let pre = &json["pre_tokenizer"];
    if pre["type"].as_str() == Some("ByteLevel") && pre["use_regex"].as_bool() != Some(false) {
        m.push(("tokenizer.ggml.pre".into(), Value::Str("gpt2".into())));
    }
    let id = |t: &Option<String>| t.as_deref().and_then(|t| text.tokenizer.token_to_id(t));
    if let Some(b) = id(&text.bos_token) {
        m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(e) = id(&text.eos_token).or(text.eos_ids.first().copied()) {
        m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    m.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    if let Some(t) = &text.chat_template {
        m.push(("tokenizer.chat_template".into(), Value::Str(t.clone())));
    }
    Ok(m)
}

/// The GGUF name of a type, for messages.
pub fn type_label(t: GgmlDType) -> String {
    match t {
        GgmlDType::F32 => "f32".into(),
        GgmlDType::F16 => "f16".into(),
        GgmlDType::BF16 => "bf16".into(),
        t => ggml_name(t),
    }
}
