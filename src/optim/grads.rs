//! Gradients between `backward` and the optimizer: accumulation over micro-batches and
//! clipping by global norm, as `torch.nn.utils.clip_grad_norm_` does.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Result, Storage, Tensor, Var};
use rayon::prelude::*;

/// Adds a micro-batch's gradients into the running sum. Only `vars` are summed: the first
/// store also holds gradients of intermediate tensors, which the optimizer never reads.
pub fn accumulate(sum: Option<GradStore>, grads: GradStore, vars: &[Var]) -> Result<GradStore> {
    let Some(mut sum) = sum else { return Ok(grads) };
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let total = match sum.remove(v.as_tensor()) {
                Some(s) => (s + g)?,
                None => g.clone(),
            };
            sum.insert(v.as_tensor(), total);
        }
    }
    Ok(sum)
}

/// Global L2 norm of the gradients of `vars` (those that have one).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += match cpu_sum_sq(g)? {
                Some(s) => s,
                None => g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            };
        }
    }
    Ok(sq.sqrt())
}

/// Σ g² of a contiguous f32/f64 CPU tensor, read in place, in f64 over fixed chunks summed in
/// order (the same bits on every run); None for other tensors. `g.sqr()` made a gradient-sized
/// temporary: the size of the model, every step.
fn cpu_sum_sq(g: &Tensor) -> Result<Option<f64>> {
    fn sum_sq<T: Copy + Into<f64> + Sync>(d: &[T]) -> f64 {
        let parts: Vec<f64> =
            d.par_chunks(1 << 16).map(|c| c.iter().map(|&x| x.into() * x.into()).sum()).collect();
        parts.iter().sum()
    }
    let (s, l) = g.storage_and_layout();
    let (Storage::Cpu(s), Some((a, b))) = (&*s, l.contiguous_offsets()) else { return Ok(None) };
    Ok(match s {
        CpuStorage::F32(d) => Some(sum_sq(&d[a..b])),
        CpuStorage::F64(d) => Some(sum_sq(&d[a..b])),
        _ => None,
    })
}

/// The rule for a clipping norm, wherever it is set (config, live edit, the TUI form): finite
/// and ≥ 0, where 0 turns clipping off.
pub fn check_max_norm(max_norm: f64) -> std::result::Result<(), String> {
    if max_norm.is_finite() && max_norm >= 0.0 {
        Ok(())
    } else {
        Err(format!("grad clip must be a non-negative number, got {max_norm}"))
    }
}

/// Clips the gradients of `vars` to global norm `max_norm` (0 = off) and returns the norm
/// before clipping. Like torch, it scales by `max_norm / (norm + 1e-6)` when that is below 1;
/// a non-finite norm is returned as it is and nothing is scaled.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads, vars)?;
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && norm.is_finite() && coef < 1.0 {
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}
