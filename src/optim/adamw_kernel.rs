//! AdamW's update as one pass over each parameter on the CPU: p, m and v change in place, with
//! no temporaries. Composed from tensor ops the same update made eight parameter-sized
//! temporaries and nine passes over memory; for a 135M-parameter model that was a tenth of a
//! full fine-tuning step.
//!
//! The arithmetic is the composed update's, operation for operation (candle's `x * c` and
//! `x + c` are `x * mul + add` in the tensor's dtype), so both give the same bits and a run
//! resumes exactly whichever one wrote its checkpoint.

use candle_core::{Result, Storage, Tensor};
use rayon::prelude::*;

use super::inplace::{self, cpu_f32, storage_addr, with_mut};

/// The step's constants, already in f32 as candle's affine ops round them.
#[derive(Clone, Copy)]
pub struct Consts {
    /// `1 - lr · weight_decay`, for a parameter that decays.
    pub decay: Option<f32>,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `1 / sqrt(1 - beta2^t)`
    pub inv_sqrt_bc2: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`
    pub step_size: f32,
}

/// Whether the one-pass update serves these tensors: all f32, contiguous, on the CPU.
pub fn applies(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    [p, g, m, v].iter().all(|t| inplace::applies(t))
}

/// Updates `p`, `m` and `v` in place from the gradient `g`.
pub fn update(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, k: &Consts) -> Result<()> {
    // Each write lock is taken while the others (and g's read lock) are held: a shared storage
    // would deadlock.
    let addrs = [p, m, v, g].map(storage_addr);
    if (0..4).any(|i| (i + 1..4).any(|j| addrs[i] == addrs[j])) {
        candle_core::bail!("adamw: parameter, moments and gradient must not share storage");
    }
    let (gs, gl) = g.storage_and_layout();
    let g = match &*gs {
        Storage::Cpu(s) => cpu_f32(s.as_slice::<f32>()?, gl)?,
        _ => candle_core::bail!("adamw: the gradient must be on the CPU"),
    };
    if [p, m, v].iter().any(|t| t.elem_count() != g.len()) {
        candle_core::bail!("adamw: parameter, gradient and moments differ in size");
    }
    // Three nested in-place ops, each holding one tensor's write lock.
    with_mut(m, |m| {
        with_mut(v, |v| {
            with_mut(p, |p| {
                step(p, g, m, v, k);
                Ok(())
            })
        })
    })
}

const CHUNK: usize = 1 << 14;

/// One pass over the chunks, each compiled for AVX-512 or AVX2 where the CPU has them
/// (`simd::wide`): at the default target (SSE2) this loop ran a float at a time and took
/// ~420 ms of a full fine-tuning step on SmolLM2; in vectors it takes about 60 ms on 2 Zen 3
/// cores, with the same bits.
fn step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &Consts) {
    let chunks = p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK));
    chunks.zip(v.par_chunks_mut(CHUNK)).for_each(|(((p, g), m), v)| {
        // The decay is chosen outside the loop: with the match inside, LLVM kept the loop
        // scalar under AVX2 (vsqrtss, vdivss), which cost ~330 ms a step on a Zen 3.
        crate::simd::wide(
            #[inline(always)]
            || match k.decay {
                // The `+ 0.0`s are the composed update's (affine with add 0); they turn -0 into +0.
                Some(d) => update_chunk(p, g, m, v, k, |p| p * d + 0.0),
                None => update_chunk(p, g, m, v, k, |p| p),
            },
        )
    });
}

/// The update of one chunk, with the constants in locals so that the loop vectorizes.
#[inline(always)]
fn update_chunk(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    k: &Consts,
    decay: impl Fn(f32) -> f32,
) {
    let Consts { beta1, one_minus_beta1, beta2, one_minus_beta2, inv_sqrt_bc2, eps, step_size, .. } = *k;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
        let decayed = decay(*p);
        *m = (*m * beta1 + 0.0) + (g * one_minus_beta1 + 0.0);
        *v = (*v * beta2 + 0.0) + ((g * g) * one_minus_beta2 + 0.0);
        let denom = (v.sqrt() * inv_sqrt_bc2 + 0.0) * 1.0 + eps;
        *p = decayed - ((*m / denom) * step_size + 0.0);
    }
}

/// Writes zeros over a freshly made zero tensor on the CPU. Its memory comes from calloc,
/// mapped to the kernel's shared zero page until written; the first update reads each moment
/// before writing it, so every page took a copy-on-write fault with a TLB shootdown across the
/// threads: ~1.5 s of SmolLM2's first full fine-tuning step on 2 Zen 3 cores. Written here, the
/// pages fault in once, cheaply, before training starts.
pub fn touch(t: &Tensor) -> Result<()> {
    if !inplace::applies(t) {
        return Ok(());
    }
    with_mut(t, |d: &mut [f32]| {
        d.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0));
        Ok(())
    })
}
