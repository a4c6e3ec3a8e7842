//! Frozen quantized base weights for QLoRA, and the differentiable linear over them.
//!
//! A base projection is held quantized: bitsandbytes' NF4 (`nf4.rs`), or one of GGUF's types
//! in a candle `QTensor`. `quant_linear` runs `y = x Wᵀ` by dequantizing W for the product and
//! dropping it after, as bitsandbytes' `matmul_4bit` does for batches; its backward dequantizes
//! again and returns dL/dx only. So one layer's float weight exists at a time, forward or
//! backward, and the base gets no gradient. candle's `QMatMul` is not used: it has no backward
//! and quantizes the activations to 8 bits, which dense LoRA on the dequantized base does not.

pub mod nf4;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

pub use nf4::Nf4Tensor;

/// What `method.quant` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum QuantKind {
    /// A GGUF base keeps the types it was saved with.
    Keep,
    Nf4,
    Ggml(GgmlDType),
}

/// GGUF types by the names llama.cpp's tools use, lower-case.
const GGML_NAMES: &[(&str, GgmlDType)] = &[
    ("q4_0", GgmlDType::Q4_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q8_0", GgmlDType::Q8_0),
    ("q2k", GgmlDType::Q2K),
    ("q3k", GgmlDType::Q3K),
    ("q4k", GgmlDType::Q4K),
    ("q5k", GgmlDType::Q5K),
    ("q6k", GgmlDType::Q6K),
];

impl QuantKind {
    pub const NAMES: &'static [&'static str] =
        &["keep", "nf4", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2k", "q3k", "q4k", "q5k", "q6k"];

    pub fn name(&self) -> String {
        match self {
            Self::Keep => "keep".into(),
            Self::Nf4 => "nf4".into(),
            Self::Ggml(t) => ggml_name(*t),
        }
    }
}

pub fn ggml_name(t: GgmlDType) -> String {
    GGML_NAMES.iter().find(|(_, d)| *d == t).map(|(n, _)| n.to_string()).unwrap_or(format!("{t:?}"))
}

impl std::str::FromStr for QuantKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        // "q4_k" and "Q4_K_M"-style spellings name the same block types.
        let norm = s.to_ascii_lowercase().replace("_k", "k");
        let norm = norm.trim_end_matches("_m").trim_end_matches("_s");
        match norm {
            "keep" => return Ok(Self::Keep),
            "nf4" => return Ok(Self::Nf4),
            _ => {}
        }
        GGML_NAMES.iter().find(|(n, _)| *n == norm).map(|(_, t)| Self::Ggml(*t)).ok_or_else(|| {
            let hint = crate::spelling::did_you_mean(s, Self::NAMES);
            format!("unknown quant type {s:?} (one of {}){hint}", Self::NAMES.join(", "))
        })
    }
}

impl TryFrom<String> for QuantKind {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<QuantKind> for String {
    fn from(k: QuantKind) -> String {
        k.name()
    }
}

/// A frozen quantized weight (out, in). Cheap to clone: the data is shared.
#[derive(Clone)]
pub enum QWeight {
    Ggml(Arc<QTensor>),
    Nf4(Arc<Nf4Tensor>),
}

impl std::fmt::Debug for QWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QWeight({}, {:?})", self.type_name(), self.dims())
    }
}

/// Quantized base weights under their HF names (`model.layers.0.self_attn.q_proj.weight`).
pub type QuantWeights = HashMap<String, QWeight>;

impl QWeight {
    /// Quantizes a float weight (out, in) as `kind` on its device; `name` is for errors.
    pub fn quantize(w: &Tensor, kind: QuantKind, name: &str) -> Result<Self> {
        match kind {
            QuantKind::Nf4 => Ok(Self::Nf4(Arc::new(Nf4Tensor::quantize(w)?))),
            QuantKind::Ggml(t) => {
                check_blocks(w.dims2()?.1, t, name)?;
                let w = w.to_dtype(DType::F32)?;
                Ok(Self::Ggml(Arc::new(QTensor::quantize_onto(&w, t, w.device())?)))
            }
            QuantKind::Keep => candle_core::bail!("{name}: \"keep\" applies to a GGUF base only"),
        }
    }

    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::Ggml(q) => q.shape().dims2().unwrap_or((0, 0)),
            Self::Nf4(q) => q.dims(),
        }
    }

    pub fn type_name(&self) -> String {
        match self {
            Self::Ggml(q) => ggml_name(q.dtype()),
            Self::Nf4(_) => "nf4".into(),
        }
    }

    /// Bytes the quantized data holds.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Ggml(q) => q.storage_size_in_bytes(),
            Self::Nf4(q) => q.bytes(),
        }
    }

    /// The float weight (out, in) on the weight's device.
    pub fn dequantize(&self) -> Result<Tensor> {
        match self {
            Self::Ggml(q) => q.dequantize(&q.device()),
            Self::Nf4(q) => q.dequantize(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Self::Ggml(q) => q.device(),
            Self::Nf4(q) => q.device(),
        }
    }
}

/// A GGUF type blocks each row: `in_features` must be a multiple of its block size.
pub fn check_blocks(in_features: usize, t: GgmlDType, name: &str) -> Result<()> {
    let block = t.block_size();
    if !in_features.is_multiple_of(block) {
        candle_core::bail!(
            "{name}: in_features {in_features} is not a multiple of {}'s block size {block}; \
             choose a type with smaller blocks (q8_0, q4_0: 32) or nf4",
            ggml_name(t)
        );
    }
    Ok(())
}

/// A frozen base weight (out, in): a float tensor, or a quantized one dequantized each time
/// it is used (so no layer's float copy outlives its product).
#[derive(Debug, Clone)]
pub enum Frozen {
    Dense(Tensor),
    Quant(QWeight),
}

impl Frozen {
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Frozen::Dense(w) => w.dims2(),
            Frozen::Quant(q) => Ok(q.dims()),
        }
    }

    /// The float weight (out, in): the held tensor as it is, or a fresh dequantization in
    /// `dtype`.
    pub fn weight(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Frozen::Dense(w) => Ok(w.clone()),
            Frozen::Quant(q) => q.dequantize()?.to_dtype(dtype),
        }
    }
}

/// `x Wᵀ` over a frozen quantized W, in `x`'s dtype: (…, in) -> (…, out). The backward gives
/// dL/dx = g W, dequantizing W again; W gets nothing (`ops::frozen_base_linear`).
pub fn quant_linear(x: &Tensor, w: &QWeight) -> Result<Tensor> {
    crate::model::ops::frozen_base_linear(x, &Frozen::Quant(w.clone()))
}
