//! AdamW (Loshchilov & Hutter), step for step as `torch.optim.AdamW`, with state that can be
//! saved and restored exactly (candle-nn's AdamW keeps its moments private).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::adamw_kernel;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // HF TrainingArguments' defaults.
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// One trainable tensor, its moments, and whether weight decay applies to it.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Optimizer steps taken (torch's per-parameter `step`; all parameters step together).
    step: u64,
    /// One pass per parameter where it applies (`adamw_kernel`), else composed tensor ops.
    fused: bool,
}

impl AdamW {
    /// `params`: (name, var, decay?). HF decays every weight but biases and norm weights.
    pub fn new(params: Vec<(String, Var, bool)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var, decay)| {
                // Two allocations: the update writes each moment in place.
                let zeros = || -> Result<Tensor> {
                    let t = var.zeros_like()?.to_dtype(DType::F32)?;
                    adamw_kernel::touch(&t)?;
                    Ok(t)
                };
                let (m, v) = (zeros()?, zeros()?);
                Ok(Slot { name, var, decay, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cfg, slots, step: 0, fused: true })
    }

    /// With `false`, always the composed update (the reference the kernel is tested against;
    /// `[run] kernels = "composed"`). Both give the same bits.
    pub fn with_fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.var))
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            // A gradient with a graph would chain every step's graph into the moments.
            let g = &g.detach();
            if self.fused && adamw_kernel::applies(s.var.as_tensor(), g, &s.m, &s.v) {
                let k = adamw_kernel::Consts {
                    decay: (s.decay && c.weight_decay != 0.0).then_some((1.0 - lr * c.weight_decay) as f32),
                    beta1: c.beta1 as f32,
                    one_minus_beta1: (1.0 - c.beta1) as f32,
                    beta2: c.beta2 as f32,
                    one_minus_beta2: (1.0 - c.beta2) as f32,
                    inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
                    eps: c.eps as f32,
                    step_size: (lr / bc1) as f32,
                };
                adamw_kernel::update(s.var.as_tensor(), g, &s.m, &s.v, &k)?;
                continue;
            }
            let mut p = s.var.as_tensor().clone();
            if s.decay && c.weight_decay != 0.0 {
                p = (p * (1.0 - lr * c.weight_decay))?;
            }
            s.m = ((&s.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            s.v = ((&s.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            // torch: denom = sqrt(v) / sqrt(bc2) + eps; p -= (lr / bc1) * m / denom
            let denom = ((s.v.sqrt()? / bc2.sqrt())? + c.eps)?;
            let p = (p - (s.m.div(&denom)? * (lr / bc1))?)?;
            s.var.set(&p)?;
        }
        Ok(())
    }

    /// Moments under `<name>.exp_avg` / `<name>.exp_avg_sq`, for a safetensors file.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("{}.exp_avg", s.name), s.m.clone());
            out.insert(format!("{}.exp_avg_sq", s.name), s.v.clone());
        }
        out
    }

    /// Restores moments and the step count saved by `state_tensors`.
    pub fn load_state(
        &mut self,
        mut t: HashMap<String, Tensor>,
        step: u64,
    ) -> std::result::Result<(), String> {
        for s in &mut self.slots {
            for (suffix, dst) in [("exp_avg", &mut s.m), ("exp_avg_sq", &mut s.v)] {
                let key = format!("{}.{suffix}", s.name);
                let src = t.remove(&key).ok_or_else(|| format!("optimizer state lacks {key}"))?;
                if src.shape() != dst.shape() {
                    return Err(format!(
                        "optimizer state {key} has shape {:?}, expected {:?}",
                        src.dims(),
                        dst.dims()
                    ));
                }
                *dst = src.to_device(dst.device()).map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn params(seed: u32) -> Vec<(String, Var, bool)> {
        // Sizes over one chunk of the kernel, with exact zeros and both signs.
        let vals = |n: usize, k: u32| -> Vec<f32> {
            (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ k) % 2001) as f32 / 1000.0 - 1.0).collect()
        };
        let dev = &Device::Cpu;
        let w = Var::from_vec(vals(40_000, seed), (200, 200), dev).unwrap();
        let b = Var::from_vec(vals(200, seed + 1), 200, dev).unwrap();
        vec![("w".into(), w, true), ("b".into(), b, false)]
    }

    /// The one-pass kernel and the composed tensor ops give the same bits, step after step,
    /// for decayed and undecayed parameters.
    #[test]
    fn fused_update_is_bit_identical_to_composed() {
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let mut runs = [true, false].map(|fused| {
            let ps = params(7);
            (ps.clone(), AdamW::new(ps, cfg.clone()).unwrap().with_fused(fused))
        });
        for step in 0..5u32 {
            for (ps, opt) in runs.iter_mut() {
                // A gradient that depends on the parameters, so a difference would grow.
                let loss = ps
                    .iter()
                    .map(|(_, v, _)| {
                        (v.as_tensor().sqr().unwrap() * (1.0 + step as f64)).unwrap().sum_all().unwrap()
                    })
                    .reduce(|a, b| (a + b).unwrap())
                    .unwrap();
                opt.step(&loss.backward().unwrap(), 1e-2).unwrap();
            }
        }
        let bits = |ps: &[(String, Var, bool)], o: &AdamW| -> Vec<u32> {
            let mut out: Vec<u32> = Vec::new();
            for (_, v, _) in ps {
                out.extend(v.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()));
            }
            for t in ["w.exp_avg", "w.exp_avg_sq", "b.exp_avg", "b.exp_avg_sq"] {
                let s = o.state_tensors()[t].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                out.extend(s.iter().map(|x| x.to_bits()));
            }
            out
        };
        let (fused, composed) = (bits(&runs[0].0, &runs[0].1), bits(&runs[1].0, &runs[1].1));
        assert_eq!(fused.len(), composed.len());
        let differ = fused.iter().zip(&composed).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{differ} of {} values differ", fused.len());
        // And the update did something.
        assert_ne!(bits(&params(7), &AdamW::new(params(7), cfg).unwrap())[..40_200], fused[..40_200]);
    }
}
