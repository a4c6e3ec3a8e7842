//! AdamW (Loshchilov & Hutter), step for step as `torch.optim.AdamW`, with state that can be
//! saved and restored exactly (candle-nn's AdamW keeps its moments private).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

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
}

impl AdamW {
    /// `params`: (name, var, decay?). HF decays every weight but biases and norm weights.
    pub fn new(params: Vec<(String, Var, bool)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var, decay)| {
                let z = var.zeros_like()?.to_dtype(DType::F32)?;
                Ok(Slot { name, var, decay, m: z.clone(), v: z })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cfg, slots, step: 0 })
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
