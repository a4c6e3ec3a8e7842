//! Writing an f32 CPU tensor in place, for the optimizer's passes over parameter-sized
//! tensors (AdamW's update, gradient clipping): candle's tensor ops would make a new tensor
//! the size of the model each time.

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};

/// Whether `t` can be written in place here: f32, contiguous, on the CPU.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Where a tensor's storage lives: equal for tensors that share one.
pub fn storage_addr(t: &Tensor) -> usize {
    let (s, _) = t.storage_and_layout();
    &*s as *const Storage as usize
}

/// The f32 data of a contiguous CPU tensor, to read.
pub fn cpu_f32<'a>(all: &'a [f32], l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("in-place update: tensors must be contiguous"),
    }
}

/// Runs `f` on the f32 data of `t`, under its write lock.
pub fn with_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    t.inplace_op1(&WithMut(RefCell::new(Some(f))))
}

struct WithMut<F>(RefCell<Option<F>>);

impl<F: FnOnce(&mut [f32]) -> Result<()>> candle_core::InplaceOp1 for WithMut<F> {
    fn name(&self) -> &'static str {
        "in-place update"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let Some(f) = self.0.borrow_mut().take() else { candle_core::bail!("in-place op applied twice") };
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("in-place update: not contiguous".into()))?;
        match s {
            CpuStorage::F32(data) => f(&mut data[a..b]),
            _ => candle_core::bail!("in-place update: f32 only"),
        }
    }
}
