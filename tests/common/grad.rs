//! Finite-difference gradient checks, shared by the gradient tests.

use candle_core::{Tensor, Var};

const H: f64 = 1e-6;

/// Checks d f / d x at every element of `x` (small tensors) against central differences.
pub fn check(name: &str, x: &Tensor, f: impl Fn(&Tensor) -> Tensor) {
    let var = Var::from_tensor(x).unwrap();
    let grads = f(var.as_tensor()).backward().unwrap();
    let g: Vec<f64> = grads.get(&var).expect("a gradient").flatten_all().unwrap().to_vec1().unwrap();
    let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let scalar = |v: &[f64]| -> f64 {
        let t = Tensor::from_slice(v, x.shape(), x.device()).unwrap();
        f(&t).to_scalar::<f64>().unwrap()
    };
    let mut worst = 0.0f64;
    for i in 0..base.len() {
        let (mut hi, mut lo) = (base.clone(), base.clone());
        hi[i] += H;
        lo[i] -= H;
        let fd = (scalar(&hi) - scalar(&lo)) / (2.0 * H);
        let err = (fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-3);
        worst = worst.max(err);
    }
    assert!(worst < 1e-5, "{name}: gradient differs from finite differences (rel {worst:.2e})");
}

/// Uniform in [-1, 1) from a fixed generator (the one `whet bench kernels` uses), so a check
/// sees the same numbers on every run.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    whet::kernel_check::lcg(shape, seed).unwrap()
}

/// L(y) = Σ y ⊙ R for a fixed random R: every output element matters, with its own weight.
pub fn project(y: &Tensor, seed: u64) -> Tensor {
    (y * randn(y.dims(), seed)).unwrap().sum_all().unwrap()
}
