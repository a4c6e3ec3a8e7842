//! Gradient buffers (`model::grad_sink`): the fused linear, loss head and embedding write their
//! weight gradients in place when a buffer is lent, giving exactly what candle's path gives,
//! summed over micro-batches; and the fused embedding lookup by finite differences.

mod common;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Module, Tensor, Var};
use common::grad::{check, project, randn};
use common::max_abs_diff;
use whet::model::fused;
use whet::model::grad_sink::GradSink;

fn f32(t: Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

/// A tied model in miniature: embed, one linear, the fused loss head on the same table.
fn loss(ids: &Tensor, table: &Tensor, w: &Tensor, labels: &[u32]) -> Tensor {
    let x = fused::embedding(ids, table).unwrap(); // (N) -> (N, C)
    let h = fused::linear(&x, w).unwrap(); // (N, C)
    let n = labels.len();
    (fused::linear_cross_entropy(&h, table, labels.to_vec(), vec![1.0; n]).unwrap() / n as f64).unwrap()
}

#[test]
fn buffers_hold_exactly_the_gradients_candle_would_and_add_over_micro_batches() {
    let table = Var::from_tensor(&f32(randn(&[40, 16], 1))).unwrap();
    let w = Var::from_tensor(&f32(randn(&[16, 16], 2))).unwrap();
    let vars = [table.clone(), w.clone()];
    let batches =
        [(vec![3u32, 7, 7, 39, 0], vec![7u32, 7, 39, 0, 5]), (vec![1, 2, 3, 4, 5], vec![2, 3, 4, 5, 6])];
    let grads_of = |i: usize| {
        let ids = Tensor::new(batches[i].0.as_slice(), &Device::Cpu).unwrap();
        loss(&ids, table.as_tensor(), w.as_tensor(), &batches[i].1).backward().unwrap()
    };
    // Without buffers: candle holds both gradients.
    let (plain0, plain1) = (grads_of(0), grads_of(1));
    // With buffers: candle holds neither; after draining, the store holds the buffers.
    let mut sink = GradSink::new(&vars);
    let lent = sink.lend();
    let g0 = grads_of(0);
    assert!(g0.get(table.as_tensor()).is_none() && g0.get(w.as_tensor()).is_none());
    drop(lent);
    let mut store = GradStore::default();
    sink.drain_into(&mut store).unwrap();
    // The linear's gradient is the same product, so the same bits; the tied table's sums its
    // rows in another order where a token repeats.
    for (v, tol) in vars.iter().zip([1e-6, 0.0]) {
        let (a, b) = (store.get(v.as_tensor()).unwrap(), plain0.get(v.as_tensor()).unwrap());
        assert!(max_abs_diff(a, b) <= tol, "one micro-batch: {}", max_abs_diff(a, b));
    }
    // A new step overwrites; two micro-batches add up.
    let lent = sink.lend();
    let _ = (grads_of(0), grads_of(1));
    drop(lent);
    let mut store = GradStore::default();
    sink.drain_into(&mut store).unwrap();
    for v in &vars {
        let sum = (plain0.get(v.as_tensor()).unwrap() + plain1.get(v.as_tensor()).unwrap()).unwrap();
        let d = max_abs_diff(store.get(v.as_tensor()).unwrap(), &sum);
        assert!(d < 1e-6, "two micro-batches: {d}");
        assert!(sum.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-3);
    }
    // A drained sink with nothing written this step adds nothing.
    let mut empty = GradStore::default();
    sink.drain_into(&mut empty).unwrap();
    assert!(empty.get(w.as_tensor()).is_none());
}

#[test]
fn a_gradient_from_candle_beside_the_buffer_is_added() {
    let w = Var::from_tensor(&f32(randn(&[6, 4], 10))).unwrap();
    let x = f32(randn(&[3, 4], 11));
    let both = |w: &Tensor| {
        // The fused linear (buffer) plus candle's matmul (GradStore) on the same weight.
        let y = (fused::linear(&x, w).unwrap() + x.matmul(&w.t().unwrap()).unwrap()).unwrap();
        (y * f32(randn(&[3, 6], 12))).unwrap().sum_all().unwrap()
    };
    let plain = both(w.as_tensor()).backward().unwrap();
    let mut sink = GradSink::new([&w]);
    let lent = sink.lend();
    let mut store = both(w.as_tensor()).backward().unwrap();
    drop(lent);
    sink.drain_into(&mut store).unwrap();
    let d = max_abs_diff(store.get(w.as_tensor()).unwrap(), plain.get(w.as_tensor()).unwrap());
    assert!(d < 1e-6, "{d}");
}

#[test]
fn fused_embedding_matches_candle_nn_and_its_gradient_by_finite_differences() {
    let table = randn(&[9, 5], 20);
    let ids = Tensor::new(&[[1u32, 8, 1], [0, 4, 4]], &Device::Cpu).unwrap();
    check("embedding dW", &table, |t| project(&fused::embedding(&ids, t).unwrap(), 21));
    let y = fused::embedding(&ids, &table).unwrap();
    let yc = candle_nn::Embedding::new(table.clone(), 5).forward(&ids).unwrap();
    assert_eq!(y.dims(), [2, 3, 5]);
    assert_eq!(max_abs_diff(&f32(y), &f32(yc)), 0.0);
    let err = fused::embedding(&Tensor::new(&[9u32], &Device::Cpu).unwrap(), &table).unwrap_err();
    assert!(err.to_string().contains("token id 9"), "{err}");
}

#[test]
fn the_loss_head_making_its_weight_gradient_in_the_buffer_leaves_nothing_of_the_last_step() {
    // The loss head makes dL/dw in its forward, in the buffer when the step has not written it
    // yet, and scales it there in the backward by the loss's gradient (here 1/3).
    let w = Var::from_tensor(&f32(randn(&[12, 8], 30))).unwrap();
    let h = f32(randn(&[3, 8], 31));
    let head = |weights: Vec<f64>| {
        let loss = fused::linear_cross_entropy(&h, w.as_tensor(), vec![4, 0, 11], weights).unwrap();
        (loss / 3.0).unwrap().backward().unwrap()
    };
    let plain = head(vec![1.0, 0.5, 1.0]);
    let mut sink = GradSink::new([&w]);
    for weights in [vec![1.0, 0.5, 1.0], vec![0.0; 3]] {
        let lent = sink.lend();
        let mut store = head(weights.clone());
        assert!(store.get(w.as_tensor()).is_none(), "the buffer, not candle, holds dL/dw");
        drop(lent);
        sink.drain_into(&mut store).unwrap();
        let got = store.get(w.as_tensor()).unwrap();
        // Rows of weight 0 count for nothing: the second step's gradient is zero, not the
        // first step's left in the buffer.
        let want = if weights[0] == 0.0 {
            plain.get(w.as_tensor()).unwrap().zeros_like().unwrap()
        } else {
            plain.get(w.as_tensor()).unwrap().clone()
        };
        assert_eq!(max_abs_diff(got, &want), 0.0, "weights {weights:?}");
    }
    assert!(
        plain.get(w.as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
            > 1e-3
    );
}

#[test]
fn loss_heads_that_share_one_backward_or_lose_theirs_leave_the_right_gradient() {
    // The first loss head of a step makes dL/dw in the buffer and scales it in its backward;
    // a second head on the same weight before that backward must not add into the unscaled
    // buffer, and a head whose backward never runs must leave no gradient.
    let w = Var::from_tensor(&f32(randn(&[12, 8], 40))).unwrap();
    let (h1, h2) = (f32(randn(&[3, 8], 41)), f32(randn(&[3, 8], 42)));
    let head = |h: &Tensor, labels: Vec<u32>, k: f64| {
        let loss = fused::linear_cross_entropy(h, w.as_tensor(), labels, vec![1.0; 3]).unwrap();
        (loss * k).unwrap()
    };
    let both = || (head(&h1, vec![4, 0, 11], 0.25) + head(&h2, vec![1, 1, 7], 0.5)).unwrap();
    let plain_both = both().backward().unwrap();
    let plain_one = head(&h2, vec![1, 1, 7], 0.5).backward().unwrap();
    let mut sink = GradSink::new([&w]);
    for (name, plain, run) in [
        (
            "two heads, one backward",
            &plain_both,
            Box::new(|| both().backward().unwrap()) as Box<dyn Fn() -> GradStore>,
        ),
        (
            "a head without its backward, then one with",
            &plain_one,
            Box::new(|| {
                let _lost = head(&h1, vec![4, 0, 11], 0.25);
                head(&h2, vec![1, 1, 7], 0.5).backward().unwrap()
            }),
        ),
    ] {
        let lent = sink.lend();
        let mut store = run();
        drop(lent);
        sink.drain_into(&mut store).unwrap();
        let (got, want) = (store.get(w.as_tensor()).unwrap(), plain.get(w.as_tensor()).unwrap());
        assert!(max_abs_diff(got, want) < 1e-6, "{name}: {}", max_abs_diff(got, want));
    }
}
