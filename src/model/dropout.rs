//! Seeded dropout for the training path (LoRA inputs, attention probabilities).

use candle_core::{Result, Tensor};

/// Dropout with masks from a seeded generator, so a run (and its resume) is reproducible:
/// the trainer seeds one per micro-batch from (seed, step, micro-batch). A clone draws the same
/// masks as the original from that point: recomputing a block replays its dropout.
#[derive(Clone)]
pub struct Dropout {
    rng: rand_chacha::ChaCha8Rng,
    /// Probability for LoRA adapter inputs.
    pub lora: f64,
    /// Probability for attention weights.
    pub attention: f64,
}

impl Dropout {
    pub fn new(seed: u64, lora: f64, attention: f64) -> Self {
        use rand::SeedableRng;
        Self { rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed), lora, attention }
    }

    /// Zeroes each element with probability `p` and scales the rest by 1/(1-p).
    pub fn apply(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        match self.mask(x, p)? {
            Some(mask) => x * mask,
            None => Ok(x.clone()),
        }
    }

    /// The mask `apply` multiplies by, shaped like `x`: 0 with probability `p`, else 1/(1-p).
    /// None when `p` is 0.
    pub fn mask(&mut self, x: &Tensor, p: f64) -> Result<Option<Tensor>> {
        use rand::Rng;
        if p <= 0.0 {
            return Ok(None);
        }
        let keep = 1.0 - p;
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if self.rng.random::<f64>() < keep { scale } else { 0.0 }).collect();
        Ok(Some(Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn dropout_zeroes_about_p_and_keeps_the_mean() {
        let x = Tensor::ones(100_000, DType::F32, &Device::Cpu).unwrap();
        let y: Vec<f32> = Dropout::new(1, 0.0, 0.0).apply(&x, 0.25).unwrap().to_vec1().unwrap();
        let zeros = y.iter().filter(|v| **v == 0.0).count() as f64 / y.len() as f64;
        let mean = y.iter().map(|v| *v as f64).sum::<f64>() / y.len() as f64;
        assert!((zeros - 0.25).abs() < 0.01, "zero fraction {zeros}");
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
        assert!(y.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
        // The same seed draws the same mask.
        let again: Vec<f32> = Dropout::new(1, 0.0, 0.0).apply(&x, 0.25).unwrap().to_vec1().unwrap();
        assert_eq!(y, again);
    }
}
