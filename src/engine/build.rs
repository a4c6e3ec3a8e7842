//! Building a trainable model for each method: which tensors are Vars, how they start.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use super::config::{ArchConfig, MethodKind, RunConfig};
use crate::load;
use crate::model::config::{Config, RopeLayout};
use crate::model::lora::{Adapters, LoraSettings};
use crate::model::quant::QuantWeights;
use crate::model::Llama;

/// The model and the tensors the optimizer updates, by name.
pub struct Trainable {
    pub model: Llama,
    pub config: Config,
    /// Full / pretrain: every weight under its HF name. LoRA: the adapter tensors under
    /// `model.layers.N.<module>.lora_{A,B}.weight`.
    pub vars: Vec<(String, Var)>,
    /// The frozen base weights (LoRA only), kept to merge or export; with QLoRA the float
    /// ones only (embeddings, norms, lm_head) and `quant` the projections.
    pub base: HashMap<String, Tensor>,
    pub quant: QuantWeights,
    /// LoRA only: the same base with no adapter, for "adapter off" probes.
    pub base_model: Option<Llama>,
}

/// HF Trainer's rule (`get_decay_parameter_names`): no decay for biases and norm weights.
pub fn decays(name: &str) -> bool {
    let forbidden = ["bias", "layernorm", "rmsnorm", "_norm"];
    !(forbidden.iter().any(|f| name.contains(f)) || name.split('.').any(|p| p == "norm"))
}

pub fn config_from_arch(a: &ArchConfig, vocab: usize) -> Result<Config> {
    if a.heads == 0 || !a.hidden.is_multiple_of(a.heads) {
        bail!("model.arch: hidden ({}) must be a multiple of heads ({})", a.hidden, a.heads);
    }
    let cfg = Config {
        vocab_size: a.vocab.unwrap_or(vocab),
        hidden_size: a.hidden,
        intermediate_size: a.intermediate,
        num_hidden_layers: a.layers,
        num_attention_heads: a.heads,
        num_key_value_heads: a.kv_heads,
        head_dim: a.hidden / a.heads,
        rms_norm_eps: 1e-5,
        rope_theta: a.rope_theta,
        rope_layout: RopeLayout::Half,
        rope_scaling: None,
        max_position_embeddings: a.max_seq,
        tie_word_embeddings: a.tie_embeddings,
        attention_bias: false,
        o_bias: false,
        mlp_bias: false,
        kernels: Default::default(),
        precision: Default::default(),
    };
    cfg.validate().map_err(|e| anyhow!("model.arch: {e}"))?;
    Ok(cfg)
}

/// HF's `_init_weights` for Llama: N(0, initializer_range) for linear and embedding weights,
/// ones for norms; from a seeded generator so a run is reproducible.
pub fn random_init(
    cfg: &Config,
    init_range: f64,
    seed: u64,
    dev: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, init_range as f32).map_err(|e| anyhow!("initializer_range: {e}"))?;
    let mut randn = |shape: (usize, usize)| -> Result<Tensor> {
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| normal.sample(&mut rng)).collect();
        Ok(Tensor::from_vec(v, shape, dev)?)
    };
    let (c, i, hs) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let mut w = HashMap::new();
    w.insert("model.embed_tokens.weight".to_string(), randn((cfg.vocab_size, c))?);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", (nh * hs, c)),
            ("self_attn.k_proj", (nkv * hs, c)),
            ("self_attn.v_proj", (nkv * hs, c)),
            ("self_attn.o_proj", (c, nh * hs)),
            ("mlp.gate_proj", (i, c)),
            ("mlp.up_proj", (i, c)),
            ("mlp.down_proj", (c, i)),
        ] {
            w.insert(format!("{p}.{name}.weight"), randn(shape)?);
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(format!("{p}.{norm}.weight"), Tensor::ones(c, DType::F32, dev)?);
        }
    }
    w.insert("model.norm.weight".to_string(), Tensor::ones(c, DType::F32, dev)?);
    if !cfg.tie_word_embeddings {
        w.insert("lm_head.weight".to_string(), randn((cfg.vocab_size, c))?);
    }
    Ok(w)
}

/// Wraps weights in Vars and builds the model over them (full fine-tuning and pretraining).
pub fn full(path: &Path, cfg: Config, weights: HashMap<String, Tensor>, dev: &Device) -> Result<Trainable> {
    let mut names: Vec<String> = weights.keys().cloned().collect();
    names.sort();
    let mut vars = Vec::with_capacity(names.len());
    let mut tensors = HashMap::new();
    for n in names {
        let v = Var::from_tensor(&weights[&n])?;
        tensors.insert(n.clone(), v.as_tensor().clone());
        vars.push((n, v));
    }
    // A checkpoint may carry lm_head.weight for a tied model; it is unused then.
    if cfg.tie_word_embeddings {
        vars.retain(|(n, _)| n != "lm_head.weight");
    }
    let model = crate::load::build_model(path, &cfg, tensors, dev)?;
    Ok(Trainable { model, config: cfg, vars, base: HashMap::new(), quant: HashMap::new(), base_model: None })
}

