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
    /// Each top token's probability as the probe's sampler draws it: temperature and top-p
    /// over the whole vocabulary, renormalised (0 outside the nucleus). Empty when the sampler
    /// changes nothing (T = 1, top-p = 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sampled: Vec<f64>,
    /// The probe's target token (the first token of its text) and its probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TopToken>,
}

/// How tokens are drawn: temperature (0 = greedy), then nucleus (top-p) filtering.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampler {
    pub temperature: f64,
    pub top_p: f64,
}

impl Default for Sampler {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0 }
    }
}

impl Sampler {
    pub fn is_identity(&self) -> bool {
        self.temperature == 1.0 && self.top_p >= 1.0
    }

    /// The distribution tokens are drawn from: (id, prob), most likely first; greedy is the
    /// top token with probability 1.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        if self.temperature <= 0.0 {
            return top_k(&log_softmax(logits, 1.0), 1).into_iter().map(|(id, _)| (id, 1.0)).collect();
        }
        top_p(&log_softmax(logits, self.temperature), self.top_p)
    }

    /// The probability each of `ids` is drawn with.
    pub fn probs_of(&self, logits: &[f32], ids: &[u32]) -> Vec<f64> {
        let dist: std::collections::HashMap<u32, f64> = self.distribution(logits).into_iter().collect();
        ids.iter().map(|id| dist.get(id).copied().unwrap_or(0.0)).collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn log_softmax_matches_closed_form() {
        // softmax([0, ln 2, ln 3]) = [1/6, 2/6, 3/6]
        let l = log_softmax(&[0.0, 2f32.ln(), 3f32.ln()], 1.0);
        let p: Vec<f64> = l.iter().map(|x| x.exp()).collect();
        for (got, want) in p.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((got - want).abs() < 1e-7, "{got} vs {want}");
        }
        // Temperature 2 halves the logits: softmax([0, 1]) at T=2 = softmax([0, 0.5]).
        let a = log_softmax(&[0.0, 1.0], 2.0);
        let b = log_softmax(&[0.0, 0.5], 1.0);
        assert!(close(a[0], b[0]) && close(a[1], b[1]));
    }

    #[test]
    fn entropy_of_known_distributions() {
        let uniform = log_softmax(&[1.0; 8], 1.0);
        assert!((entropy(&uniform) - 8f64.ln()).abs() < 1e-12);
        let peaked = vec![0.0, f64::NEG_INFINITY, f64::NEG_INFINITY];
        assert_eq!(entropy(&peaked), 0.0);
    }

    #[test]
    fn top_k_orders_by_probability_then_id() {
        let l = vec![-2.0, -0.5, -3.0, -0.5, -1.0];
        let ids: Vec<u32> = top_k(&l, 3).into_iter().map(|(i, _)| i).collect();
        assert_eq!(ids, vec![1, 3, 4]);
        assert_eq!(top_k(&l, 10).len(), 5);
        assert!(top_k(&l, 0).is_empty());
    }

    #[test]
    fn top_p_keeps_smallest_nucleus_and_renormalises() {
        let l: Vec<f64> = [0.5f64, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let kept = top_p(&l, 0.75);
        assert_eq!(kept.iter().map(|k| k.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((kept[0].1 - 0.625).abs() < 1e-12 && (kept[1].1 - 0.375).abs() < 1e-12);
        assert_eq!(top_p(&l, 1.0).len(), 4);
    }

    #[test]
    fn the_sampler_renormalises_over_the_whole_vocabulary() {
        // p = [0.5, 0.3, 0.15, 0.05]; T = 0.5 squares and renormalises: [.25,.09,.0225,.0025]/.365
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let s = Sampler { temperature: 0.5, top_p: 1.0 };
        let p = s.probs_of(&logits, &[0, 1, 3]);
        assert!((p[0] - 0.25 / 0.365).abs() < 1e-6 && (p[1] - 0.09 / 0.365).abs() < 1e-6, "{p:?}");
        assert!((p[2] - 0.0025 / 0.365).abs() < 1e-6);
        // top-p 0.9 at T = 1 keeps [0.5, 0.3, 0.15] and renormalises by 0.95; id 3 is out.
        let p = Sampler { temperature: 1.0, top_p: 0.9 }.probs_of(&logits, &[0, 3]);
        assert!((p[0] - 0.5 / 0.95).abs() < 1e-6 && p[1] == 0.0, "{p:?}");
        // Greedy: the top token with certainty.
        assert_eq!(Sampler { temperature: 0.0, top_p: 1.0 }.probs_of(&logits, &[0, 1]), vec![1.0, 0.0]);
        assert!(Sampler::default().is_identity());
    }

    #[test]
    fn score_predicts_each_next_token() {
        // Vocab 2, three tokens: row 0 predicts ids[1] = 1, row 1 predicts ids[2] = 0.
        let logits = [0.0f32, 0.0, 2f32.ln(), 0.0, 9.0, 9.0];
        let r = score(&[0, 1, 0], &logits, 2);
        assert_eq!(r.nll.len(), 2);
        assert!((r.nll[0] - 2f64.ln()).abs() < 1e-7); // p = 1/2
        assert!((r.nll[1] - 1.5f64.ln()).abs() < 1e-7); // p = 2/3
        assert!((r.perplexity - r.mean_nll.exp()).abs() < 1e-12);
    }
}
