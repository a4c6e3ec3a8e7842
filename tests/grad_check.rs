//! Finite-difference gradient checks, in f64, for every differentiable op the training path
//! composes (`whet::model::ops`) and for the whole model on a tiny fixture.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::grad::{check, project, randn};
use common::*;
use whet::load;
use whet::model::fused;
use whet::model::ops::{self, Rope};
use whet::model::{Config, Kernels, RopeLayout};

fn cfg(layout: RopeLayout) -> Config {
    Config {
        vocab_size: 16,
        hidden_size: 8,
        intermediate_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 4,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_layout: layout,
        rope_scaling: None,
        max_position_embeddings: 8,
        tie_word_embeddings: false,
        attention_bias: false,
        o_bias: false,
        mlp_bias: false,
        kernels: Default::default(),
        precision: Default::default(),
    }
}

/// The fused causal softmax (scale, mask and softmax in one kernel, with a fused backward):
/// finite differences in f64, and the same values and gradients as the composed ops in f32,
/// for a full causal block (pos 0) and for queries after cached positions (pos 2).
#[test]
fn fused_causal_softmax() {
    for pos in [0usize, 2] {
        let x = randn(&[2, 3, 4, 4 + pos], 3 + pos as u64);
        check("causal softmax", &x, |x| {
            project(&ops::causal_softmax(x, 0.7, pos, Kernels::Fused).unwrap(), 4)
        });
        let x32 = Var::from_tensor(&x.to_dtype(DType::F32).unwrap()).unwrap();
        let r = randn(&[2, 3, 4, 4 + pos], 5).to_dtype(DType::F32).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Tensor| {
            let y = f(x32.as_tensor());
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x32).unwrap().clone())
        };
        let (y, g) = run(&|x| ops::causal_softmax(x, 0.7, pos, Kernels::Fused).unwrap());
        let (yc, gc) = run(&|x| ops::causal_softmax_composed(x, 0.7, pos).unwrap());
        assert!(max_abs_diff(&y, &yc) < 1e-6, "values, pos {pos}");
        assert!(max_abs_diff(&g, &gc) < 1e-6, "gradients, pos {pos}");
        // Masked keys get exactly zero probability.
        let row0: Vec<f32> = y.get(0).unwrap().get(0).unwrap().get(0).unwrap().to_vec1().unwrap();
        assert!(row0[pos + 1..].iter().all(|p| *p == 0.0), "{row0:?}");
    }
}

#[test]
fn softmax_last() {
    check("softmax", &randn(&[3, 5], 1), |x| project(&ops::softmax_last(x).unwrap(), 2));
}

#[test]
fn log_softmax_last() {
    check("log_softmax", &randn(&[3, 5], 3), |x| project(&ops::log_softmax_last(x).unwrap(), 4));
}

#[test]
fn rms_norm_input_and_weight() {
    for k in [Kernels::Composed, Kernels::Fused] {
        let w = randn(&[6], 5);
        check("rms_norm dx", &randn(&[2, 3, 6], 6), |x| project(&ops::rms_norm(x, &w, 1e-6, k).unwrap(), 7));
        let x = randn(&[2, 3, 6], 8);
        check("rms_norm dw", &w, |w| project(&ops::rms_norm(&x, w, 1e-6, k).unwrap(), 9));
    }
}

/// The fused RMSNorm against the composed one in f32, over more rows than one block of the
/// weight-gradient sum, and twice the same bits (the block sum does not depend on scheduling).
#[test]
fn fused_rms_norm_matches_composed() {
    let x = Var::from_tensor(&randn(&[2, 70, 24], 10).to_dtype(DType::F32).unwrap()).unwrap();
    let w = Var::from_tensor(&randn(&[24], 11).to_dtype(DType::F32).unwrap()).unwrap();
    let r = randn(&[2, 70, 24], 12).to_dtype(DType::F32).unwrap();
    let run = |k: Kernels| {
        let y = ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5, k).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone())
    };
    let (y, dx, dw) = run(Kernels::Fused);
    let (yc, dxc, dwc) = run(Kernels::Composed);
    assert!(max_abs_diff(&y, &yc) < 1e-5);
    assert!(max_abs_diff(&dx, &dxc) < 1e-5);
    assert!(max_abs_diff(&dw, &dwc) < 1e-4, "{}", max_abs_diff(&dw, &dwc));
    let (_, _, dw2) = run(Kernels::Fused);
    assert_eq!(dw.to_vec1::<f32>().unwrap(), dw2.to_vec1::<f32>().unwrap());
}

