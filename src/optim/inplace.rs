//! Writing a CPU tensor in place, for the passes over parameter-sized tensors (AdamW's update,
//! gradient clipping, the gradient buffers of `model::grad_sink`): candle's tensor ops would
//! make a new tensor the size of the model each time.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor, WithDType};

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

/// Runs `f` on the data of `t` as `&mut [T]`, under its write lock: a contiguous CPU tensor
/// of dtype `T`, f32 or f64.
pub fn with_mut<T: WithDType>(t: &Tensor, f: impl FnOnce(&mut [T]) -> Result<()>) -> Result<()> {
    t.inplace_op1(&WithMut(RefCell::new(Some(f)), PhantomData))
}

struct WithMut<T, F>(RefCell<Option<F>>, PhantomData<T>);

impl<T: WithDType, F: FnOnce(&mut [T]) -> Result<()>> candle_core::InplaceOp1 for WithMut<T, F> {
    fn name(&self) -> &'static str {
        "in-place update"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let Some(f) = self.0.borrow_mut().take() else { candle_core::bail!("in-place op applied twice") };
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("in-place update: not contiguous".into()))?;
        let data: &mut dyn Any = match s {
            CpuStorage::F32(d) => d,
            CpuStorage::F64(d) => d,
            _ => candle_core::bail!("in-place update: f32 or f64 only"),
        };
        match data.downcast_mut::<Vec<T>>() {
            Some(d) => f(&mut d[a..b]),
            None => candle_core::bail!("in-place update: the storage is not {:?}", T::DTYPE),
        }
    }
}
