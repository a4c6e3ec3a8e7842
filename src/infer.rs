//! Running a model on text: the next-token probe shared by the CLI and the engine.

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::load::TextSide;
use crate::logits::{self, ProbeResult, TopToken};
use crate::model::{KvCache, Llama};

/// The top-k next tokens after `prompt` (rendered through the chat template with `chat`).
pub fn next_token(
    model: &Llama,
    text: &TextSide,
    prompt: &str,
    chat: bool,
    top_k: usize,
    temperature: f64,
) -> Result<ProbeResult> {
    if !(temperature.is_finite() && temperature > 0.0) {
        bail!("--temperature must be a positive number, got {temperature}");
    }
    let ids = text.encode_prompt(prompt, chat)?;
    if ids.is_empty() {
        bail!("the prompt is empty after tokenization: nothing to predict from");
    }
    let vocab = model.config().vocab_size;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("the tokenizer produced id {bad}, outside the model's vocabulary of {vocab}");
    }
    if ids.len() > model.max_positions() {
        bail!(
            "the prompt has {} tokens, more than the model's context ({})",
            ids.len(),
            model.max_positions()
        );
    }
    let x = Tensor::new(ids.as_slice(), &model.embed_device())?.unsqueeze(0)?; // (1, T)
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let last: Vec<f32> = model.forward_last(&x, &mut cache)?.squeeze(0)?.to_vec1()?; // (V,)
    if let Some(i) = last.iter().position(|v| !v.is_finite()) {
        // A table of NaN probabilities would look like an answer; it is a broken model.
        bail!(
            "the model's logits are not finite (token {i}: {}): its weights or config hold NaN or infinity",
            last[i]
        );
    }
    let logp = logits::log_softmax(&last, temperature);
    let top: Vec<TopToken> = logits::top_k(&logp, top_k)
        .into_iter()
        .map(|(id, lp)| TopToken {
            id,
            piece: text.tokenizer.id_to_token(id).unwrap_or_default(),
            text: text.tokenizer.decode(&[id], false).unwrap_or_default(),
            prob: lp.exp(),
            logprob: lp,
        })
        .collect();
    let cumulative = top.iter().map(|t| t.prob).sum();
    Ok(ProbeResult { prompt_ids: ids, top, entropy: logits::entropy(&logp), cumulative })
}