#[test]
fn swiglu_both_inputs() {
    for k in [Kernels::Composed, Kernels::Fused] {
        let u = randn(&[2, 5], 10);
        check("swiglu dg", &randn(&[2, 5], 11), |g| project(&ops::swiglu(g, &u, k).unwrap(), 12));
        let g = randn(&[2, 5], 13);
        check("swiglu du", &u, |u| project(&ops::swiglu(&g, u, k).unwrap(), 14));
    }
}

/// The fused SwiGLU against the composed one in f32, over several parallel chunks.
#[test]
fn fused_swiglu_matches_composed() {
    let g = Var::from_tensor(&(randn(&[3, 4000], 15) * 6.0).unwrap().to_dtype(DType::F32).unwrap()).unwrap();
    let u = Var::from_tensor(&randn(&[3, 4000], 16).to_dtype(DType::F32).unwrap()).unwrap();
    let r = randn(&[3, 4000], 17).to_dtype(DType::F32).unwrap();
    let run = |k: Kernels| {
        let y = ops::swiglu(g.as_tensor(), u.as_tensor(), k).unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        (y, grads.get(&g).unwrap().clone(), grads.get(&u).unwrap().clone())
    };
    let (y, dg, du) = run(Kernels::Fused);
    let (yc, dgc, duc) = run(Kernels::Composed);
    assert!(max_abs_diff(&y, &yc) < 1e-5);
    assert!(max_abs_diff(&dg, &dgc) < 1e-5, "{}", max_abs_diff(&dg, &dgc));
    assert!(max_abs_diff(&du, &duc) < 1e-5);
}

#[test]
fn rope_both_layouts() {
    for (layout, kernels) in [RopeLayout::Half, RopeLayout::Interleaved]
        .into_iter()
        .flat_map(|l| [(l, Kernels::Fused), (l, Kernels::Composed)])
    {
        let rope = Rope::new(&Config { kernels, ..cfg(layout) }, 8, &Device::Cpu).unwrap();
        // (B, nh, T, hs), starting at position 2 as a cached continuation would.
        check(&format!("rope {layout:?} {kernels:?}"), &randn(&[1, 2, 3, 4], 15), |x| {
            project(&rope.apply(x, 2).unwrap(), 16)
        });
        if kernels == Kernels::Fused {
            // (B, T, n·hs): 2 heads of 4 per position, as the fused attention takes them.
            check(&format!("rope rows {layout:?}"), &randn(&[1, 3, 8], 17), |x| {
                project(&rope.apply_rows(x, 2, 4).unwrap(), 18)
            });
        }
    }
}

