//! A trainable linear `y = x Wᵀ` as one op. candle-nn's `Linear` multiplies a (B, T, in) input
//! by W broadcast to (B, in, out); its backward then makes dW per batch row as a (B, out, in)
//! tensor, adds its transpose into a zeroed gradient element by element (a strided walk), and
//! sums over B. Here the backward writes dW = gᵀ x (out, in) and dx = g W each with one
//! product, reading the transposes through strides.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use num_traits::Float;

use super::rope::RowRotation;
use super::{data, held, matmul, Out, S};

/// `x Wᵀ` for `x` (…, in) and a trainable `w` (out, in): (…, in) -> (…, out). Gradients reach
/// both.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let d_in = w.dims2()?.1;
    if x.dims().last() != Some(&d_in) || d_in == 0 {
        candle_core::bail!("linear: x {:?} and weight {:?} disagree", x.shape(), w.shape());
    }
    // The op reads (…, in) as (M, in) rows and makes (…, out) itself: reshapes around it would
    // be graph nodes, each a zeroed gradient and an added copy in candle's backward.
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

/// `residual + x Wᵀ` as one op, for the projections that close each half of a block (o_proj,
/// down_proj). After a separate linear, candle's add node kept the projection's output alive
/// until the backward, which needs only x, W and the gradient: (B, T, C) per projection.
pub fn linear_add(x: &Tensor, w: &Tensor, residual: &Tensor) -> Result<Tensor> {
    let (d_out, d_in) = w.dims2()?;
    let (xd, rd) = (x.dims(), residual.dims());
    let rows_agree =
        xd.len() == rd.len() && xd[..xd.len().saturating_sub(1)] == rd[..rd.len().saturating_sub(1)];
    if xd.last() != Some(&d_in) || rd.last() != Some(&d_out) || !rows_agree || d_in == 0 {
        candle_core::bail!(
            "linear-add: x {:?}, weight {:?} and residual {:?} disagree",
            x.shape(),
            w.shape(),
            residual.shape()
        );
    }
    x.contiguous()?.apply_op3(&w.contiguous()?, &residual.contiguous()?, LinearAdd)
}

/// `rope_rows(x Wᵀ)` as one op, for q_proj and k_proj: after a separate linear, the rope node
/// kept the unrotated projection alive until the backward, which needs only x, W and the
/// gradient rotated back. `rot` is the rotation for x's (B, T) positions and W's out rows.
pub fn linear_rope(x: &Tensor, w: &Tensor, rot: RowRotation) -> Result<Tensor> {
    let (d_out, d_in) = w.dims2()?;
    if x.rank() != 3 || x.dims().last() != Some(&d_in) || d_in == 0 || !rot.fits((x.dim(1)?, d_out)) {
        candle_core::bail!(
            "linear-rope: x {:?}, weight {:?} and the rotation's positions and heads disagree",
            x.shape(),
            w.shape()
        );
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, LinearRope(rot))
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout, ws: &S, wl: &Layout) -> Out {
        let (d_out, d_in) = wl.shape().dims2()?;
        let out = float_op!("linear", [(x, xs, xl), (w, ws, wl)], |T| product::<T>(x, w, d_in));
        Ok((out, with_last(xl, d_out))) // (M, out) is (…, out)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        backward(x, w, g)
    }
}

struct LinearRope(RowRotation);

impl CustomOp2 for LinearRope {
    fn name(&self) -> &'static str {
        "linear-rope"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout, ws: &S, wl: &Layout) -> Out {
        let (d_out, d_in) = wl.shape().dims2()?;
        let out = float_op!("linear-rope", [(x, xs, xl), (w, ws, wl)], |T| {
            self.0.rotate::<T>(&product::<T>(x, w, d_in))?
        });
        let (b, t, _) = xl.shape().dims3()?;
        Ok((out, Shape::from((b, t, d_out))))
    }

    /// The linear's backward on g rotated back.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        backward(x, w, &self.0.undo(g)?)
    }
}

struct LinearAdd;