/// The module paths LoRA adapts: `model.layers.N.self_attn.q_proj`, … for each target.
pub fn lora_modules(cfg: &Config, s: &LoraSettings) -> Result<Vec<(String, usize, usize)>> {
    let (c, i, hs) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let known = [
        ("q_proj", "self_attn", c, nh * hs),
        ("k_proj", "self_attn", c, nkv * hs),
        ("v_proj", "self_attn", c, nkv * hs),
        ("o_proj", "self_attn", nh * hs, c),
        ("gate_proj", "mlp", c, i),
        ("up_proj", "mlp", c, i),
        ("down_proj", "mlp", i, c),
    ];
    for t in &s.targets {
        if !known.iter().any(|k| k.0 == t) {
            let names: Vec<&str> = known.iter().map(|k| k.0).collect();
            bail!("method.targets: unknown module {t:?} (one of {})", names.join(", "));
        }
    }
    let mut out = vec![];
    for l in 0..cfg.num_hidden_layers {
        for (m, parent, d_in, d_out) in known.iter().filter(|k| s.targets(k.0)) {
            out.push((format!("model.layers.{l}.{parent}.{m}"), *d_in, *d_out));
        }
    }
    Ok(out)
}

/// LoRA over a frozen base: adapter Vars from `init` (a PEFT adapter) or PEFT's default init
/// (A ~ kaiming-uniform(a=√5), i.e. U(±1/√in); B = 0). With QLoRA, `quant` holds the
/// quantized projections and `base` the rest.
#[allow(clippy::too_many_arguments)]
pub fn lora(
    path: &Path,
    cfg: Config,
    base: HashMap<String, Tensor>,
    quant: QuantWeights,
    s: &LoraSettings,
    init: Option<HashMap<String, Tensor>>,
    seed: u64,
    dev: &Device,
) -> Result<Trainable> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10_4A);
    let mut vars = vec![];
    let mut adapters = HashMap::new();
    let mut init = init;
    for (module, d_in, d_out) in lora_modules(&cfg, s)? {
        for (part, shape) in [("lora_A", (s.r, d_in)), ("lora_B", (d_out, s.r))] {
            let name = format!("{module}.{part}.weight");
            let t = match init.as_mut() {
                Some(m) => {
                    let t =
                        m.remove(&name).with_context(|| format!("method.init: the adapter lacks {name}"))?;
                    if t.dims() != [shape.0, shape.1] {
                        bail!(
                            "method.init: {name} has shape {:?}, expected {:?} (r = {})",
                            t.dims(),
                            shape,
                            s.r
                        );
                    }
                    t.to_dtype(DType::F32)?.to_device(dev)?
                }
                None if part == "lora_A" => {
                    let bound = 1.0 / (d_in as f32).sqrt();
                    let u = Uniform::new(-bound, bound).map_err(|e| anyhow!("{e}"))?;
                    let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| u.sample(&mut rng)).collect();
                    Tensor::from_vec(v, shape, dev)?
                }
                None => Tensor::zeros(shape, DType::F32, dev)?,
            };
            let v = Var::from_tensor(&t)?;
            adapters.insert(name.clone(), v.as_tensor().clone());
            vars.push((name, v));
        }
    }
    if let Some(left) = init.filter(|m| !m.is_empty()) {
        let mut names: Vec<&String> = left.keys().collect();
        names.sort();
        bail!("method.init: the adapter has tensors that the targets do not cover: {names:?}");
    }
    let vb = VarBuilder::from_tensors(base.clone(), DType::F32, dev);
    let err = |e: candle_core::Error| anyhow!("{}: {e}", path.display());
    let (model, base_model) = {
        let q = (!quant.is_empty()).then_some(&quant);
        let ad = Adapters { vb: VarBuilder::from_tensors(adapters, DType::F32, dev), settings: s, quant: q };
        let model = Llama::load_with_adapters(vb.clone(), &cfg, Some(&ad)).map_err(err)?;
        // The same base with no adapter: no targets, the same quantized projections.
        let none = LoraSettings { targets: vec![], ..s.clone() };
        let empty = VarBuilder::from_tensors(HashMap::new(), DType::F32, dev);
        let bare = Adapters { vb: empty, settings: &none, quant: q };
        (model, Llama::load_with_adapters(vb, &cfg, Some(&bare)).map_err(err)?)
    };
    Ok(Trainable { model, config: cfg, vars, base, quant, base_model: Some(base_model) })
}

