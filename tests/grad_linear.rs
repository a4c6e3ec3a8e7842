//! The fused trainable linear (`fused::linear`, full fine-tuning and pretraining on the CPU):
//! dL/dx and dL/dW by finite differences in f64, and the same values and gradients as
//! candle-nn's `Linear`, which it replaces, in f32. `fused::linear_add`, the same product
//! plus a residual in one op, against the linear followed by candle's add. The MLP's two ops
//! (`fused::gate_up`, `fused::swiglu_down_add`): every input's gradient by finite differences,
//! and the bits of the five ops they replace (two linears, SwiGLU, the linear-add), whose
//! backward kept SwiGLU's output.

mod common;

use candle_core::{DType, Module, Tensor, Var};
use common::grad::{check, project, randn};
use common::max_abs_diff;
use whet::model::{fused, ops, Kernels};

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

#[test]
fn linear_add_gradients_by_finite_differences_and_the_bits_of_linear_then_add() {
    let (w, x, r) = (randn(&[5, 6], 80), randn(&[2, 4, 6], 81), randn(&[2, 4, 5], 82));
    check("linear-add dx", &x, |x| project(&fused::linear_add(x, &w, &r).unwrap(), 83));
    check("linear-add dW", &w, |w| project(&fused::linear_add(&x, w, &r).unwrap(), 84));
    check("linear-add dresidual", &r, |r| project(&fused::linear_add(&x, &w, r).unwrap(), 85));
    for bad in [randn(&[2, 4, 6], 86), randn(&[2, 3, 5], 87), randn(&[8, 5], 88)] {
        let err = fused::linear_add(&x, &w, &bad).unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }
    // f32, beside the op it replaces: the same values and gradients to the bit.
    let f32 = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    let (w, x) = (Var::from_tensor(&f32(w)).unwrap(), Var::from_tensor(&f32(x)).unwrap());
    let r = Var::from_tensor(&f32(r)).unwrap();
    let g = f32(randn(&[2, 4, 5], 89));
    let run = |fused: bool| {
        let y = match fused {
            true => fused::linear_add(&x, &w, &r).unwrap(),
            false => (r.as_tensor() + fused::linear(&x, &w).unwrap()).unwrap(),
        };
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let got: Vec<Tensor> = [&x, &w, &r].iter().map(|v| grads.get(v).unwrap().clone()).collect();
        (y, got)
    };
    let ((y, grads), (yc, grads_c)) = (run(true), run(false));
    assert_eq!(max_abs_diff(&y, &yc), 0.0);
    for (name, (a, b)) in ["dx", "dW", "dresidual"].iter().zip(grads.iter().zip(&grads_c)) {
        assert_eq!(max_abs_diff(a, b), 0.0, "{name}");
    }
}

#[test]
fn gate_up_and_swiglu_down_add_by_finite_differences() {
    // x (2, 3, C=4), gate and up (I=5, 4), down (4, 5), residual (2, 3, 4).
    let (x, wg, wu) = (randn(&[2, 3, 4], 100), randn(&[5, 4], 101), randn(&[5, 4], 102));
    let (wd, r) = (randn(&[4, 5], 103), randn(&[2, 3, 4], 104));
    let gu = fused::gate_up(&x, &wg, &wu).unwrap();
    assert_eq!(gu.dims(), [2, 3, 10]);
    check("gate-up dx", &x, |x| project(&fused::gate_up(x, &wg, &wu).unwrap(), 105));
    check("gate-up dWg", &wg, |w| project(&fused::gate_up(&x, w, &wu).unwrap(), 106));
    check("gate-up dWu", &wu, |w| project(&fused::gate_up(&x, &wg, w).unwrap(), 107));
    check("swiglu-down-add dgu", &gu, |gu| project(&fused::swiglu_down_add(gu, &wd, &r).unwrap(), 108));
    check("swiglu-down-add dWd", &wd, |w| project(&fused::swiglu_down_add(&gu, w, &r).unwrap(), 109));
    check("swiglu-down-add dres", &r, |r| project(&fused::swiglu_down_add(&gu, &wd, r).unwrap(), 110));
    // The whole MLP, through both ops, to x.
    let mlp = |x: &Tensor| fused::swiglu_down_add(&fused::gate_up(x, &wg, &wu).unwrap(), &wd, &r).unwrap();
    check("mlp dx", &x, |x| project(&mlp(x), 111));
}

#[test]
fn mismatched_shapes_are_named() {
    let (x, w, r) = (randn(&[2, 3, 4], 120), randn(&[5, 4], 121), randn(&[2, 3, 4], 122));
    for (wg, wu, x) in [(&w, &randn(&[6, 4], 123), &x), (&w, &w, &randn(&[2, 3, 5], 124))] {
        let err = fused::gate_up(x, wg, wu).unwrap_err();
        assert!(err.to_string().contains("gate-up") && err.to_string().contains("disagree"), "{err}");
    }
    let gu = fused::gate_up(&x, &w, &w).unwrap(); // (2, 3, 10)
    let wd = randn(&[4, 5], 125);
    for (gu, wd, r) in [
        (&gu, &randn(&[4, 6], 126), &r),
        (&gu, &wd, &randn(&[2, 3, 5], 127)),
        (&gu, &wd, &randn(&[2, 4, 4], 128)),
        (&randn(&[2, 3, 9], 129), &wd, &r),
    ] {
        let err = fused::swiglu_down_add(gu, wd, r).unwrap_err();
        assert!(err.to_string().contains("swiglu-down-add"), "{err}");
    }
}

#[test]
fn the_two_ops_give_the_bits_of_the_five_they_replace() {
    let f32 = |t: Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
    // SmolLM2's ratio of widths, smaller: C 48, I 128, 2 × 40 tokens.
    let x = f32(randn(&[2, 40, 48], 130));
    let (wg, wu, wd) =
        (f32(randn(&[128, 48], 131)), f32(randn(&[128, 48], 132)), f32(randn(&[48, 128], 133)));
    let r = f32(randn(&[2, 40, 48], 134));
    let g = randn(&[2, 40, 48], 135).to_dtype(DType::F32).unwrap();
    let run = |fused: bool| {
        let y = match fused {
            true => fused::swiglu_down_add(&fused::gate_up(&x, &wg, &wu).unwrap(), &wd, &r).unwrap(),
            false => {
                let (gate, up) = (fused::linear(&x, &wg).unwrap(), fused::linear(&x, &wu).unwrap());
                let h = ops::swiglu(&gate, &up, Kernels::Fused).unwrap();
                fused::linear_add(&h, &wd, &r).unwrap()
            }
        };
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let got: Vec<Tensor> =
            [&x, &wg, &wu, &wd, &r].iter().map(|v| grads.get(v).unwrap().clone()).collect();
        (y, got)
    };
    let ((y, grads), (yc, grads_c)) = (run(true), run(false));
    assert_eq!(max_abs_diff(&y, &yc), 0.0);
    for (name, (a, b)) in ["dx", "dWg", "dWu", "dWd", "dresidual"].iter().zip(grads.iter().zip(&grads_c)) {
        assert_eq!(a.dims(), b.dims(), "{name}");
        assert!(!a.track_op(), "{name} carries a graph");
        assert_eq!(max_abs_diff(a, b), 0.0, "{name}");
    }
}
