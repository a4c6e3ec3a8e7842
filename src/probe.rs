//! Next-token distributions from logits: top-k, entropy, per-token NLL. Pure functions on
//! `&[f32]`, so the CLI, the engine and the TUI explorer share them and tests pin them.

use serde::{Deserialize, Serialize};

/// One candidate next token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopToken {
    pub id: u32,
    /// The vocabulary entry as stored (e.g. `Ġworld`).
    pub piece: String,
    /// The decoded text; partial UTF-8 shows as U+FFFD.
    pub text: String,
    pub prob: f64,
    pub logprob: f64,
}

/// The answer to a probe: `whet probe --json` prints exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub prompt_ids: Vec<u32>,
    pub top: Vec<TopToken>,
    /// Entropy of the full distribution, in nats.
    pub entropy: f64,
    /// Total probability of the tokens in `top`.
    pub cumulative: f64,
}

/// The answer to a score: `whet score --json` prints exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResult {
    pub token_ids: Vec<u32>,
    /// NLL of token i+1 given tokens 0..=i (nats), one per predicted token.
    pub nll: Vec<f64>,
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// log-softmax of `logits / temperature`, in f64 for stable small probabilities.
pub fn log_softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let t = temperature.max(f64::MIN_POSITIVE);
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64 / t));
    let lse = logits.iter().map(|&x| (x as f64 / t - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&x| x as f64 / t - lse).collect()
}

/// Shannon entropy (nats) of a distribution given as log-probabilities.
pub fn entropy(logp: &[f64]) -> f64 {
    logp.iter().filter(|l| l.is_finite()).map(|&l| -l.exp() * l).sum()
}

/// The `k` most likely ids, most likely first; ties go to the lower id.
pub fn top_k(logp: &[f64], k: usize) -> Vec<(u32, f64)> {
    let mut idx: Vec<u32> = (0..logp.len() as u32).collect();
    let k = k.min(idx.len());
    let by_prob = |a: &u32, b: &u32| logp[*b as usize].total_cmp(&logp[*a as usize]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by_prob);
        idx.truncate(k);
    }
    idx.sort_by(by_prob);
    idx.into_iter().map(|i| (i, logp[i as usize])).collect()
}

/// Per-token NLL of `ids` given `logits` of shape (T, V) flattened row-major: row i predicts
/// token i+1.
pub fn score(ids: &[u32], logits: &[f32], vocab: usize) -> ScoreResult {
    let nll: Vec<f64> = (1..ids.len())
        .map(|i| {
            let row = &logits[(i - 1) * vocab..i * vocab];
            -log_softmax(row, 1.0)[ids[i] as usize]
        })
        .collect();
    let mean_nll = if nll.is_empty() { f64::NAN } else { nll.iter().sum::<f64>() / nll.len() as f64 };
    ScoreResult { token_ids: ids.to_vec(), nll, mean_nll, perplexity: mean_nll.exp() }
}

/// Nucleus filtering: keeps the smallest set of most likely ids whose mass reaches `top_p`,
/// renormalised. Returns (id, prob) pairs, most likely first.
pub fn top_p(logp: &[f64], top_p: f64) -> Vec<(u32, f64)> {
    let all = top_k(logp, logp.len());
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for (id, l) in all {
        let p = l.exp();
        kept.push((id, p));
        mass += p;
        if mass >= top_p {
            break;
        }
    }
    kept.into_iter().map(|(id, p)| (id, p / mass)).collect()
}