/// q_proj and k_proj on the fused path: the linear and the rotation in one op, by finite
/// differences, and to the bit as the two ops it replaces, values and gradients.
#[test]
fn linear_rope_by_finite_differences_and_the_bits_of_linear_then_rope() {
    for layout in [RopeLayout::Half, RopeLayout::Interleaved] {
        let rope = Rope::new(&cfg(layout), 8, &Device::Cpu).unwrap();
        // x (B, T, in) = (2, 3, 5), W (out, in) with out = 2 heads of 4, from position 2.
        let (x, w) = (randn(&[2, 3, 5], 90), randn(&[8, 5], 91));
        let rows = |x: &Tensor| rope.rows(2, (x.dim(1).unwrap(), 8), 4, x.dtype()).unwrap();
        check(&format!("linear-rope dx {layout:?}"), &x, |x| {
            project(&fused::linear_rope(x, &w, rows(x)).unwrap(), 92)
        });
        check(&format!("linear-rope dW {layout:?}"), &w, |w| {
            project(&fused::linear_rope(&x, w, rows(&x)).unwrap(), 93)
        });
        let f32 = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
        let (x, w, g) = (f32(&x), f32(&w), randn(&[2, 3, 8], 94).to_dtype(DType::F32).unwrap());
        let run = |one_op: bool| {
            let y = match one_op {
                true => fused::linear_rope(&x, &w, rows(&x)).unwrap(),
                false => rope.apply_rows(&fused::linear(&x, &w).unwrap(), 2, 4).unwrap(),
            };
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(&x).unwrap().clone(), grads.get(&w).unwrap().clone())
        };
        let ((y, dx, dw), (yc, dxc, dwc)) = (run(true), run(false));
        assert_eq!(y.dims(), [2, 3, 8]);
        for (name, a, b) in [("y", &y, &yc), ("dx", &dx, &dxc), ("dW", &dw, &dwc)] {
            assert_eq!(max_abs_diff(a, b), 0.0, "{layout:?} {name}");
        }
    }
    let rope = Rope::new(&cfg(RopeLayout::Half), 8, &Device::Cpu).unwrap();
    let err = rope.rows(6, (3, 8), 4, DType::F64).unwrap_err(); // positions 6..9 of 8
    assert!(err.to_string().contains("past the rotary table"), "{err}");
    let err = fused::linear_rope(
        &randn(&[3, 5], 95),
        &randn(&[8, 5], 96),
        rope.rows(0, (3, 8), 4, DType::F64).unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("disagree"), "{err}");
    // A rotation made for other positions or other heads than x and W.
    let (x, w) = (randn(&[1, 3, 5], 97), randn(&[8, 5], 98));
    for rot in [rope.rows(0, (4, 8), 4, DType::F64).unwrap(), rope.rows(0, (3, 16), 4, DType::F64).unwrap()] {
        let err = fused::linear_rope(&x, &w, rot).unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }
}

/// The fused rope against the composed one in f32, both layouts: the same bits forward (the
/// same products and sums), gradients to rounding.
#[test]
fn fused_rope_matches_composed() {
    for layout in [RopeLayout::Half, RopeLayout::Interleaved] {
        let x = Var::from_tensor(&randn(&[2, 3, 50, 4], 60).to_dtype(DType::F32).unwrap()).unwrap();
        let r = randn(&[2, 3, 50, 4], 61).to_dtype(DType::F32).unwrap();
        let run = |kernels: Kernels| {
            let rope = Rope::new(&Config { kernels, ..cfg(layout) }, 64, &Device::Cpu).unwrap();
            let y = rope.apply(x.as_tensor(), 5).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone())
        };
        let ((y, dx), (yc, dxc)) = (run(Kernels::Fused), run(Kernels::Composed));
        assert_eq!(max_abs_diff(&y, &yc), 0.0, "{layout:?}");
        assert!(max_abs_diff(&dx, &dxc) < 1e-6, "{layout:?}: {}", max_abs_diff(&dx, &dxc));
        // The same rotation on the token-major layout the fused attention takes.
        let tokens =
            |t: &Tensor| t.transpose(1, 2).unwrap().contiguous().unwrap().reshape((2, 50, 12)).unwrap(); // (B, nh, T, hs) -> (B, T, nh·hs)
        let rope = Rope::new(&Config { kernels: Kernels::Fused, ..cfg(layout) }, 64, &Device::Cpu).unwrap();
        let yt = rope.apply_rows(&tokens(x.as_tensor()), 5, 4).unwrap();
        assert_eq!(max_abs_diff(&yt, &tokens(&yc)), 0.0, "{layout:?} rows");
    }
}

#[test]
fn causal_lm_loss_with_and_without_mask() {
    let ids = Tensor::new(&[[1u32, 4, 2, 0], [3, 3, 1, 2]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[0f64, 1., 1., 0.], [1., 0., 1., 1.]], &Device::Cpu).unwrap();
    check("ce", &randn(&[2, 4, 5], 17), |l| ops::causal_lm_loss(l, &ids, None).unwrap().0);
    check("ce masked", &randn(&[2, 4, 5], 18), |l| ops::causal_lm_loss(l, &ids, Some(&mask)).unwrap().0);
}

