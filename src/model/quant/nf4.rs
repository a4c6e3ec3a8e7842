//! NF4 with double quantization, bit for bit as bitsandbytes stores it (QLoRA, arXiv:2305.14314;
//! `bitsandbytes/backends/default/ops.py`, checked in `scripts/reference/nf4_reference.py`).
//!
//! The weight is flattened and cut into blocks of 64 (the last may be short). Each block keeps
//! its absmax; each value becomes the index of the nearest NF4 level of `w / absmax`, two to a
//! byte, the first in the high nibble. The absmaxes are quantized again ("double
//! quantization"): their mean is subtracted and the rest is coded with the signed 8-bit dynamic
//! map in blocks of 256, each with an f32 scale. That is 4 + 8/64 + 32/(64·256) ≈ 4.127 bits a
//! weight. The mean is taken in f64 and rounded: bitsandbytes sums in f32 in torch's order, so
//! its offset may differ by an ulp, which `tests/quant.rs` accounts for.

use candle_core::{DType, Device, Result, Tensor};

/// Values a block of the 4-bit code covers.
pub const BLOCK: usize = 64;
/// Absmaxes a block of the 8-bit scale code covers.
pub const SCALE_BLOCK: usize = 256;

/// The 16 NF4 levels (bitsandbytes' `get_4bit_type("nf4")`).
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// bitsandbytes' `create_dynamic_map(signed=True)` as f32 bits, sorted.
const DYNAMIC_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

pub fn dynamic_code() -> [f32; 256] {
    DYNAMIC_BITS.map(f32::from_bits)
}

/// A quantized weight on the host, in bitsandbytes' four arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Parts {
    /// Two 4-bit codes a byte: ceil(n / 2) bytes.
    pub packed: Vec<u8>,
    /// One 8-bit code per 64-block (bitsandbytes' `absmax` when nested).
    pub absmax_q: Vec<u8>,
    /// One f32 per 256 absmax codes (`nested_absmax`).
    pub nested_absmax: Vec<f32>,
    /// The mean subtracted from the absmaxes (`offset`).
    pub offset: f32,
}

/// bitsandbytes' blockwise quantizer: per block, absmax and the index of the first midpoint of
/// `code` not below `x / absmax` (`torch.bucketize`, right=False).
fn blockwise(x: &[f32], code: &[f32], block: usize) -> (Vec<u8>, Vec<f32>) {
    let bounds: Vec<f32> = code.windows(2).map(|p| (p[0] + p[1]) / 2.0).collect();
    let mut q = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(block));
    for blk in x.chunks(block) {
        let am = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        let inv = 1.0 / am.max(1e-38);
        q.extend(blk.iter().map(|&v| {
            let s = (v * inv).clamp(-1.0, 1.0);
            bounds.partition_point(|&b| b < s) as u8
        }));
    }
    (q, absmax)
}

/// Quantizes a flat weight; `offset` replays a given mean (to compare with bitsandbytes').
pub fn quantize(w: &[f32], offset: Option<f32>) -> Nf4Parts {
    let (codes, absmax) = blockwise(w, &NF4, BLOCK);
    let packed = codes.chunks(2).map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(0)).collect();
    let offset = offset.unwrap_or_else(|| {
        (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len().max(1) as f64) as f32
    });
    let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let (absmax_q, nested_absmax) = blockwise(&centred, &dynamic_code(), SCALE_BLOCK);
    Nf4Parts { packed, absmax_q, nested_absmax, offset }
}

/// The reference dequantization on the host, in bitsandbytes' arithmetic order.
pub fn dequantize(p: &Nf4Parts, n: usize) -> Vec<f32> {
    let dynamic = dynamic_code();
    let absmax: Vec<f32> = p
        .absmax_q
        .iter()
        .enumerate()
        .map(|(b, &q)| dynamic[q as usize] * p.nested_absmax[b / SCALE_BLOCK] + p.offset)
        .collect();
    (0..n)
        .map(|i| {
            let byte = p.packed[i / 2];
            let code = if i % 2 == 0 { byte >> 4 } else { byte & 0xF };
            NF4[code as usize] * absmax[i / BLOCK]
        })
        .collect()
}

