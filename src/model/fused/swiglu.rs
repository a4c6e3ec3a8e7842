//! SwiGLU, with a backward that recomputes the sigmoid.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Tensor};

use super::exp::KernelExp;

use super::{data, map2, map3, Out, S};

/// SwiGLU `silu(g) ⊙ u` on contiguous `g` and `u` of one shape. The backward recomputes the
/// sigmoid instead of keeping `silu(g)` alive: dL/dg = d ⊙ u ⊙ σ(g)(1 + g(1 − σ(g))),
/// dL/du = d ⊙ silu(g).
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.apply_op2(u, SwiGlu)
}

fn sigmoid<T: KernelExp>(x: T) -> T {
    T::one() / (T::one() + (-x).kexp())
}

fn same_shape(name: &str, a: &Layout, b: &Layout) -> Result<()> {
    if a.shape() != b.shape() {
        candle_core::bail!("{name}: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    Ok(())
}

pub(super) fn silu<T: KernelExp>(g: T) -> T {
    g / (T::one() + (-g).kexp())
}

pub(super) fn silu_grad<T: KernelExp>(g: T) -> T {
    let s = sigmoid(g);
    s * (T::one() + g * (T::one() - s))
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, gs: &S, gl: &Layout, us: &S, ul: &Layout) -> Out {
        same_shape("swiglu", gl, ul)?;
        let out = float_op!("swiglu", [(g, gs, gl), (u, us, ul)], |T| map2(g, u, |g: T, u| silu(g) * u));
        Ok((out, gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, gs: &super::C, gl: &Layout, us: &super::C, ul: &Layout) -> super::CudaOut {
        same_shape("swiglu", gl, ul)?;
        Ok((super::cuda::swiglu((gs, gl), (us, ul))?, gl.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        d: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = d.contiguous()?;
        let dg = g.apply_op3_no_bwd(u, &d, &SwiGluDg)?;
        let du = g.apply_op2_no_bwd(&d, &SwiGluDu)?;
        Ok((Some(dg), Some(du)))
    }
}

/// dL/dg = d ⊙ u ⊙ silu'(g).
struct SwiGluDg;

impl candle_core::CustomOp3 for SwiGluDg {
    fn name(&self) -> &'static str {
        "swiglu-dg"
    }

    fn cpu_fwd(&self, gs: &S, gl: &Layout, us: &S, ul: &Layout, ds: &S, dl: &Layout) -> Out {
        if gl.shape() != ul.shape() || gl.shape() != dl.shape() {
            candle_core::bail!("swiglu backward: shapes differ");
        }
        let out = float_op!("swiglu backward", [(g, gs, gl), (u, us, ul), (d, ds, dl)], |T| map3(
            g,
            u,
            d,
            |g: T, u, d| d * u * silu_grad(g)
        ));
        Ok((out, gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &super::C,
        gl: &Layout,
        us: &super::C,
        ul: &Layout,
        ds: &super::C,
        dl: &Layout,
    ) -> super::CudaOut {
        if gl.shape() != ul.shape() || gl.shape() != dl.shape() {
            candle_core::bail!("swiglu backward: shapes differ");
        }
        Ok((super::cuda::swiglu_dg((gs, gl), (us, ul), (ds, dl))?, gl.shape().clone()))
    }
}

/// dL/du = d ⊙ silu(g).
struct SwiGluDu;

impl CustomOp2 for SwiGluDu {
    fn name(&self) -> &'static str {
        "swiglu-du"
    }

    fn cpu_fwd(&self, gs: &S, gl: &Layout, ds: &S, dl: &Layout) -> Out {
        same_shape("swiglu backward", gl, dl)?;
        let out =
            float_op!("swiglu backward", [(g, gs, gl), (d, ds, dl)], |T| map2(g, d, |g: T, d| d * silu(g)));
        Ok((out, gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, gs: &super::C, gl: &Layout, ds: &super::C, dl: &Layout) -> super::CudaOut {
        same_shape("swiglu backward", gl, dl)?;
        Ok((super::cuda::swiglu_du((gs, gl), (ds, dl))?, gl.shape().clone()))
    }
}
