//! The Llama family: Llama 2/3, Mistral, Qwen2, SmolLM2, TinyLlama.
//!
//! Paper: "LLaMA: Open and Efficient Foundation Language Models" (Touvron et al., 2023).
//! Reference code: HF transformers `models/llama/modeling_llama.py`.
//!
//!   x = embed(ids)
//!   for each block:  x = x + attn(rms_norm(x));  x = x + mlp(rms_norm(x))
//!   logits = lm_head(rms_norm(x))
//!
//! Every op here is differentiable (see `ops.rs`), so this one model serves probing,
//! generation and training. Shapes: B batch, T tokens, C hidden, nh query heads,
//! nkv key/value heads, hs head size, V vocab.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::config::{Config, Kernels, Precision};
pub use super::kv_cache::KvCache;
use super::kv_cache::{cached, LayerCache};
use super::lora::{Adapters, Proj};
use super::ops::{self, Dropout, Rope};

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    kernels: Kernels,
    precision: Precision,
}

impl RmsNorm {
    pub fn load(vb: VarBuilder, size: usize, cfg: &Config) -> Result<Self> {
        let weight = cfg.precision.keep(vb.get(size, "weight")?)?;
        Ok(Self { weight, eps: cfg.rms_norm_eps, kernels: cfg.kernels, precision: cfg.precision })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, &self.precision.cast(&self.weight)?, self.eps, self.kernels)
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    kernels: Kernels,
}

impl Attention {
    pub fn load(vb: VarBuilder, cfg: &Config, ad: Option<&Adapters>) -> Result<Self> {
        let (c, hs) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let proj = |name: &str, d_in, d_out, bias| Proj::load(vb.pp(name), d_in, d_out, bias, name, ad, cfg);
        Ok(Self {
            q_proj: proj("q_proj", c, nh * hs, cfg.attention_bias)?,
            k_proj: proj("k_proj", c, nkv * hs, cfg.attention_bias)?,
            v_proj: proj("v_proj", c, nkv * hs, cfg.attention_bias)?,
            o_proj: proj("o_proj", nh * hs, c, cfg.o_bias)?,
            kernels: cfg.kernels,
            n_head: nh,
            n_kv_head: nkv,
            head_dim: hs,
        })
    }

    /// `residual + attention(x)`: o_proj makes the sum (`Proj::forward_add`).
    pub fn forward(
        &self,
        x: &Tensor,
        residual: &Tensor,
        rope: &Rope,
        pos: usize,
        cache: Option<&mut LayerCache>,
        mut drop: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t, _c) = x.dims3()?;
        let (nh, nkv, hs) = (self.n_head, self.n_kv_head, self.head_dim);
        let scale = 1.0 / (hs as f64).sqrt();
        let dropout = drop.as_deref().is_some_and(|d| d.attention > 0.0);
        if !dropout && ops::fused_on_cpu(self.kernels, &[x]) {
            // One op over the heads as the projections lay them out, (B, T, n*hs): no
            // transposes, and fewer graph nodes. q and k come out rotated.
            let q = self.q_proj.forward_rope(x, (rope, pos, hs), drop.as_deref_mut())?; // (B, T, nh*hs)
            let k = self.k_proj.forward_rope(x, (rope, pos, hs), drop.as_deref_mut())?; // (B, T, nkv*hs)
            let v = self.v_proj.forward_t(x, drop.as_deref_mut())?;
            let (k, v) = cached(cache, k, v.contiguous()?, 1)?; // (B, T_all, nkv*hs)
            let y = super::fused::attention(&q, &k, &v, (nh, nkv), scale, k.dim(1)? - t)?;
            return self.o_proj.forward_add(&y, residual, drop); // y: (B, T, nh*hs)
        }
        let q = self.q_proj.forward_t(x, drop.as_deref_mut())?; // (B, T, nh*hs)
        let k = self.k_proj.forward_t(x, drop.as_deref_mut())?; // (B, T, nkv*hs)
        let v = self.v_proj.forward_t(x, drop.as_deref_mut())?;
        // (B, T, n*hs) -> (B, n, T, hs)
        let q = q.reshape((b, t, nh, hs))?.transpose(1, 2)?;
        let k = k.reshape((b, t, nkv, hs))?.transpose(1, 2)?;
        let v = v.reshape((b, t, nkv, hs))?.transpose(1, 2)?;
        let q = rope.apply(&q.contiguous()?, pos)?;
        let k = rope.apply(&k.contiguous()?, pos)?;
        let (k, v) = cached(cache, k, v.contiguous()?, 2)?; // (B, nkv, T_all, hs)
        let t_all = k.dim(2)?;
        let k = repeat_kv(&k, nh / nkv)?; // (B, nh, T_all, hs)
        let v = repeat_kv(&v, nh / nkv)?;
        let scores = q.matmul(&k.t()?)?; // (B, nh, T, T_all)
        let att = ops::causal_softmax(&scores, scale, t_all - t, self.kernels)?;
        let att = match drop.as_deref_mut() {
            Some(d) => d.apply(&att, d.attention)?, // HF's attention_dropout
            None => att,
        };
        let y = att.matmul(&v)?; // (B, nh, T, hs)
        let y = y.transpose(1, 2)?.reshape((b, t, nh * hs))?; // (B, nh, T, hs) -> (B, T, nh*hs)
        self.o_proj.forward_add(&y, residual, drop)
    }
}

