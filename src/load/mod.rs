//! Loading models from the files people have: an HF directory or a GGUF file.
//! Nothing here touches the network.

pub mod atomic_dir;
pub mod gguf;
pub mod gguf_file;
pub mod gguf_tokenizer;
pub mod gguf_write;
pub mod hf;
pub mod hf_config;
pub mod inspect;
pub mod peft;
pub mod quantized;

pub use inspect::{inspect, ModelSummary};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use crate::chat::{self, Message};
use crate::model::{Config, Llama};

/// Where the weights came from, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    HfDir(PathBuf),
    Gguf(PathBuf),
}

/// The text side of a model: tokenizer, chat template and special tokens.
pub struct TextSide {
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    /// Where the chat template came from (a file, or a GGUF key), for its errors.
    pub chat_template_source: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Token ids that end generation.
    pub eos_ids: Vec<u32>,
}

/// A model ready to run: weights and its text side.
pub struct LoadedModel {
    pub model: Llama,
    pub text: TextSide,
    pub source: Source,
}

/// Config and f32 weights under HF names, from an HF directory or a `.gguf` file.
pub fn load_weights(path: &Path, dev: &Device) -> Result<(Config, HashMap<String, Tensor>)> {
    if is_gguf(path) {
        let g = gguf_file::GgufFile::open(path)?;
        let cfg = gguf::config(&g)?;
        let w = gguf::weights(&g, &cfg, dev)?;
        Ok((cfg, w))
    } else if path.is_dir() && quantized::is_bnb_4bit(path)? {
        // A bitsandbytes 4-bit checkpoint, dequantized for float use (probe, LoRA, full).
        let q = quantized::load_bnb_4bit(path, dev)?;
        let w = q.dequantized()?;
        Ok((q.config, w))
    } else if path.is_dir() {
        let hc = hf::config(path)?;
        let cfg = hc.to_config().map_err(|e| anyhow!("{}: {e}", path.join("config.json").display()))?;
        let w = hf::weights(&hf::weight_files(path)?, dev)?;
        Ok((cfg, w))
    } else if !path.exists() {
        bail!("{}: no such file or directory", path.display())
    } else {
        bail!("{}: not a model (expected an HF directory or a .gguf file)", path.display())
    }
}

/// Builds the model from HF-named weights; a missing tensor or a wrong shape names the tensor.
pub fn build_model(
    path: &Path,
    cfg: &Config,
    weights: HashMap<String, Tensor>,
    dev: &Device,
) -> Result<Llama> {
    let vb = VarBuilder::from_tensors(weights, DType::F32, dev);
    // The builder (and with it the loaded weights' map) is gone before the transposed copies
    // are made, so each weight exists twice only while it is copied.
    let mut model = Llama::load(vb, cfg).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    model.inference_layout().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(model)
}

pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

pub fn load_model(path: &Path, dev: &Device) -> Result<LoadedModel> {
    if is_gguf(path) {
        let g = gguf_file::GgufFile::open(path)?;
        let cfg = gguf::config(&g)?;
        let model = build_model(path, &cfg, gguf::weights(&g, &cfg, dev)?, dev)?;
        return Ok(LoadedModel {
            model,
            text: gguf_text(&g, path)?,
            source: Source::Gguf(path.to_path_buf()),
        });
    }
    let (cfg, weights) = load_weights(path, dev)?;
    let model = build_model(path, &cfg, weights, dev)?;
    Ok(LoadedModel { model, text: load_text(path)?, source: Source::HfDir(path.to_path_buf()) })
}

/// A base model with a PEFT LoRA adapter applied (unmerged: base + scale·B·A at run time).
pub fn load_model_with_adapter(path: &Path, adapter: &Path, dev: &Device) -> Result<LoadedModel> {
    let (cfg, weights) = load_weights(path, dev)?;
    let (settings, tensors) = peft::read_adapter(adapter, dev)?;
    let ad = crate::model::lora::Adapters {
        vb: VarBuilder::from_tensors(tensors, DType::F32, dev),
        settings: &settings,
        quant: None,
    };
    let vb = VarBuilder::from_tensors(weights, DType::F32, dev);
    let model = Llama::load_with_adapters(vb, &cfg, Some(&ad))
        .and_then(|mut m| m.inference_layout().map(|()| m))
        .map_err(|e| anyhow!("{} with adapter {}: {e}", path.display(), adapter.display()))?;
    let source =
        if is_gguf(path) { Source::Gguf(path.to_path_buf()) } else { Source::HfDir(path.to_path_buf()) };
    Ok(LoadedModel { model, text: load_text(path)?, source })
}

