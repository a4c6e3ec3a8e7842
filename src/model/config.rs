//! The internal model config: what the Llama-family forward pass needs, nothing more.
//! File formats (HF `config.json`, GGUF metadata) are parsed at the boundary, in `crate::load`,
//! and converted to this.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// How the rotary embedding pairs up the channels of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopeLayout {
    /// HF / GPT-NeoX: channel i pairs with i + hs/2 (`rotate_half`).
    Half,
    /// Meta / GGUF: channel 2i pairs with 2i + 1.
    Interleaved,
}

/// Llama 3.1 style frequency scaling (`rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_layout: RopeLayout,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2 puts a bias on q, k and v.
    pub attention_bias: bool,
    /// Bias on o_proj (rare; some Llama derivatives).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// How the forward and backward are computed; not a property of the weights.
    pub kernels: Kernels,
    /// The dtype of the forward's weights, activations and matmuls (`[run] dtype`).
    pub precision: Precision,
}

/// The arithmetic of a forward pass. `Bf16` is mixed precision: weights are cast to bf16 where
/// they are used (the trainable ones stay f32 master copies, which the optimizer updates with
/// f32 moments), activations and matmuls are bf16, and softmax, norms and the loss are computed
/// in f32 (the kernels) or upcast (the composed ops). Logits leave the model as f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// The weights' own dtype (f32, or f64 in gradient checks).
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// The dtype activations are computed in, when it is not the weights' own.
    pub fn compute_dtype(self) -> Option<candle_core::DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(candle_core::DType::BF16),
        }
    }

    /// `w` in the compute dtype: a differentiable cast, so a trainable f32 master weight gets
    /// its gradient back in f32.
    pub fn cast(self, w: &Tensor) -> candle_core::Result<Tensor> {
        match self.compute_dtype() {
            Some(dt) => w.to_dtype(dt),
            None => Ok(w.clone()),
        }
    }

    /// A weight as a layer keeps it: frozen weights (no Var behind them) are cast once here;
    /// trainable ones stay in their master dtype and are cast at each use by [`Self::cast`].
    pub fn keep(self, w: Tensor) -> candle_core::Result<Tensor> {
        if w.is_variable() {
            Ok(w)
        } else {
            self.cast(&w)
        }
    }
}

/// Which kernels compute attention probabilities, RMSNorm, SwiGLU, rope, LoRA projections and
/// the loss head (and, in the trainer, AdamW's update), as HF's `attn_implementation` chooses
/// one: the same mathematics in a different arithmetic order, so results agree to the last
/// bits only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// Fused kernels with fused backwards on the CPU (`model::fused`); composed elsewhere.
    #[default]
    Fused,
    /// Composed from candle's primitives, as whet computed before the fused kernels: the
    /// reference they are tested against, and the way to reproduce an older run's numbers.
    Composed,
}

/// The largest vocabulary whet takes (a model's, or a tokenizer it trains).
pub const MAX_VOCAB: usize = 1 << 22;
/// The largest declared context whet takes. The rotary table is built for at most
/// [`ROPE_TABLE`] positions whatever the model declares.
pub const MAX_CONTEXT: usize = 1 << 24;
/// Positions the rotary table covers at load: a run or a probe needs far fewer.
pub const ROPE_TABLE: usize = 1 << 16;

impl Config {
    /// Checks the numbers agree with each other, so a bad config fails here with a message
    /// instead of as a shape error deep in the forward pass.
    pub fn validate(&self) -> Result<(), String> {
        let pos = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in pos {
            if v == 0 {
                return Err(format!("{name} must be > 0"));
            }
        }
        // Valid numbers can still be absurd: each is checked against a stated limit before
        // anything is sized by it, so a bad file is an error, not a 140 TB allocation.
        let limits = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            ("num_key_value_heads", self.num_key_value_heads, 1 << 10),
            ("head_dim", self.head_dim, 1 << 12),
            ("max_position_embeddings", self.max_position_embeddings, MAX_CONTEXT),
        ];
        for (name, v, max) in limits {
            if v > max {
                return Err(format!("{name} = {v} is over whet's limit of {max}"));
            }
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!("rms_norm_eps ({}) must be a positive number", self.rms_norm_eps));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim ({}) must be even for rotary embeddings", self.head_dim));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta ({}) must be a positive number", self.rope_theta));
        }
        Ok(())
    }
}