impl CustomOp3 for LinearAdd {
    fn name(&self) -> &'static str {
        "linear-add"
    }

    fn cpu_fwd(&self, xs: &S, xl: &Layout, ws: &S, wl: &Layout, rs: &S, rl: &Layout) -> Out {
        let d_in = wl.shape().dims2()?.1;
        let out = float_op!("linear-add", [(x, xs, xl), (w, ws, wl), (r, rs, rl)], |T| {
            let mut y = product::<T>(x, w, d_in);
            // After the product, as candle's `residual + y` did: the same bits (a float sum
            // does not depend on the order of its two terms).
            y.iter_mut().zip(r).for_each(|(y, &r)| *y += r);
            y
        });
        Ok((out, rl.shape().clone()))
    }

    /// The linear's dx and dW; the residual's gradient is g itself.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        residual: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = backward(x, w, g)?;
        Ok((dx, dw, residual.track_op().then(|| g.clone())))
    }
}

/// The shape of `l` with its last dimension replaced by `n`.
pub(super) fn with_last(l: &Layout, n: usize) -> Shape {
    let mut dims = l.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Shape::from(dims)
}

/// x Wᵀ for `x` (M, in) and `w` (out, in): (M, out).
pub(super) fn product<T: WithDType + Float>(x: &[T], w: &[T], d_in: usize) -> Vec<T> {
    let (m, d_out) = (x.len() / d_in, w.len() / d_in); // (…, in) read as (M, in)
    let mut y = vec![T::zero(); m * d_out]; // (M, out) = x Wᵀ
    matmul((m, d_out, d_in), (&mut y, (d_out, 1)), (x, (d_in, 1)), (w, (1, d_in)), false);
    y
}

/// dx = g W (M, in), dW = gᵀ x (out, in); only what tracks a gradient is made.
fn backward(x: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let want = (x.track_op(), w.track_op());
    // Detached: a gradient with a graph would keep the step's activations alive. The
    // weight's gradient buffer is found by its own id, not the detached copy's.
    let weight = w;
    let (x, w, g) = (&x.detach(), &w.detach(), &g.detach().contiguous()?);
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (gs, gl) = g.storage_and_layout();
    let d_out = weight.dims2()?.0;
    macro_rules! go {
        ($t:ty) => {{
            let (xd, wd, gd) = (held::<$t>(&xs, xl)?, held::<$t>(&ws, wl)?, held::<$t>(&gs, gl)?);
            let (dx, dw) = grads::<$t>((xd, wd, (gd, d_out)), want, weight)?;
            (dx.map(|dx| Tensor::from_vec(dx, x.shape(), x.device())).transpose()?, dw)
        }};
    }
    Ok(match x.dtype() {
        candle_core::DType::F32 => go!(f32),
        candle_core::DType::F64 => go!(f64),
        dt => candle_core::bail!("linear: f32 or f64 only, not {dt:?}"),
    })
}

/// The backward's two products on `x` (M, in), `w` (out, in) and `g` (M, out) read with a
/// row stride (a slice of a wider gradient, as `fused::gate_up`'s): dx (M, in) as a vector,
/// and dW as a tensor shaped like `wt`, or in the weight's gradient buffer when it has one.
pub(super) fn grads<T: Float + WithDType>(
    (x, w, (g, g_row)): (&[T], &[T], (&[T], usize)),
    (want_x, want_w): (bool, bool),
    wt: &Tensor,
) -> Result<(Option<Vec<T>>, Option<Tensor>)> {
    let (d_out, d_in) = wt.dims2()?;
    let m = x.len() / d_in;
    let dx = want_x.then(|| {
        let mut dx = vec![T::zero(); m * d_in]; // (M, in) = g W
        matmul((m, d_in, d_out), (&mut dx, (d_in, 1)), (g, (g_row, 1)), (w, (d_in, 1)), false);
        dx
    });
    // (out, in) = gᵀ x, gᵀ through its strides; into the weight's gradient buffer when one is
    // lent (`grad_sink`), adding to what an earlier micro-batch wrote.
    let dw_into = |dst: &mut [T], add: bool| {
        matmul((d_out, d_in, m), (dst, (d_in, 1)), (g, (1, g_row)), (x, (d_in, 1)), add)
    };
    let dw = match want_w && !crate::model::grad_sink::write(wt, dw_into)? {
        true => {
            let mut dw = vec![T::zero(); d_out * d_in];
            dw_into(&mut dw, false);
            Some(Tensor::from_vec(dw, wt.shape(), wt.device())?)
        }
        false => None,
    };
    Ok((dx, dw))
}
