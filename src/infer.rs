//! Running a model on text: the next-token probe shared by the CLI and the engine, and the
//! explorer's probe and chat reply.

use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;

use crate::engine::protocol::{ChatRequest, Probe};
use crate::generate::{generate_with, Sampling};
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
    let logp = logits::log_softmax(&last_logits(model, &ids)?, temperature);
    Ok(distribution(text, ids, &logp, top_k))
}

/// The explorer's probe: the top-k (at temperature 1), each token's probability under the
/// probe's sampler over the whole vocabulary, and the target token's probability.
pub fn probe(model: &Llama, text: &TextSide, p: &Probe) -> Result<ProbeResult> {
    let ids = text.encode_prompt(&p.prompt, p.chat)?;
    let last = last_logits(model, &ids)?;
    let logp = logits::log_softmax(&last, 1.0);
    let mut r = distribution(text, ids, &logp, p.top_k);
    if !p.sampler.is_identity() {
        let top: Vec<u32> = r.top.iter().map(|t| t.id).collect();
        r.sampled = p.sampler.probs_of(&last, &top);
    }
    if let Some(target) = p.target.as_deref().filter(|t| !t.is_empty()) {
        let enc = text.tokenizer.encode(target, false).map_err(|e| anyhow!("tokenizing the target: {e}"))?;
        let &id = enc.get_ids().first().ok_or_else(|| anyhow!("the target {target:?} has no tokens"))?;
        r.target = Some(token(text, id, logp[id as usize]));
    }
    Ok(r)
}

/// A chat reply to `c.messages`, through the chat template: each token is handed to
/// `on_token` with the top-k alternatives at its position as it is drawn.
pub fn chat(
    model: &Llama,
    text: &TextSide,
    c: &ChatRequest,
    seed: u64,
    mut on_token: impl FnMut(TopToken, Vec<TopToken>),
) -> Result<String> {
    if c.messages.is_empty() {
        bail!("the conversation is empty");
    }
    let ids = text.encode_chat(&c.messages)?;
    check_ids(model, &ids)?;
    let sampling =
        Sampling { temperature: c.sampler.temperature, top_p: c.sampler.top_p, seed, ignore_eos: false };
    let out = generate_with(model, text, &ids, c.max_tokens, &sampling, |id, logits, _| {
        let logp = logits::log_softmax(logits, 1.0);
        let alternatives =
            logits::top_k(&logp, c.top_k).into_iter().map(|(i, lp)| token(text, i, lp)).collect();
        on_token(token(text, id, logp[id as usize]), alternatives);
    })?;
    text.tokenizer.decode(&out, true).map_err(|e| anyhow!("decoding the reply: {e}"))
}

fn token(text: &TextSide, id: u32, logprob: f64) -> TopToken {
    TopToken {
        id,
        piece: text.tokenizer.id_to_token(id).unwrap_or_default(),
        text: text.tokenizer.decode(&[id], false).unwrap_or_default(),
        prob: logprob.exp(),
        logprob,
    }
}

fn check_ids(model: &Llama, ids: &[u32]) -> Result<()> {
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
    Ok(())
}

/// The logits after the last of `ids`, checked to be finite.
fn last_logits(model: &Llama, ids: &[u32]) -> Result<Vec<f32>> {
    check_ids(model, ids)?;
    let x = Tensor::new(ids, &model.embed_device())?.unsqueeze(0)?; // (1, T)
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let last: Vec<f32> = model.forward_last(&x, &mut cache)?.squeeze(0)?.to_vec1()?; // (V,)
    if let Some(i) = last.iter().position(|v| !v.is_finite()) {
        // A table of NaN probabilities would look like an answer; it is a broken model.
        bail!(
            "the model's logits are not finite (token {i}: {}): its weights or config hold NaN or infinity",
            last[i]
        );
    }
    Ok(last)
}

/// The top-k of a distribution given as log-probabilities, with its entropy.
fn distribution(text: &TextSide, ids: Vec<u32>, logp: &[f64], top_k: usize) -> ProbeResult {
    let top: Vec<TopToken> =
        logits::top_k(logp, top_k).into_iter().map(|(id, lp)| token(text, id, lp)).collect();
    let cumulative = top.iter().map(|t| t.prob).sum();
    ProbeResult {
        prompt_ids: ids,
        top,
        entropy: logits::entropy(logp),
        cumulative,
        sampled: vec![],
        target: None,
    }
}