/// GQA: each key/value head serves `n_rep` query heads.
fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, nkv, t, hs) = x.dims4()?;
    // (B, nkv, T, hs) -> (B, nkv, n_rep, T, hs) -> (B, nkv*n_rep, T, hs)
    x.unsqueeze(2)?.expand((b, nkv, n_rep, t, hs))?.reshape((b, nkv * n_rep, t, hs))
}

#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
    kernels: Kernels,
}

impl Mlp {
    pub fn load(vb: VarBuilder, cfg: &Config, ad: Option<&Adapters>) -> Result<Self> {
        let (c, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        let proj = |name: &str, d_in, d_out| Proj::load(vb.pp(name), d_in, d_out, bias, name, ad, cfg);
        Ok(Self {
            gate_proj: proj("gate_proj", c, i)?,
            up_proj: proj("up_proj", c, i)?,
            down_proj: proj("down_proj", i, c)?,
            kernels: cfg.kernels,
        })
    }

    /// `residual + mlp(x)`: down_proj makes the sum. Plain trainable projections on the CPU run
    /// as two ops whose backward makes SwiGLU's output again (`fused::swiglu_down_add`).
    pub fn forward(&self, x: &Tensor, residual: &Tensor, mut drop: Option<&mut Dropout>) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.plain_trainable(&[x]), self.up_proj.plain_trainable(&[x]));
        if let (Some(wg), Some(wu), Some(wd)) = (gate, up, self.down_proj.plain_trainable(&[x, residual])) {
            let gu = super::fused::gate_up(x, wg, wu)?; // (B, T, 2I): gate | up
            return super::fused::swiglu_down_add(&gu, wd, residual);
        }
        let g = self.gate_proj.forward_t(x, drop.as_deref_mut())?;
        let h = ops::swiglu(&g, &self.up_proj.forward_t(x, drop.as_deref_mut())?, self.kernels)?;
        self.down_proj.forward_add(&h, residual, drop)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    pub fn load(vb: VarBuilder, cfg: &Config, ad: Option<&Adapters>) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(Self {
            input_layernorm: RmsNorm::load(vb.pp("input_layernorm"), c, cfg)?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg, ad.map(|a| a.pp("self_attn")).as_ref())?,
            post_attention_layernorm: RmsNorm::load(vb.pp("post_attention_layernorm"), c, cfg)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg, ad.map(|a| a.pp("mlp")).as_ref())?,
        })
    }

    /// The block's seven projections, attention's then the MLP's.
    fn projs_mut(&mut self) -> [&mut Proj; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        pos: usize,
        cache: Option<&mut LayerCache>,
        mut drop: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        // x + attention(norm(x)), then x + mlp(norm(x)): each sum made by the last projection.
        let h = self.input_layernorm.forward(x)?;
        let x = self.self_attn.forward(&h, x, rope, pos, cache, drop.as_deref_mut())?;
        self.mlp.forward(&self.post_attention_layernorm.forward(&x)?, &x, drop)
    }
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub(super) embed_tokens: Embedding,
    pub(super) layers: Vec<Block>,
    pub(super) norm: RmsNorm,
    lm_head: Proj,
    pub(super) rope: Rope,
    pub(super) cfg: Config,
}

