//! The fused trainable linear (`fused::linear`, full fine-tuning and pretraining on the CPU):
//! dL/dx and dL/dW by finite differences in f64, and the same values and gradients as
//! candle-nn's `Linear`, which it replaces, in f32.

mod common;

use candle_core::{DType, Module, Tensor, Var};
use common::grad::{check, project, randn};
use common::max_abs_diff;
use whet::model::fused;

#[test]
fn fused_linear_gradients_by_finite_differences() {
    let (w, x) = (randn(&[5, 6], 60), randn(&[2, 4, 6], 61));
    check("linear dx", &x, |x| project(&fused::linear(x, &w).unwrap(), 62));
    check("linear dW", &w, |w| project(&fused::linear(&x, w).unwrap(), 63));
    // 2-D input, one row.
    check("linear dW, one row", &w, |w| project(&fused::linear(&randn(&[1, 6], 64), w).unwrap(), 65));
    let err = fused::linear(&randn(&[2, 5], 66), &w).unwrap_err();
    assert!(err.to_string().contains("disagree"), "{err}");
}

#[test]
fn fused_linear_matches_candle_nn_and_keeps_no_graph() {
    let f32 = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    let w = Var::from_tensor(&f32(randn(&[48, 32], 70))).unwrap();
    let x = Var::from_tensor(&f32(randn(&[2, 40, 32], 71))).unwrap();
    let r = f32(randn(&[2, 40, 48], 72));
    let run = |fused: bool| {
        let y = if fused {
            fused::linear(x.as_tensor(), w.as_tensor()).unwrap()
        } else {
            candle_nn::Linear::new(w.as_tensor().clone(), None).forward(x.as_tensor()).unwrap()
        };
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        (y, [g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone()])
    };
    let ((y, grads), (yc, grads_c)) = (run(true), run(false));
    assert_eq!(y.dims(), [2, 40, 48]);
    assert!(max_abs_diff(&y, &yc) < 1e-5, "{}", max_abs_diff(&y, &yc));
    for (name, (g, gc)) in ["dx", "dW"].iter().zip(grads.iter().zip(&grads_c)) {
        assert_eq!(g.dims(), gc.dims(), "{name}");
        assert!(max_abs_diff(g, gc) < 1e-4, "{name}: {}", max_abs_diff(g, gc));
        assert!(!g.track_op(), "{name} carries a graph");
    }
}
