//! The KV cache of generation: each layer's keys and values of the positions seen so far.

use candle_core::Tensor;

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
