//! Gradients between `backward` and the optimizer: accumulation over micro-batches and
//! clipping by global norm, as `torch.nn.utils.clip_grad_norm_` does.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Result, Storage, Tensor, Var};
use rayon::prelude::*;

use super::inplace;

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
        let parts: Vec<f64> = d
            .par_chunks(1 << 16)
            .map(|c| {
                crate::simd::wide(
                    #[inline(always)]
                    || lanes_sum_sq(c),
                )
            })
            .collect();
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

/// Σ x² in eight f64 accumulators, added in a fixed order at the end. One running sum was a
/// chain of dependent adds, 69 ms a step for SmolLM2's 135M gradients on 2 Zen 3 cores;
/// independent lanes vectorize.
#[inline(always)]
fn lanes_sum_sq<T: Copy + Into<f64>>(c: &[T]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut rows = c.chunks_exact(8);
    for x in &mut rows {
        for (a, &x) in acc.iter_mut().zip(x) {
            let x: f64 = x.into();
            *a += x * x;
        }
    }
    let tail: f64 = rows.remainder().iter().map(|&x| x.into() * x.into()).sum();
    acc.iter().sum::<f64>() + tail
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
        scale(grads, vars, coef)?;
    }
    Ok(norm)
}

/// Multiplies the gradients of `vars` by `coef`, as candle's `g * coef` does (`x * c + 0` in
/// the gradient's dtype). f32 CPU gradients are scaled in place, unless a storage is shared
/// (with another gradient or a weight): `g * coef` made a new tensor the size of the model
/// every clipped step.
fn scale(grads: &mut GradStore, vars: &[Var], coef: f64) -> Result<()> {
    let weights = vars.iter().map(|v| v.as_tensor());
    let mut addrs: Vec<usize> =
        weights.clone().filter_map(|w| grads.get(w)).chain(weights).map(inplace::storage_addr).collect();
    addrs.sort_unstable();
    let shared = addrs.windows(2).any(|w| w[0] == w[1]);
    let c = coef as f32;
    for v in vars {
        match grads.get(v.as_tensor()) {
            Some(g) if !shared && inplace::applies(g) => inplace::with_mut(g, |d: &mut [f32]| {
                d.par_chunks_mut(1 << 16).for_each(|d| {
                    crate::simd::wide(
                        #[inline(always)]
                        || d.iter_mut().for_each(|x| *x = *x * c + 0.0),
                    )
                });
                Ok(())
            })?,
            Some(_) => {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    grads.insert(v.as_tensor(), (g * coef)?);
                }
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Two f32 weights (scaled in place) and an f64 one (scaled by tensor ops), with their
    /// gradients from one backward pass.
    fn setup() -> (Vec<Var>, GradStore) {
        let vars = weights();
        let grads = backward(&vars);
        (vars, grads)
    }

    fn weights() -> Vec<Var> {
        let dev = &Device::Cpu;
        let vals =
            |n: usize, k: f64| -> Vec<f64> { (0..n).map(|i| ((i * 37 % 101) as f64 - 50.0) * k).collect() };
        let w =
            Var::from_vec(vals(70_000, 1e-2).iter().map(|&x| x as f32).collect(), (700, 100), dev).unwrap();
        let u = Var::from_vec(vals(300, 3e-2).iter().map(|&x| x as f32).collect(), 300, dev).unwrap();
        let b = Var::from_vec(vals(50, 1e-1), 50, dev).unwrap();
        vec![w, u, b]
    }

    fn backward(vars: &[Var]) -> GradStore {
        let [w, u, b] = vars else { panic!("three weights") };
        let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap()
            + (u.as_tensor().sqr().unwrap() * 3.0).unwrap().sum_all().unwrap())
        .unwrap();
        let loss =
            (loss.to_dtype(DType::F64).unwrap() + b.as_tensor().sqr().unwrap().sum_all().unwrap()).unwrap();
        loss.backward().unwrap()
    }

    fn bits(grads: &GradStore, vars: &[Var]) -> Vec<u64> {
        let mut out = Vec::new();
        for v in vars {
            let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap();
            match g.dtype() {
                DType::F32 => out.extend(g.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits() as u64)),
                _ => out.extend(g.to_vec1::<f64>().unwrap().iter().map(|x| x.to_bits())),
            }
        }
        out
    }

    /// Clipping in place gives the bits of candle's `g * coef`, for every gradient, and the
    /// norm is the f64 one.
    #[test]
    fn clipping_scales_like_tensor_ops() {
        let (vars, mut grads) = setup();
        let want_norm = {
            let mut sq = 0.0f64;
            for v in &vars {
                let g = grads.get(v.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
                sq += g.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            }
            sq.sqrt()
        };
        let norm = clip_grad_norm(&mut grads, &vars, 0.5).unwrap();
        assert!((norm - want_norm).abs() <= 1e-12 * want_norm, "norm {norm} vs {want_norm}");
        assert!(norm > 1.0, "the test must clip: norm {norm}");
        let coef = 0.5 / (norm + 1e-6);
        let mut want = backward(&vars);
        for v in &vars {
            let g = want.remove(v.as_tensor()).unwrap();
            want.insert(v.as_tensor(), (g * coef).unwrap());
        }
        let (got, want) = (bits(&grads, &vars), bits(&want, &vars));
        assert_eq!(got.len(), 70_350);
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{differ} of {} values differ", got.len());
    }

    /// Two weights whose gradients share one storage are each scaled once.
    #[test]
    fn shared_gradients_are_scaled_once() {
        let (vars, mut grads) = setup();
        let g0 = grads.get(vars[0].as_tensor()).unwrap().clone();
        let twin = Var::from_tensor(&g0.zeros_like().unwrap()).unwrap();
        grads.insert(twin.as_tensor(), g0.clone());
        let before: Vec<f32> = g0.flatten_all().unwrap().to_vec1().unwrap();
        let vars = [vars[0].clone(), twin];
        let norm = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
        let coef = (1.0 / (norm + 1e-6)) as f32;
        for v in &vars {
            let after: Vec<f32> = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let wrong = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| (**b * coef + 0.0).to_bits() != a.to_bits())
                .count();
            assert_eq!(wrong, 0, "{wrong} of {} values not scaled exactly once", after.len());
        }
    }
}
