//! Gradient buffers that the fused ops' backwards write into, as PyTorch's `.grad`: one per
//! trainable weight, allocated at its first write and written in place from then on (the first
//! write of a step overwrites, later ones add), so a step makes no parameter-sized gradient
//! tensors. Left to candle's backprop, every weight's gradient was a zeroed tensor plus the
//! summed copy (`or_insert`, then `add`), after the op's own fresh one: three buffers the size
//! of the model per step, whose pages the kernel zeroes anew each time, and one more pass.
//!
//! The trainer owns the buffers (`GradSink`) and lends them to its own thread for a step's
//! forward and backward passes (`lend`); ops reach them through `write`, keyed by the weight's
//! `TensorId`. An op whose weight has no buffer lent (evaluation, probing, a frozen weight, a
//! test) returns its gradient to candle as before. After the passes, `drain_into` puts the
//! step's gradients into candle's `GradStore` beside the others, for clipping and the optimizer.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId, Var, WithDType};

/// One weight's gradient buffer: same shape and dtype as the weight, contiguous, on the CPU.
struct Slot {
    weight: Var,
    grad: Option<Tensor>,
    state: State,
}

/// What a buffer holds this step.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Unwritten,
    /// A gradient: the next write adds to it.
    Written,
    /// A gradient [`write_first`] made for a loss gradient of 1, waiting for its [`rescale`].
    /// Nothing may add to it before then: the scale would reach the addition too.
    AwaitingScale,
}

thread_local! {
    /// The buffers lent to this thread for the current step.
    static LENT: RefCell<HashMap<TensorId, Slot>> = RefCell::new(HashMap::new());
}

/// The gradient buffers of a trainer's CPU weights.
pub struct GradSink {
    slots: HashMap<TensorId, Slot>,
}

impl GradSink {
    /// Buffers for those `vars` that are float tensors on the CPU; the rest keep candle's path.
    pub fn new<'a>(vars: impl IntoIterator<Item = &'a Var>) -> Self {
        let cpu_float = |v: &&Var| {
            v.device().is_cpu() && matches!(v.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
        };
        let slots = vars
            .into_iter()
            .filter(cpu_float)
            .map(|v| (v.as_tensor().id(), Slot { weight: v.clone(), grad: None, state: State::Unwritten }))
            .collect();
        Self { slots }
    }

    /// Lends the buffers to this thread until the guard drops; every buffer starts the step
    /// unwritten.
    pub fn lend(&mut self) -> Lent<'_> {
        let ids: Vec<TensorId> = self.slots.keys().copied().collect();
        LENT.with(|l| {
            let mut l = l.borrow_mut();
            for (id, mut slot) in self.slots.drain() {
                slot.state = State::Unwritten;
                l.insert(id, slot);
            }
        });
        Lent { sink: self, ids }
    }

    /// Adds this step's written gradients to `grads`. A weight that also has a gradient from
    /// candle (an op without a buffer reached it too) gets the sum of both. A buffer still
    /// awaiting its scale belongs to a forward whose backward never ran: it holds no gradient.
    pub fn drain_into(&mut self, grads: &mut GradStore) -> Result<()> {
        for slot in self.slots.values_mut() {
            let written = std::mem::replace(&mut slot.state, State::Unwritten) == State::Written;
            let (Some(g), true) = (&slot.grad, written) else { continue };
            let w = slot.weight.as_tensor();
            let total = match grads.remove(w) {
                Some(other) => (g + other)?,
                None => g.clone(),
            };
            grads.insert(w, total);
        }
        Ok(())
    }
}

/// The buffers, lent to the current thread; dropping it gives them back to the `GradSink`.
pub struct Lent<'a> {
    sink: &'a mut GradSink,
    ids: Vec<TensorId>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        LENT.with(|l| {
            let mut l = l.borrow_mut();
            for id in &self.ids {
                if let Some(slot) = l.remove(id) {
                    self.sink.slots.insert(*id, slot);
                }
            }
        });
    }
}

/// Writes the gradient of `weight` into its lent buffer: `f(dst, add)` must set `dst` to the
/// gradient, or add the gradient to it when `add` is true. Returns false, calling nothing,
/// when no buffer is lent for `weight`, or when its buffer awaits a [`rescale`]: the op then
/// returns its gradient to candle, and `drain_into` adds the two.
pub fn write<T: WithDType>(weight: &Tensor, f: impl FnOnce(&mut [T], bool)) -> Result<bool> {
    with_buffer(weight, (|s| s != State::AwaitingScale, State::Written), f)
}

/// Lends `weight`'s buffer to `f` only when nothing has written it yet this step, so `f` may
/// use it as scratch for a gradient it finishes later with [`rescale`]: the loss head makes
/// dL/dw in its forward, before the loss's own gradient is known, and this spares it a
/// buffer of its own (the embedding's size when tied). Returns false, calling nothing,
/// otherwise.
pub fn write_first<T: WithDType>(weight: &Tensor, f: impl FnOnce(&mut [T])) -> Result<bool> {
    with_buffer(weight, (|s| s == State::Unwritten, State::AwaitingScale), |dst, _| f(dst))
}

/// Multiplies the gradient [`write_first`] left in `weight`'s buffer by `k` in place; from then
/// on it is a gradient like any other. Fails if no such gradient waits: the op that made it
/// would lose it.
pub fn rescale<T: WithDType + num_traits::Float + std::ops::MulAssign + Send + Sync>(
    weight: &Tensor,
    k: T,
) -> Result<()> {
    use rayon::prelude::*;
    let scale = |dst: &mut [T], _| {
        dst.par_chunks_mut(1 << 14).for_each(|d| {
            crate::simd::wide(
                #[inline(always)]
                || d.iter_mut().for_each(|x| *x *= k),
            )
        })
    };
    match with_buffer(weight, (|s| s == State::AwaitingScale, State::Written), scale)? {
        true => Ok(()),
        false => candle_core::bail!("gradient buffer: nothing to rescale for weight {:?}", weight.shape()),
    }
}

/// Runs `f(dst, add)` on `weight`'s lent buffer when `when(state)` holds (`add`: it holds a
/// gradient), then moves it to state `then`; false when there is no buffer or `when` refuses.
fn with_buffer<T: WithDType>(
    weight: &Tensor,
    (when, then): (impl FnOnce(State) -> bool, State),
    f: impl FnOnce(&mut [T], bool),
) -> Result<bool> {
    LENT.with(|l| {
        let mut l = l.borrow_mut();
        let Some(slot) = l.get_mut(&weight.id()) else { return Ok(false) };
        if !when(slot.state) {
            return Ok(false);
        }
        if weight.dtype() != T::DTYPE {
            candle_core::bail!("gradient buffer: {:?} for a {:?} weight", T::DTYPE, weight.dtype());
        }
        let grad = match &slot.grad {
            Some(g) => g.clone(),
            None => {
                // Zeroed only because candle allocates that way: a step's first write sets
                // every element without reading it.
                let g = Tensor::zeros(weight.shape(), weight.dtype(), weight.device())?;
                slot.grad = Some(g.clone());
                g
            }
        };
        let add = slot.state == State::Written;
        crate::optim::inplace::with_mut::<T>(&grad, |dst| {
            f(dst, add);
            Ok(())
        })?;
        slot.state = then;
        Ok(true)
    })
}