impl Llama {
    /// Loads from HF-named weights (`model.embed_tokens.weight`, `model.layers.N.…`, `lm_head.weight`).
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Self::load_with_adapters(vb, cfg, None)
    }

    /// As `load`, with LoRA adapters on the targeted projections.
    pub fn load_with_adapters(vb: VarBuilder, cfg: &Config, ad: Option<&Adapters>) -> Result<Self> {
        if let Err(e) = cfg.validate() {
            candle_core::bail!("invalid model config: {e}");
        }
        let m = vb.pp("model");
        let embed = m.pp("embed_tokens").get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let path = format!("model.layers.{i}");
                Block::load(vb.pp(&path), cfg, ad.map(|a| a.pp(&path)).as_ref())
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(m.pp("norm"), cfg.hidden_size, cfg)?;
        let embed = cfg.precision.keep(embed)?;
        let lm_head = if cfg.tie_word_embeddings {
            Proj::plain(embed.clone(), cfg.precision)?
        } else {
            Proj::plain(vb.pp("lm_head").get((cfg.vocab_size, cfg.hidden_size), "weight")?, cfg.precision)?
        };
        // Sized by what can be used, not by what a file declares (2^40 is a valid number).
        let rope =
            Rope::new(cfg, cfg.max_position_embeddings.clamp(1, super::config::ROPE_TABLE), vb.device())?;
        Ok(Self {
            embed_tokens: Embedding::new(embed, cfg.hidden_size),
            layers,
            norm,
            lm_head,
            rope,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Readies a model that only infers (probe, generate, score): each frozen projection with
    /// no adapter keeps its weight transposed on the CPU (`Proj::inference_layout`).
    pub fn inference_layout(&mut self) -> Result<()> {
        self.layers.iter_mut().flat_map(Block::projs_mut).try_for_each(Proj::inference_layout)
    }

    pub fn embed_device(&self) -> candle_core::Device {
        self.embed_tokens.embeddings().device().clone()
    }

    /// Positions the rotary table covers (the model's context length).
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// Logits for every position: `ids` (B, T) u32 -> (B, T, V).
    /// With a cache, `ids` are the new tokens after `cache.len()` cached positions.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden(ids, cache, None)?; // (B, T, C)
        self.logits(&self.lm_head.forward(&self.norm.forward(&x)?)?)
    }

    /// Logits as they leave the model: f32 when the forward ran in bf16, else as computed.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        match self.cfg.precision.compute_dtype() {
            Some(_) => x.to_dtype(candle_core::DType::F32),
            None => Ok(x.clone()),
        }
    }

    /// Logits of the last position only, (B, V): generation needs no more.
    pub fn forward_last(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let x = self.hidden(ids, Some(cache), None)?;
        let t = x.dim(1)?;
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?; // (B, T, C) -> (B, C)
        self.logits(&self.lm_head.forward(&self.norm.forward(&last)?)?)
    }

    /// Training forward: the summed next-token NLL of `ids` (B, T) and the number of counted
    /// labels (see `ops::causal_lm_nll_sum`), with dropout drawn from `drop`.
    pub fn train_nll_sum(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        drop: &mut Dropout,
    ) -> Result<(Tensor, f64)> {
        let x = self.norm.forward(&self.hidden(ids, None, Some(drop))?)?; // (B, T, C)
        self.nll_sum(&x, ids, mask, true)
    }

    /// As `train_nll_sum` for evaluation: no dropout, and no gradient is made.
    pub fn eval_nll_sum(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, f64)> {
        let x = self.norm.forward(&self.hidden(ids, None, None)?)?; // (B, T, C)
        self.nll_sum(&x, ids, mask, false)
    }

    /// The loss head. With the fused kernel the (B, T, V) logits are never made whole; without
    /// `grad` it computes no gradient.
    pub(super) fn nll_sum(
        &self,
        x: &Tensor,
        ids: &Tensor,
        mask: Option<&Tensor>,
        grad: bool,
    ) -> Result<(Tensor, f64)> {
        if self.cfg.kernels == Kernels::Fused {
            let lm_head = self
                .lm_head
                .weight()
                .ok_or_else(|| candle_core::Error::Msg("lm_head is quantized".into()))?;
            let w = self.cfg.precision.cast(lm_head)?;
            if x.dtype() == w.dtype() {
                // Detached, the kernel makes no gradient.
                let (x, w) = if grad { (x.clone(), w) } else { (x.detach(), w.detach()) };
                return ops::causal_lm_nll_sum_fused(&x, &w, ids, mask);
            }
        }
        let logits = self.logits(&self.lm_head.forward(x)?)?; // (B, T, V), the loss in f32
        let logits = if grad { logits } else { logits.detach() };
        ops::causal_lm_nll_sum(&logits, ids, mask)
    }

    /// The residual stream after the last block, (B, T, C). Dropout applies only without a
    /// cache: generation never trains. Run on a thread of rayon's pool (`on_pool`).
    fn hidden(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        mut drop: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let x = self.cfg.precision.cast(&self.embed(ids)?)?; // (B, T) -> (B, T, C)
        super::on_pool(|| match cache {
            None => {
                self.layers.iter().try_fold(x, |x, l| l.forward(&x, &self.rope, 0, None, drop.as_deref_mut()))
            }
            Some(cache) => {
                if cache.layers.len() != self.layers.len() {
                    *cache = KvCache::new(self.layers.len());
                }
                let pos = cache.len();
                let slots = cache.layers.iter_mut();
                self.layers
                    .iter()
                    .zip(slots)
                    .try_fold(x, |x, (l, slot)| l.forward(&x, &self.rope, pos, Some(slot), None))
            }
        })
    }

    /// The token embeddings (B, T) -> (B, T, C). A table that trains on the CPU takes the fused
    /// lookup, whose backward writes into the table's gradient buffer.
    pub(super) fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let w = self.embed_tokens.embeddings();
        if w.track_op() && ops::fused_on_cpu(self.cfg.kernels, &[w]) {
            return super::fused::embedding(ids, w);
        }
        self.embed_tokens.forward(ids)
    }

    /// Mean next-token loss over the batch (HF's causal-LM loss).
    pub fn loss(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = self.norm.forward(&self.hidden(ids, None, None)?)?; // (B, T, C)
        let (sum, n) = self.nll_sum(&x, ids, mask, true)?;
        ops::mean_over_labels(sum, n)
    }
}