/// The lm_head fused with the loss: dL/dhidden and dL/dw by finite differences, with a mask
/// that leaves some rows out, against the composed `hidden @ wᵀ` then `causal_lm_nll_sum`.
#[test]
fn fused_linear_cross_entropy_gradients() {
    let ids = Tensor::new(&[[1u32, 4, 2, 0], [3, 3, 1, 2]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[0f64, 1., 1., 0.], [1., 0., 1., 1.]], &Device::Cpu).unwrap();
    let (h, w) = (randn(&[2, 4, 6], 30), randn(&[5, 6], 31));
    let loss =
        |h: &Tensor, w: &Tensor, m: Option<&Tensor>| ops::causal_lm_nll_sum_fused(h, w, &ids, m).unwrap().0;
    for m in [None, Some(&mask)] {
        check("linear ce dh", &h, |h| loss(h, &w, m));
        check("linear ce dw", &w, |w| loss(&h, w, m));
        let composed =
            ops::causal_lm_nll_sum(&h.broadcast_matmul(&w.t().unwrap()).unwrap(), &ids, m).unwrap();
        let fused = ops::causal_lm_nll_sum_fused(&h, &w, &ids, m).unwrap();
        assert_eq!(fused.1, composed.1, "counted labels");
        let d = (fused.0.to_scalar::<f64>().unwrap() - composed.0.to_scalar::<f64>().unwrap()).abs();
        assert!(d < 1e-12, "fused loss differs from composed by {d}");
    }
    // A label outside the vocabulary is an error, not a panic.
    let bad = Tensor::new(&[[1u32, 9, 2, 0]], &Device::Cpu).unwrap();
    let err = ops::causal_lm_nll_sum_fused(&randn(&[1, 4, 6], 32), &w, &bad, None).unwrap_err();
    assert!(err.to_string().contains("label id 9 is outside"), "{err}");
}

/// In f32 over more rows than one block of logits (so blocks accumulate dL/dw), the fused loss
/// head matches the composed one, gives a frozen weight no gradient, and repeats its bits.
#[test]
fn fused_linear_cross_entropy_matches_composed_in_blocks() {
    let (b, t, c, v) = (3, 1000, 8, 4096); // 3000 rows × 4096 > one block of 2^23 logits
    let h = Var::from_tensor(&randn(&[b, t, c], 33).to_dtype(DType::F32).unwrap()).unwrap();
    let w = Var::from_tensor(&randn(&[v, c], 34).to_dtype(DType::F32).unwrap()).unwrap();
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 2654435761 % v) as u32).collect();
    let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap();
    let mask: Vec<f32> = (0..b * t).map(|i| (i % 7 != 0) as u8 as f32).collect();
    let mask = Tensor::from_vec(mask, (b, t), &Device::Cpu).unwrap();
    let run = |fused: bool| {
        let (hh, ww) = (h.as_tensor(), w.as_tensor());
        let (sum, n) = if fused {
            ops::causal_lm_nll_sum_fused(hh, ww, &ids, Some(&mask)).unwrap()
        } else {
            ops::causal_lm_nll_sum(&hh.broadcast_matmul(&ww.t().unwrap()).unwrap(), &ids, Some(&mask))
                .unwrap()
        };
        let g = sum.backward().unwrap();
        (sum.to_scalar::<f32>().unwrap(), n, g.get(&h).unwrap().clone(), g.get(&w).unwrap().clone())
    };
    let (loss, n, dh, dw) = run(true);
    let (loss_c, n_c, dh_c, dw_c) = run(false);
    assert!(!dh.track_op() && !dw.track_op(), "the gradients carry no graph");
    assert_eq!(n, n_c);
    assert!(((loss - loss_c) / loss_c).abs() < 1e-5, "{loss} vs {loss_c}");
    assert!(max_abs_diff(&dh, &dh_c) < 1e-5, "dh {}", max_abs_diff(&dh, &dh_c));
    assert!(max_abs_diff(&dw, &dw_c) < 1e-4, "dw {}", max_abs_diff(&dw, &dw_c));
    let (loss2, _, _, dw2) = run(true);
    assert_eq!(loss.to_bits(), loss2.to_bits());
    assert_eq!(
        dw.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        dw2.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // A frozen (plain) weight gets no gradient, the hidden states still do.
    let frozen = w.as_tensor().detach();
    let g = ops::causal_lm_nll_sum_fused(h.as_tensor(), &frozen, &ids, None).unwrap().0.backward().unwrap();
    assert!(g.get(&frozen).is_none() && g.get(&h).is_some());
}

