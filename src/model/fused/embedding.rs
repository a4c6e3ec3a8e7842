//! A trainable embedding lookup whose backward adds each token's gradient row straight into
//! the table's gradient buffer (`grad_sink`). candle's `index_select` backward zeroes a
//! table-sized gradient and `index_add`s into a copy of it: two fresh buffers the size of the
//! vocabulary × hidden (113 MB for SmolLM2) per step, plus a sum with the tied lm_head's.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};

use super::{data, held, Out, S};

/// Rows `ids` (…) of `w` (V, C): (…) -> (…, C). Gradients reach `w`.
pub fn embedding(ids: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (v, c) = w.dims2()?;
    let flat: Vec<u32> = ids.flatten_all()?.to_dtype(candle_core::DType::U32)?.to_vec1()?;
    if let Some(bad) = flat.iter().find(|&&i| i as usize >= v) {
        candle_core::bail!("token id {bad} is outside the embedding table of {v} rows");
    }
    let mut dims = ids.dims().to_vec();
    dims.push(c);
    // (N, C) -> (…, C)
    w.contiguous()?.apply_op1(Embedding { ids: flat })?.reshape(dims)
}

struct Embedding {
    /// The flattened token ids, each checked below the table's row count.
    ids: Vec<u32>,
}

impl CustomOp1 for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn cpu_fwd(&self, ws: &S, wl: &Layout) -> Out {
        let c = wl.shape().dims2()?.1;
        let out = float_op!("embedding", [(w, ws, wl)], |T| {
            let mut x = Vec::<T>::with_capacity(self.ids.len() * c); // (N, C)
            for &i in &self.ids {
                x.extend_from_slice(&w[i as usize * c..(i as usize + 1) * c]);
            }
            x
        });
        Ok((out, Shape::from((self.ids.len(), c))))
    }

    /// dW[ids[n]] += g[n], in token order (as candle's `index_add`).
    fn bwd(&self, w: &Tensor, _x: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.detach().contiguous()?;
        let (gs, gl) = g.storage_and_layout();
        macro_rules! go {
            ($t:ty) => {
                self.grad::<$t>(held::<$t>(&gs, gl)?, w)
            };
        }
        match w.dtype() {
            candle_core::DType::F32 => go!(f32),
            candle_core::DType::F64 => go!(f64),
            dt => candle_core::bail!("embedding: f32 or f64 only, not {dt:?}"),
        }
    }
}

impl Embedding {
    /// The table's gradient from `g` (N, C): into its buffer when one is lent, else a tensor.
    fn grad<T: WithDType>(&self, g: &[T], w: &Tensor) -> Result<Option<Tensor>> {
        let c = w.dims2()?.1;
        let add_rows = |dst: &mut [T], add: bool| {
            if !add {
                dst.iter_mut().for_each(|x| *x = T::zero());
            }
            for (row, &i) in g.chunks(c).zip(&self.ids) {
                let d = &mut dst[i as usize * c..(i as usize + 1) * c];
                d.iter_mut().zip(row).for_each(|(d, &r)| *d += r);
            }
        };
        if crate::model::grad_sink::write(w, add_rows)? {
            return Ok(None);
        }
        let mut dw = vec![T::zero(); w.elem_count()];
        add_rows(&mut dw, true);
        Ok(Some(Tensor::from_vec(dw, w.shape(), w.device())?))
    }
}