/// Folds a LoRA adapter into base weights: W += scale · B @ A for every adapted module
/// (PEFT's `merge_and_unload`).
pub fn merge_adapter(weights: &mut HashMap<String, Tensor>, adapter: &Path, dev: &Device) -> Result<usize> {
    let (s, tensors) = peft::read_adapter(adapter, dev)?;
    merge_lora(weights, &s, &tensors, adapter)
}

/// [`merge_adapter`] on adapter tensors in memory (`model.layers.N.….lora_{A,B}.weight`);
/// `adapter` names where they came from, for errors.
pub fn merge_lora(
    weights: &mut HashMap<String, Tensor>,
    s: &crate::model::lora::LoraSettings,
    tensors: &HashMap<String, Tensor>,
    adapter: &Path,
) -> Result<usize> {
    let mut merged = 0;
    for (name, a) in tensors {
        let Some(module) = name.strip_suffix(".lora_A.weight") else { continue };
        let b_name = format!("{module}.lora_B.weight");
        let b = tensors.get(&b_name).ok_or_else(|| anyhow!("{}: {b_name} is missing", adapter.display()))?;
        let w_name = format!("{module}.weight");
        let w =
            weights.get(&w_name).ok_or_else(|| anyhow!("{}: the base has no {w_name}", adapter.display()))?;
        // (out, r) @ (r, in) -> (out, in)
        let delta = (b.matmul(a)? * s.scale())?;
        let new = (w + delta).map_err(|e| anyhow!("{}: merging {w_name}: {e}", adapter.display()))?;
        weights.insert(w_name, new);
        merged += 1;
    }
    Ok(merged)
}

fn gguf_text(g: &gguf_file::GgufFile, path: &Path) -> Result<TextSide> {
    let tokenizer = gguf_tokenizer::tokenizer(g)?;
    let sp = gguf_tokenizer::specials(g);
    let text = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    Ok(TextSide {
        bos_token: text(sp.bos),
        eos_token: text(sp.eos),
        eos_ids: sp.eos.into_iter().collect(),
        chat_template: sp.chat_template,
        chat_template_source: format!("{}: tokenizer.chat_template", path.display()),
        tokenizer,
    })
}

/// The tokenizer and chat-template facts of an HF directory or a GGUF file, without weights.
pub fn load_text(path: &Path) -> Result<TextSide> {
    if is_gguf(path) {
        return gguf_text(&gguf_file::GgufFile::open(path)?, path);
    }
    let tok_path = path.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", tok_path.display()))?;
    let side = hf::tokenizer_side(path)?;
    let mut eos_ids = side.generation_eos.clone();
    if path.join("config.json").exists() {
        eos_ids.extend(hf::config(path)?.eos_ids());
    }
    if let Some(id) = side.eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
        eos_ids.push(id);
    }
    eos_ids.sort_unstable();
    eos_ids.dedup();
    Ok(TextSide {
        tokenizer,
        chat_template: side.chat_template,
        chat_template_source: side.chat_template_source,
        bos_token: side.bos_token,
        eos_token: side.eos_token,
        eos_ids,
    })
}

impl TextSide {
    /// Token ids of `prompt`; with `chat`, the prompt is first rendered as one user message
    /// through the model's chat template with the generation prompt added.
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        if chat {
            return self.encode_chat(&[Message::user(prompt)]).context("--chat");
        }
        let enc = self.tokenizer.encode(prompt, true).map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a conversation rendered through the chat template, with the generation
    /// prompt added (the template writes its own special tokens, so none are added).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let tmpl = self.chat_template.as_deref().context("this model has no chat template")?;
        let text = chat::render(
            tmpl,
            messages,
            true,
            self.bos_token.as_deref().unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
        .with_context(|| self.chat_template_source.clone())?;
        let enc =
            self.tokenizer.encode(text.as_str(), false).map_err(|e| anyhow!("tokenizing the chat: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }
}

impl LoadedModel {
    /// As [`TextSide::encode_prompt`], checked against the model's vocabulary.
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        let ids = self.text.encode_prompt(prompt, chat)?;
        let vocab = self.model.config().vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("the tokenizer produced id {bad}, outside the model's vocabulary of {vocab}");
        }
        Ok(ids)
    }
}