/// An NF4 weight on a device, dequantized there with candle's ops (table lookups and
/// broadcast products), so the same code serves the CPU and CUDA.
#[derive(Debug, Clone)]
pub struct Nf4Tensor {
    dims: (usize, usize),
    /// (blocks · 32,) u8: the codes, padded to whole blocks.
    packed: Tensor,
    /// (groups · 256,) u8: the scale codes, padded to whole groups.
    absmax_q: Tensor,
    /// (groups, 1) f32
    nested: Tensor,
    offset: f32,
    /// (256, 2) f32: a byte's two NF4 values, high nibble first.
    pairs: Tensor,
    /// (256,) f32: the dynamic map.
    dynamic: Tensor,
}

impl Nf4Tensor {
    pub fn new(p: &Nf4Parts, dims: (usize, usize), dev: &Device) -> Result<Self> {
        let n = dims.0 * dims.1;
        let blocks = n.div_ceil(BLOCK);
        if p.absmax_q.len() != blocks || p.packed.len() != n.div_ceil(2) {
            candle_core::bail!(
                "NF4 weight of shape {dims:?}: {} code bytes and {} scales, expected {} and {blocks}",
                p.packed.len(),
                p.absmax_q.len(),
                n.div_ceil(2)
            );
        }
        let groups = blocks.div_ceil(SCALE_BLOCK);
        if p.nested_absmax.len() != groups {
            candle_core::bail!("NF4 weight: {} nested scales, expected {groups}", p.nested_absmax.len());
        }
        let mut packed = p.packed.clone();
        packed.resize(blocks * BLOCK / 2, 0);
        let mut absmax_q = p.absmax_q.clone();
        absmax_q.resize(groups * SCALE_BLOCK, 0);
        let pairs: Vec<f32> = (0..256).flat_map(|b| [NF4[b >> 4], NF4[b & 0xF]]).collect();
        Ok(Self {
            dims,
            packed: Tensor::from_vec(packed, blocks * BLOCK / 2, dev)?,
            absmax_q: Tensor::from_vec(absmax_q, groups * SCALE_BLOCK, dev)?,
            nested: Tensor::from_vec(p.nested_absmax.clone(), (groups, 1), dev)?,
            offset: p.offset,
            pairs: Tensor::from_vec(pairs, (256, 2), dev)?,
            dynamic: Tensor::from_vec(dynamic_code().to_vec(), 256, dev)?,
        })
    }

    pub fn quantize(w: &Tensor) -> Result<Self> {
        let dims = w.dims2()?;
        let flat = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Self::new(&quantize(&flat, None), dims, w.device())
    }

    pub fn dims(&self) -> (usize, usize) {
        self.dims
    }

    pub fn device(&self) -> Device {
        self.packed.device().clone()
    }

    /// Bytes of bitsandbytes' format (codes, scale codes, nested scales, the offset); ours
    /// adds at most one block and one group of padding.
    pub fn bytes(&self) -> usize {
        let n = self.dims.0 * self.dims.1;
        n.div_ceil(2) + n.div_ceil(BLOCK) + 4 * self.nested.elem_count() + 4
    }

    /// The f32 weight (out, in), with bitsandbytes' arithmetic: the same bits as [`dequantize`].
    /// The codes are widened to u32 for the lookups: candle's `index_select` reads an id equal
    /// to its type's maximum (u8 255, a real code here) as "no row" and gives zeros.
    pub fn dequantize(&self) -> Result<Tensor> {
        if self.packed.device().is_cpu() {
            return self.dequantize_cpu();
        }
        #[cfg(feature = "cuda")]
        if self.packed.device().is_cuda() {
            let op = CudaDequant {
                nested: self.nested.clone(),
                dynamic: self.dynamic.clone(),
                offset: self.offset,
                n: self.dims.0 * self.dims.1,
            };
            // (n,) -> (out, in)
            return self.packed.apply_op2_no_bwd(&self.absmax_q, &op)?.reshape(self.dims);
        }
        self.dequantize_composed()
    }

