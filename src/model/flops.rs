//! Training FLOPs per token, estimated the usual way (PaLM, appendix B; nanoGPT's
//! `estimate_mfu`): 6 per matmul parameter (2 in the forward, 4 in the backward) plus the
//! attention scores and their use, 12·L·H·Q·T.

use super::Config;

/// Parameters that take part in a matmul for each token: every projection and the lm_head.
/// The embedding lookup is not a matmul; a tied lm_head counts once, as the lm_head.
pub fn matmul_params(cfg: &Config) -> usize {
    let (c, i, hs) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_attention_heads * hs, cfg.num_key_value_heads * hs);
    let per_layer = c * q + 2 * c * kv + q * c + 3 * c * i;
    cfg.num_hidden_layers * per_layer + cfg.vocab_size * c
}

/// FLOPs that one training token costs, in sequences of `seq_len` tokens. With
/// `adapter_params` (LoRA), the frozen base costs its forward and its input gradient only (4
/// per parameter) and each adapter parameter the full 6.
pub fn train_flops_per_token(cfg: &Config, seq_len: usize, adapter_params: Option<usize>) -> f64 {
    let n = matmul_params(cfg) as f64;
    let attention = 12.0
        * cfg.num_hidden_layers as f64
        * cfg.num_attention_heads as f64
        * cfg.head_dim as f64
        * seq_len as f64;
    let weights = match adapter_params {
        None => 6.0 * n,
        Some(a) => 4.0 * n + 6.0 * a as f64,
    };
    weights + attention
}

/// Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from NVIDIA's data sheets, by a
/// substring of the device name CUDA reports; more specific names first. MFU is measured
/// against this peak whatever the run's dtype, as nanoGPT's `estimate_mfu` does.
const GPU_PEAKS: &[(&str, f64)] = &[
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
];

/// The dense bf16 peak of the GPU CUDA names `name`, if it is in the table.
pub fn gpu_peak_flops(name: &str) -> Option<f64> {
    GPU_PEAKS.iter().find(|(key, _)| name.contains(key)).map(|(_, peak)| *peak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_peaks_match_the_most_specific_name() {
        assert_eq!(gpu_peak_flops("NVIDIA H200"), Some(989e12));
        assert_eq!(gpu_peak_flops("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(gpu_peak_flops("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(gpu_peak_flops("NVIDIA A10G"), Some(70e12));
        assert_eq!(gpu_peak_flops("NVIDIA L40S"), Some(362e12));
        assert_eq!(gpu_peak_flops("Quadro K600"), None);
    }

    /// SmolLM2-135M's shapes, counted by hand.
    fn smollm2() -> Config {
        Config {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            rope_layout: crate::model::RopeLayout::Half,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            o_bias: false,
            mlp_bias: false,
            kernels: Default::default(),
            precision: Default::default(),
        }
    }

    #[test]
    fn smollm2_costs_what_its_shapes_say() {
        // Per layer: q and o 576·576, k and v 576·192, the MLP 3·576·1536; then the lm_head.
        let per_layer = 2 * 331_776 + 2 * 110_592 + 2_654_208;
        assert_eq!(matmul_params(&smollm2()), 30 * per_layer + 28_311_552);
        assert_eq!(matmul_params(&smollm2()), 134_479_872);
        let attention = 12.0 * 30.0 * 9.0 * 64.0 * 256.0; // 53 084 160
        assert_eq!(train_flops_per_token(&smollm2(), 256, None), 6.0 * 134_479_872.0 + attention);
        // LoRA r16 on all 7 linears: 16·(in + out) per projection.
        let lora = 30 * 16 * (2 * (576 + 576) + 2 * (576 + 192) + 2 * (576 + 1536) + (1536 + 576));
        assert_eq!(
            train_flops_per_token(&smollm2(), 256, Some(lora)),
            4.0 * 134_479_872.0 + 6.0 * lora as f64 + attention
        );
    }
}
