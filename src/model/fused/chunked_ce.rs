//! The fused linear cross-entropy of `linear_ce.rs` for any device and dtype, built from
//! candle's ops (cuBLAS matmuls on a GPU): the (rows × vocab) logits are made a block of rows
//! at a time, the loss and both gradients are computed in that pass, and only the gradients
//! are kept. On a GPU this is what saves the (B·T × 49 152) logits that PyTorch keeps whole.
//! Softmax and loss are computed in f32 (f64 for f64 inputs), whatever the matmuls' dtype.

use candle_core::{DType, Layout, Result, Shape, Tensor};

/// Logits per block on a device: 64 MiB in f32.
const BLOCK_ELEMS: usize = 1 << 24;

/// The summed `weight · NLL` of each row's label under `softmax(h @ wᵀ)`, for `h` (N, C) and
/// `w` (V, C), like `fused::linear_cross_entropy`, on any device. `block_rows` overrides the
/// rows per block (tests use it to cross block edges on small shapes).
pub fn chunked_linear_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    labels: &[u32],
    weights: &[f64],
    block_rows: Option<usize>,
) -> Result<Tensor> {
    let (n, c) = h.dims2()?;
    let v = super::linear_ce::check_shapes(h, w, labels, weights)?;
    let (dev, dt) = (h.device(), h.dtype());
    let acc = if dt == DType::F64 { DType::F64 } else { DType::F32 };
    let (hd, wd) = (h.detach(), w.detach());
    let (want_dh, want_dw) = (h.track_op(), w.track_op());
    let rows: Vec<u32> = (0..n as u32).filter(|&i| weights[i as usize] != 0.0).collect();
    let block = block_rows.unwrap_or(BLOCK_ELEMS / v.max(1)).clamp(1, rows.len().max(1));
    let mut loss = Tensor::zeros((), acc, dev)?;
    let (mut dh_rows, mut dw) = (Vec::new(), None::<Tensor>);
    for ids in rows.chunks(block) {
        let idx = Tensor::new(ids, dev)?;
        let label: Vec<u32> = ids.iter().map(|&i| labels[i as usize]).collect();
        let label = Tensor::new(label, dev)?.unsqueeze(1)?; // (R,) -> (R, 1)
        let weight: Vec<f64> = ids.iter().map(|&i| weights[i as usize]).collect();
        let weight = Tensor::new(weight, dev)?.to_dtype(acc)?.unsqueeze(1)?; // (R,) -> (R, 1)
        let hb = hd.index_select(&idx, 0)?; // (R, C)
        let logits = hb.matmul(&wd.t()?)?.to_dtype(acc)?; // (R, V)
        let shifted = logits.broadcast_sub(&logits.max_keepdim(1)?)?;
        let lse = shifted.exp()?.sum_keepdim(1)?.log()?; // (R, 1)
        let nll = (&lse - shifted.gather(&label, 1)?)?; // (R, 1)
        loss = (loss + (nll * &weight)?.sum_all()?)?;
        if want_dh || want_dw {
            // dL/dlogits = weight · (softmax − onehot(label)), in the matmuls' dtype.
            let d = shifted.broadcast_sub(&lse)?.exp()?.broadcast_mul(&weight)?;
            let d = d.scatter_add(&label, &weight.neg()?, 1)?.to_dtype(dt)?; // (R, V)
            if want_dh {
                dh_rows.push(d.matmul(&wd)?); // (R, V) @ (V, C) -> (R, C)
            }
            if want_dw {
                let part = d.t()?.matmul(&hb)?.to_dtype(acc)?; // (V, R) @ (R, C) -> (V, C)
                dw = Some(match dw {
                    Some(sum) => (sum + part)?,
                    None => part,
                });
            }
        }
    }
    let dh = match (want_dh, dh_rows.is_empty()) {
        (false, _) => None,
        (true, true) => Some(Tensor::zeros((n, c), dt, dev)?),
        (true, false) => {
            let all = Tensor::new(rows.as_slice(), dev)?;
            Some(Tensor::zeros((n, c), dt, dev)?.index_add(&all, &Tensor::cat(&dh_rows, 0)?, 0)?)
        }
    };
    let dw = match (want_dw, dw) {
        (false, _) => None,
        (true, Some(d)) => Some(d.to_dtype(w.dtype())?),
        (true, None) => Some(Tensor::zeros((v, c), w.dtype(), dev)?),
    };
    h.apply_op3(w, &loss.contiguous()?, PrecomputedLoss { dh, dw })
}

/// Forward: a copy of the loss computed above (the third argument). Backward: the gradients
/// computed with it, scaled by the loss's own gradient.
struct PrecomputedLoss {
    dh: Option<Tensor>,
    dw: Option<Tensor>,
}

impl candle_core::CustomOp3 for PrecomputedLoss {
    fn name(&self) -> &'static str {
        "chunked-linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        s: &candle_core::CpuStorage,
        l: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        crate::model::ops::copy_contiguous(s, l)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &super::C,
        _: &Layout,
        _: &super::C,
        _: &Layout,
        s: &super::C,
        l: &Layout,
    ) -> super::CudaOut {
        crate::model::ops::copy_contiguous(s, l)
    }

    fn bwd(
        &self,
        _h: &Tensor,
        _w: &Tensor,
        _loss: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let scale =
            |d: &Option<Tensor>| d.as_ref().map(|d| d.broadcast_mul(&g.to_dtype(d.dtype())?)).transpose();
        Ok((scale(&self.dh)?, scale(&self.dw)?, None))
    }
}