/// `x Wᵀ + s · ((m ⊙ x) Aᵀ) Bᵀ` composed from candle's ops: the reference for the fused op.
fn lora_composed(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, s: f64, m: Option<&Tensor>) -> Tensor {
    let xd = m.map_or(x.clone(), |m| (x * m).unwrap());
    let h = xd.broadcast_matmul(&a.t().unwrap()).unwrap().broadcast_matmul(&b.t().unwrap()).unwrap();
    (x.broadcast_matmul(&w.t().unwrap()).unwrap() + (h * s).unwrap()).unwrap()
}

/// The fused LoRA projection on a frozen base: dL/dx, dL/dA and dL/dB by finite differences,
/// with and without a dropout mask, and the same values as the composed form.
#[test]
fn fused_lora_linear_gradients() {
    let (w, a, b) = (randn(&[5, 6], 40), randn(&[3, 6], 41), randn(&[5, 3], 42));
    let x = randn(&[2, 4, 6], 43);
    let mask = randn(&[2, 4, 6], 44).ge(0.0).unwrap().to_dtype(DType::F64).unwrap() * 2.0;
    let mask = mask.unwrap();
    for m in [None, Some(&mask)] {
        let f = |x: &Tensor, a: &Tensor, b: &Tensor| fused::lora_linear(x, &w, a, b, 1.5, m).unwrap();
        check("lora dx", &x, |x| project(&f(x, &a, &b), 45));
        check("lora dA", &a, |a| project(&f(&x, a, &b), 46));
        check("lora dB", &b, |b| project(&f(&x, &a, b), 47));
        let d = max_abs_diff(
            &f(&x, &a, &b).to_dtype(DType::F32).unwrap(),
            &lora_composed(&x, &w, &a, &b, 1.5, m).to_dtype(DType::F32).unwrap(),
        );
        assert!(d < 1e-6, "fused lora differs from composed by {d}");
    }
    let err = fused::lora_linear(&x, &w, &b, &a, 1.5, None).unwrap_err();
    assert!(err.to_string().contains("disagree"), "{err}");
}

/// In f32, the fused LoRA projection's gradients match the composed ones, the frozen base
/// gets none, and the adapter's gradients carry no graph: one that did would keep each step's
/// activations alive through the optimizer's moments (seen as a leak of a step's memory per
/// step before this was checked).
#[test]
fn fused_lora_linear_matches_composed_and_keeps_no_graph() {
    let f32 = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    let w = f32(randn(&[48, 32], 50));
    let x = Var::from_tensor(&f32(randn(&[2, 40, 32], 51))).unwrap();
    let a = Var::from_tensor(&f32(randn(&[8, 32], 52))).unwrap();
    let b = Var::from_tensor(&f32(randn(&[48, 8], 53))).unwrap();
    let r = f32(randn(&[2, 40, 48], 54));
    let run = |fused: bool| {
        let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
        let y = if fused {
            fused::lora_linear(xt, &w, at, bt, 2.0, None).unwrap()
        } else {
            lora_composed(xt, &w, at, bt, 2.0, None)
        };
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w).is_none(), "the frozen base gets no gradient");
        (y, [g.get(&x).unwrap().clone(), g.get(&a).unwrap().clone(), g.get(&b).unwrap().clone()])
    };
    let (y, grads) = run(true);
    let (yc, grads_c) = run(false);
    assert!(max_abs_diff(&y, &yc) < 1e-5);
    for (name, (g, gc)) in ["dx", "dA", "dB"].iter().zip(grads.iter().zip(&grads_c)) {
        assert!(max_abs_diff(g, gc) < 1e-4, "{name}: {}", max_abs_diff(g, gc));
        assert!(!g.track_op(), "{name} carries a graph");
    }
}

/// The frozen-base linear: dL/dx through the custom op, and no gradient for the weight.
#[test]
fn frozen_linear_input_gradient() {
    let w = randn(&[4, 6], 19); // (out, in), a plain tensor: frozen
    check("frozen_linear dx", &randn(&[2, 3, 6], 20), |x| project(&ops::frozen_linear(x, &w).unwrap(), 21));
    let x = Var::from_tensor(&randn(&[3, 6], 22)).unwrap();
    let grads = project(&ops::frozen_linear(x.as_tensor(), &w).unwrap(), 23).backward().unwrap();
    assert!(grads.get(&w).is_none(), "a frozen weight gets no gradient");
    // The product: gemm's bits for many rows; for a few (decoding), a dot product per
    // weight row, equal to rounding.
    for (rows, tol) in [(8, 0.0), (3, 1e-14)] {
        let x = randn(&[rows, 6], 22);
        let same = x.matmul(&w.t().unwrap()).unwrap();
        let d = (ops::frozen_linear(&x, &w).unwrap() - same).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f64>().unwrap() <= tol, "{rows} rows: {d}");
    }
}

