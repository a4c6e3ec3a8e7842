//! The KV cache of generation: each layer's keys and values of the positions seen so far.

use candle_core::{Result, Tensor};

/// One layer's cached k and v, and the axis that counts their positions: each (B, T_past,
/// nkv·hs) on the fused CPU path (axis 1), (B, nkv, T_past, hs) on the composed one (axis 2).
pub(super) type LayerCache = Option<(Tensor, Tensor, usize)>;

/// Keys and values of the positions seen so far, one entry per layer, for generation.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(super) layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self { layers: vec![None; n_layers] }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _, axis))) => k.dim(*axis).unwrap_or(0),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// This step's k and v after the cached ones, along position `axis`; the cache, when there is
/// one, keeps the result.
pub(super) fn cached(
    cache: Option<&mut LayerCache>,
    k: Tensor,
    v: Tensor,
    axis: usize,
) -> Result<(Tensor, Tensor)> {
    let Some(slot) = cache else { return Ok((k, v)) };
    let (k, v) = match slot.take() {
        Some((pk, pv, a)) if a == axis => (Tensor::cat(&[&pk, &k], axis)?, Tensor::cat(&[&pv, &v], axis)?),
        Some(_) => candle_core::bail!("kv cache: filled by the other attention path"),
        None => (k, v),
    };
    *slot = Some((k.clone(), v.clone(), axis));
    Ok((k, v))
}