/// Which method a config asks for, checked against what it gives.
pub fn check_method(cfg: &RunConfig) -> Result<()> {
    match (cfg.method.kind, &cfg.model.path, &cfg.model.arch) {
        (MethodKind::Pretrain, _, None) => bail!("method pretrain needs [model.arch]"),
        (MethodKind::Full | MethodKind::Lora | MethodKind::Qlora, None, _) => {
            bail!("method full/lora/qlora needs model.path")
        }
        _ => {}
    }
    if cfg.method.quant.is_some() && cfg.method.kind != MethodKind::Qlora {
        bail!("method.quant applies to kind = \"qlora\" only");
    }
    if cfg.method.kind.is_lora() && cfg.method.r == 0 {
        bail!("method.r must be > 0");
    }
    for (key, p) in [("method.dropout", cfg.method.dropout), ("optim.dropout", cfg.optim.dropout)] {
        if !(0.0..1.0).contains(&p) {
            bail!("{key} must be in [0, 1), got {p}");
        }
    }
    Ok(())
}

/// The trainable model a config asks for: random init (pretraining), the loaded weights (full),
/// or the frozen base with adapters (LoRA, fresh or from `method.init`). `resumed` holds a
/// checkpoint's trainable tensors, which take the place of the fresh ones.
pub fn trainable(
    cfg: &RunConfig,
    vocab: usize,
    resumed: Option<&HashMap<String, Tensor>>,
    dev: &Device,
) -> Result<Trainable> {
    match cfg.method.kind {
        MethodKind::Pretrain => {
            let arch = cfg.model.arch.as_ref().ok_or_else(|| anyhow!("[model.arch] is missing"))?;
            let mc = Config {
                kernels: cfg.run.kernels,
                precision: cfg.run.dtype,
                ..config_from_arch(arch, vocab)?
            };
            let w = match resumed {
                Some(w) => w.clone(),
                None => random_init(&mc, arch.initializer_range, cfg.optim.seed, dev)?,
            };
            full(Path::new("[model.arch]"), mc, w, dev)
        }
        MethodKind::Full => {
            let path = cfg.model.path.as_ref().ok_or_else(|| anyhow!("model.path is missing"))?;
            let (mc, mut w) = load::load_weights(path, dev)?;
            let mc = Config { kernels: cfg.run.kernels, precision: cfg.run.dtype, ..mc };
            if let Some(r) = resumed {
                w = r.clone();
            }
            full(path, mc, w, dev)
        }
        MethodKind::Lora => {
            let path = cfg.model.path.as_ref().ok_or_else(|| anyhow!("model.path is missing"))?;
            let (mc, w) = load::load_weights(path, dev)?;
            let mc = Config { kernels: cfg.run.kernels, precision: cfg.run.dtype, ..mc };
            let (s, init) = adapter_init(cfg, resumed, dev)?;
            lora(path, mc, w, HashMap::new(), &s, init, cfg.optim.seed, dev)
        }
        MethodKind::Qlora => {
            let path = cfg.model.path.as_ref().ok_or_else(|| anyhow!("model.path is missing"))?;
            let qb = load::quantized::load(path, cfg.method.quant_for(path), dev)?;
            tracing::info!("{}: {}", path.display(), qb.summary());
            let mc = Config { kernels: cfg.run.kernels, precision: cfg.run.dtype, ..qb.config };
            let (s, init) = adapter_init(cfg, resumed, dev)?;
            lora(path, mc, qb.floats, qb.quant, &s, init, cfg.optim.seed, dev)
        }
    }
}

/// The adapter settings, and the tensors to start from: a checkpoint's, `method.init`'s, or
/// none (a fresh adapter).
fn adapter_init(
    cfg: &RunConfig,
    resumed: Option<&HashMap<String, Tensor>>,
    dev: &Device,
) -> Result<(LoraSettings, Option<HashMap<String, Tensor>>)> {
    let mut s = cfg.method.lora();
    let init = match (resumed, &cfg.method.init) {
        (Some(r), _) => Some(r.clone()),
        (None, Some(dir)) => {
            let (peft, tensors) = load::peft::read_adapter(dir, dev)?;
            if (peft.r, peft.alpha, peft.rslora) != (s.r, s.alpha, s.rslora) {
                tracing::warn!(
                    "method.init: using the adapter's r/alpha/rslora ({}, {}, {})",
                    peft.r,
                    peft.alpha,
                    peft.rslora
                );
            }
            // The adapter's shapes fix r; keep the config's dropout.
            s = LoraSettings { dropout: s.dropout, ..peft };
            Some(tensors)
        }
        (None, None) => None,
    };
    Ok((s, init))
}

/// The data must use only the model's token ids and fit its context.
pub(super) fn check_data_fits(
    cfg: &RunConfig,
    t: &Trainable,
    train: &[crate::data::Window],
    eval: &[crate::data::Window],
) -> Result<()> {
    let train_path = cfg.data.train.display();
    let vocab = t.config.vocab_size;
    if let Some(bad) = train.iter().chain(eval).flat_map(|w| &w.ids).find(|&&id| id as usize >= vocab) {
        bail!("{train_path}: token id {bad} is outside the model's vocabulary of {vocab}");
    }
    if cfg.data.seq_len > t.config.max_position_embeddings {
        bail!(
            "data.seq_len {} exceeds the model's context {}",
            cfg.data.seq_len,
            t.config.max_position_embeddings
        );
    }
    Ok(())
}