/// The whole model in f64: loss gradients wrt. a few elements of every weight.
#[test]
fn whole_model_every_weight() {
    let dir = fixture("tiny-qwen2-bias");
    let r = reference(&dir);
    let (cfg, w) = load::load_weights(&dir, &Device::Cpu).unwrap();
    let w64: std::collections::HashMap<_, _> =
        w.into_iter().map(|(k, t)| (k, t.to_dtype(DType::F64).unwrap())).collect();
    let ids = r.ids.narrow(1, 0, 6).unwrap();
    let names: Vec<String> = w64.keys().cloned().collect();
    for name in names {
        let x = w64[&name].clone();
        // Check a handful of elements: perturb through a small additive delta tensor.
        let n = x.elem_count().min(4);
        let delta = Tensor::zeros(n, DType::F64, &Device::Cpu).unwrap();
        let loss_at = |d: &Tensor| -> Tensor {
            let flat = x.flatten_all().unwrap();
            let head = (flat.narrow(0, 0, n).unwrap() + d).unwrap();
            let rest = flat.narrow(0, n, flat.elem_count() - n).unwrap();
            let t = Tensor::cat(&[&head, &rest], 0).unwrap().reshape(x.shape()).unwrap();
            let mut ws = w64.clone();
            ws.insert(name.clone(), t);
            let vb = candle_nn::VarBuilder::from_tensors(ws, DType::F64, &Device::Cpu);
            let m = whet::model::Llama::load(vb, &cfg).unwrap();
            m.loss(&ids, None).unwrap()
        };
        check(&name, &delta, loss_at);
    }
}