    /// [`Self::dequantize`] from candle's ops, as a GPU runs it (tested on the CPU too).
    pub fn dequantize_composed(&self) -> Result<Tensor> {
        let (groups, blocks) = (self.nested.dim(0)?, self.packed.dim(0)? * 2 / BLOCK);
        let n = self.dims.0 * self.dims.1;
        // (groups·256,) -> (groups, 256) -> (blocks, 1)
        let absmax = self
            .dynamic
            .index_select(&self.absmax_q.to_dtype(DType::U32)?, 0)?
            .reshape((groups, SCALE_BLOCK))?;
        let absmax = absmax.broadcast_mul(&self.nested)?.flatten_all()?.narrow(0, 0, blocks)?;
        let absmax = (absmax + self.offset as f64)?.reshape((blocks, 1))?;
        // (bytes,) -> (bytes, 2) -> (blocks, 64) -> (n,) -> (out, in)
        let w = self.pairs.index_select(&self.packed.to_dtype(DType::U32)?, 0)?.reshape((blocks, BLOCK))?;
        w.broadcast_mul(&absmax)?.flatten_all()?.narrow(0, 0, n)?.reshape(self.dims)
    }

    /// The same arithmetic in one pass over the blocks, in parallel: on the CPU the lookups
    /// above cost more than the matmul they feed.
    fn dequantize_cpu(&self) -> Result<Tensor> {
        use rayon::prelude::*;
        let n = self.dims.0 * self.dims.1;
        let (ps, pl) = self.packed.storage_and_layout();
        let (qs, ql) = self.absmax_q.storage_and_layout();
        let (ns, nl) = self.nested.storage_and_layout();
        let (candle_core::Storage::Cpu(ps), candle_core::Storage::Cpu(qs), candle_core::Storage::Cpu(ns)) =
            (&*ps, &*qs, &*ns)
        else {
            candle_core::bail!("NF4: CPU storage expected");
        };
        let packed = &ps.as_slice::<u8>()?[pl.start_offset()..];
        let absmax_q = &qs.as_slice::<u8>()?[ql.start_offset()..];
        let nested = &ns.as_slice::<f32>()?[nl.start_offset()..];
        let dynamic = dynamic_code();
        let mut out = vec![0f32; n.div_ceil(BLOCK) * BLOCK];
        out.par_chunks_mut(BLOCK).enumerate().for_each(|(b, dst)| {
            let absmax = dynamic[absmax_q[b] as usize] * nested[b / SCALE_BLOCK] + self.offset;
            for (i, byte) in packed[b * BLOCK / 2..(b + 1) * BLOCK / 2].iter().enumerate() {
                dst[2 * i] = NF4[(byte >> 4) as usize] * absmax;
                dst[2 * i + 1] = NF4[(byte & 0xF) as usize] * absmax;
            }
        });
        out.truncate(n);
        Tensor::from_vec(out, self.dims, &Device::Cpu)
    }
}

/// NF4 dequantization in one CUDA kernel (`whet_nf4_dequant` in `fused/kernels.cu`), over the
/// codes and scale codes; the nested scales and the dynamic map ride along.
#[cfg(feature = "cuda")]
struct CudaDequant {
    nested: Tensor,
    dynamic: Tensor,
    offset: f32,
    n: usize,
}

#[cfg(feature = "cuda")]
impl candle_core::CustomOp2 for CudaDequant {
    fn name(&self) -> &'static str {
        "nf4-dequant"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("nf4-dequant: the CUDA kernel runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        ps: &candle_core::CudaStorage,
        pl: &candle_core::Layout,
        qs: &candle_core::CudaStorage,
        ql: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let (ns, nl) = self.nested.storage_and_layout();
        let (ds, dl) = self.dynamic.storage_and_layout();
        let (candle_core::Storage::Cuda(ns), candle_core::Storage::Cuda(ds)) = (&*ns, &*ds) else {
            candle_core::bail!("nf4-dequant: scales not on CUDA");
        };
        let out = crate::model::fused::cuda::nf4_dequant(
            (ps, pl),
            (qs, ql),
            (ns, nl),
            (ds, dl),
            self.offset,
            self.n,
        )?;
        Ok((out, candle_core::Shape::from(self.n)))
    }
}
