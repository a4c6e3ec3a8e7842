//! Gradients between `backward` and the optimizer: accumulation over micro-batches and
//! clipping by global norm, as `torch.nn.utils.clip_grad_norm_` does.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Var};

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
            sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
    }
    Ok(sq.sqrt())
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