/// Inputs the fused kernels do not take fall back or fail cleanly: bf16 goes through the
/// composed ops (same values), and an empty last dim is an error, not a panic.
#[test]
fn fused_kernels_fall_back_for_bf16_and_refuse_empty_rows() {
    let x = randn(&[1, 2, 3, 3], 20).to_dtype(DType::BF16).unwrap();
    let y = ops::causal_softmax(&x, 0.5, 0, Kernels::Fused).unwrap();
    let yc = ops::causal_softmax_composed(&x, 0.5, 0).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let (y, yc) = (y.to_dtype(DType::F32).unwrap(), yc.to_dtype(DType::F32).unwrap());
    assert_eq!(max_abs_diff(&y, &yc), 0.0);
    let empty = Tensor::zeros((2, 0), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap();
    assert!(ops::rms_norm(&empty, &w, 1e-5, Kernels::Fused).is_err());
    assert!(ops::causal_softmax(
        &Tensor::zeros((1, 2, 0), DType::F32, &Device::Cpu).unwrap(),
        1.0,
        0,
        Kernels::Fused
    )
    .is_err());
}

/// `whet bench kernels`, the check a GPU box runs (scripts/device-check.sh), on the CPU: every
/// op with a device kernel agrees with the composed ops in f64, values and gradients, and a
/// dtype with no kernels is refused rather than quietly checking the composed ops.
#[test]
fn kernel_check_passes_on_the_cpu_and_refuses_what_it_cannot_check() {
    let checks = whet::kernel_check::check_kernels(&Device::Cpu, DType::F32).unwrap();
    let ops: Vec<&str> = checks.iter().map(|c| c.op.as_str()).collect();
    assert_eq!(
        ops,
        [
            "causal-softmax",
            "causal-softmax-cached",
            "rms-norm",
            "swiglu",
            "linear-cross-entropy",
            "rope-half",
            "rope-interleaved",
            "quant-linear-nf4",
            "quant-linear-q4_0"
        ]
    );
    for c in &checks {
        assert!(c.ok && c.value_err < 1e-5 && c.grad_err < 1e-5, "{c:?}");
        assert!(c.fused_ms > 0.0 && c.composed_ms > 0.0, "{c:?}");
    }
    let err = whet::kernel_check::check_kernels(&Device::Cpu, DType::BF16).unwrap_err().to_string();
    assert!(err.contains("no fused kernels for BF16"), "{err}");
}

/// The device-generic loss head (`fused::chunked_linear_cross_entropy`, what a GPU or a bf16
/// run uses): finite differences in f64 over blocks of 2 rows with some rows masked out, the
/// CPU kernel's values and gradients in f32 over several blocks, and bf16 inputs against the
/// composed loss of the same (rounded) inputs in f32.
#[test]
fn chunked_linear_cross_entropy_matches_the_kernel_and_finite_differences() {
    let labels = [1u32, 4, 2, 0, 3, 3, 1, 2];
    let weights = [0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 1.0, 1.0];
    let (h, w) = (randn(&[8, 6], 40), randn(&[5, 6], 41));
    let chunked =
        |h: &Tensor, w: &Tensor| fused::chunked_linear_cross_entropy(h, w, &labels, &weights, Some(2));
    check("chunked ce dh", &h, |h| chunked(h, &w).unwrap());
    check("chunked ce dw", &w, |w| chunked(&h, w).unwrap());

    let (h, w) = (randn(&[300, 16], 42), randn(&[700, 16], 43));
    let labels: Vec<u32> = (0..300).map(|i| (i * 2654435761u64 % 700) as u32).collect();
    let weights: Vec<f64> = (0..300).map(|i| (i % 5 != 0) as u8 as f64).collect();
    let run = |h: &Tensor, w: &Tensor, kernel: bool| {
        let (hv, wv) = (Var::from_tensor(h).unwrap(), Var::from_tensor(w).unwrap());
        let loss = if kernel {
            fused::linear_cross_entropy(hv.as_tensor(), wv.as_tensor(), labels.clone(), weights.clone())
        } else {
            fused::chunked_linear_cross_entropy(hv.as_tensor(), wv.as_tensor(), &labels, &weights, Some(64))
        }
        .unwrap();
        let g = loss.backward().unwrap();
        let scalar = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        (scalar, g.get(&hv).unwrap().clone(), g.get(&wv).unwrap().clone())
    };
    let f32 = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
    let (l_k, dh_k, dw_k) = run(&f32(&h), &f32(&w), true);
    let (l_c, dh_c, dw_c) = run(&f32(&h), &f32(&w), false);
    assert!(!dh_c.track_op() && !dw_c.track_op(), "the gradients carry no graph");
    assert!(((l_k - l_c) / l_k).abs() < 1e-6, "{l_k} vs {l_c}");
    assert!(max_abs_diff(&dh_k, &dh_c) < 1e-5, "dh {}", max_abs_diff(&dh_k, &dh_c));
    assert!(max_abs_diff(&dw_k, &dw_c) < 1e-4, "dw {}", max_abs_diff(&dw_k, &dw_c));

    let bf = |x: &Tensor| x.to_dtype(DType::BF16).unwrap();
    let (l_b, dh_b, dw_b) = run(&bf(&h), &bf(&w), false);
    let (l_r, dh_r, dw_r) = run(&f32(&bf(&h)), &f32(&bf(&w)), true);
    assert_eq!((dh_b.dtype(), dw_b.dtype()), (DType::BF16, DType::BF16));
    assert!(((l_b - l_r) / l_r).abs() < 1e-2, "bf16 {l_b} vs f32 {l_r}");
    let rel = |a: &Tensor, b: &Tensor| {
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        max_abs_diff(&f32(a), b) / scale
    };
    assert!(
        rel(&dh_b, &dh_r) < 2e-2 && rel(&dw_b, &dw_r) < 2e-2,
        "{} {}",
        rel(&dh_b, &dh_r),
        rel(&dw_b, &dw_r)
    );
}

/// Attention composed from candle's ops, as `Attention::forward` runs it without the kernel
/// (k and v repeated for GQA, the causal softmax, two batched matmuls), on the kernel's layout:
/// q (B, T, nh·hs), k and v (B, T_all, nkv·hs) -> (B, T, nh·hs).
fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (nh, nkv): (usize, usize),
    scale: f64,
    pos: usize,
) -> Tensor {
    let heads = |x: &Tensor, n: usize| {
        let (b, t, w) = x.dims3().unwrap();
        // (B, T, n·hs) -> (B, n, T, hs)
        x.reshape((b, t, n, w / n)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
    };
    let (q, k, v) = (heads(q, nh), heads(k, nkv), heads(v, nkv));
    let (b, _, t, hs) = q.dims4().unwrap();
    let ta = k.dim(2).unwrap();
    let rep = |x: &Tensor| {
        // (B, nkv, T_all, hs) -> (B, nkv, rep, T_all, hs) -> (B, nh, T_all, hs)
        x.unsqueeze(2).unwrap().expand((b, nkv, nh / nkv, ta, hs)).unwrap().reshape((b, nh, ta, hs)).unwrap()
    };
    let scores = q.matmul(&rep(&k).t().unwrap()).unwrap();
    let y = ops::causal_softmax_composed(&scores, scale, pos).unwrap().matmul(&rep(&v)).unwrap();
    y.transpose(1, 2).unwrap().reshape((b, t, nh * hs)).unwrap() // (B, nh, T, hs) -> (B, T, nh·hs)
}

/// The fused attention (GQA without repeating k and v, heads read through strides, the
/// probabilities kept for the backward): finite differences in f64 for q, k and v, with and
/// without cached positions, and the composed form's values and gradients in f32.
#[test]
fn fused_attention_gradients_and_composed_form() {
    for pos in [0usize, 2] {
        // B 2, T 3, 4 query heads and 2 kv heads of 4
        let (q, k, v) = (randn(&[2, 3, 16], 50), randn(&[2, 3 + pos, 8], 51), randn(&[2, 3 + pos, 8], 52));
        let f = |q: &Tensor, k: &Tensor, v: &Tensor| {
            project(&fused::attention(q, k, v, (4, 2), 0.6, pos).unwrap(), 53)
        };
        check("attention dq", &q, |q| f(q, &k, &v));
        check("attention dk", &k, |k| f(&q, k, &v));
        check("attention dv", &v, |v| f(&q, &k, v));

        // 16 rows fit one block of the kernel's query rows; 70 take three, the last partial.
        // 9 query heads and 3 kv heads of 8.
        for t in [16usize, 70] {
            let vars: Vec<Var> =
                [(&[2, t, 72][..], 54), (&[2, t + pos, 24][..], 55), (&[2, t + pos, 24][..], 56)]
                    .iter()
                    .map(|(s, seed)| {
                        Var::from_tensor(&randn(s, *seed).to_dtype(DType::F32).unwrap()).unwrap()
                    })
                    .collect();
            let r = randn(&[2, t, 72], 57).to_dtype(DType::F32).unwrap();
            let run = |fused: bool| {
                let (q, k, v) = (vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
                let y = if fused {
                    fused::attention(q, k, v, (9, 3), 0.35, pos).unwrap()
                } else {
                    attention_composed(q, k, v, (9, 3), 0.35, pos)
                };
                let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let grads: Vec<Tensor> = vars.iter().map(|x| g.get(x).unwrap().clone()).collect();
                (y, grads)
            };
            let ((y, g), (yc, gc)) = (run(true), run(false));
            assert!(max_abs_diff(&y, &yc) < 1e-6, "values, t {t} pos {pos}: {}", max_abs_diff(&y, &yc));
            for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(g.iter().zip(&gc)) {
                assert!(!a.track_op(), "{name} carries a graph");
                assert!(max_abs_diff(a, b) < 1e-5, "{name}, t {t} pos {pos}: {}", max_abs_diff(a, b));
            }
            // Inputs with no graph (inference) take the path that keeps no probabilities.
            let plain: Vec<Tensor> = vars.iter().map(|x| x.as_tensor().detach()).collect();
            let y0 = fused::attention(&plain[0], &plain[1], &plain[2], (9, 3), 0.35, pos).unwrap();
            assert!(
                max_abs_diff(&y0, &yc) < 1e-6,
                "no-grad values, t {t} pos {pos}: {}",
                max_abs_diff(&y0, &yc)
            );
        }
    }
    // q is 2 heads of 5, so k's 8 per token are not 2 heads of 5.
    let bad = fused::attention(
        &randn(&[1, 2, 10], 1),
        &randn(&[1, 2, 8], 2),
        &randn(&[1, 2, 8], 3),
        (2, 2),
        1.0,
        0,
    );
    assert!(bad.unwrap_err().to_string().contains("disagree"));
}
