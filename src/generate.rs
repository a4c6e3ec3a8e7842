//! Text generation with the KV cache: greedy, temperature and nucleus (top-p) sampling.

use anyhow::{anyhow, Result};
use candle_core::Tensor;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::load::{LoadedModel, TextSide};
use crate::logits;
use crate::model::{KvCache, Llama};

#[derive(Debug, Clone)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Keep going past EOS (benchmarks want a fixed length).
    pub ignore_eos: bool,
}

/// Generates up to `max_tokens` after `prompt_ids`, calling `on_text` with each new piece of
/// decoded text as soon as it is complete UTF-8. Returns the generated ids.
pub fn generate(
    lm: &LoadedModel,
    prompt_ids: &[u32],
    max_tokens: usize,
    sampling: &Sampling,
    mut on_text: impl FnMut(&str),
) -> Result<Vec<u32>> {
    generate_with(&lm.model, &lm.text, prompt_ids, max_tokens, sampling, |_, _, text| on_text(text))
}

/// `generate` on a model and text side, calling `on_token(id, logits, new_text)` for each
/// token drawn: the logits it was drawn from, and the text it completes (often empty while a
/// UTF-8 sequence is partial).
pub fn generate_with(
    model: &Llama,
    text: &TextSide,
    prompt_ids: &[u32],
    max_tokens: usize,
    sampling: &Sampling,
    mut on_token: impl FnMut(u32, &[f32], &str),
) -> Result<Vec<u32>> {
    if prompt_ids.is_empty() {
        return Err(anyhow!("the prompt is empty: nothing to continue"));
    }
    let dev = model.embed_device();
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut out: Vec<u32> = Vec::new();
    let mut printed = 0usize; // bytes of decoded text already handed out
    let mut input = Tensor::new(prompt_ids, &dev)?.unsqueeze(0)?; // (1, T)
    for _ in 0..max_tokens {
        if cache.len() + input.dim(1)? > model.max_positions() {
            break;
        }
        let logits: Vec<f32> = model.forward_last(&input, &mut cache)?.squeeze(0)?.to_vec1()?;
        // Greedy is the top token with probability 1: the draw always lands on it.
        let dist = logits::Sampler { temperature: sampling.temperature, top_p: sampling.top_p }
            .distribution(&logits);
        let r: f64 = rng.random();
        let mut acc = 0.0;
        let next = dist
            .iter()
            .find(|(_, p)| {
                acc += p;
                acc >= r
            })
            .unwrap_or(&dist[dist.len() - 1])
            .0;
        if !sampling.ignore_eos && text.eos_ids.contains(&next) {
            break;
        }
        out.push(next);
        let decoded = text.tokenizer.decode(&out, true).map_err(|e| anyhow!("decoding: {e}"))?;
        // Hold back a trailing partial UTF-8 sequence until the next token completes it.
        let mut new = "";
        if !decoded.ends_with('\u{FFFD}') {
            if let Some(s) = decoded.get(printed..).filter(|s| !s.is_empty()) {
                new = s;
                printed = decoded.len();
            }
        }
        on_token(next, &logits, new);
        input = Tensor::new(&[next], &dev)?.unsqueeze(0)?;
    }
    Ok(out)
}
