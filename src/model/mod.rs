//! Models. One file per family; `ops` holds the differentiable pieces they share.
pub mod config;
mod dropout;
pub mod flops;
pub mod fused;
pub mod grad_sink;
mod kv_cache;
pub mod llama;
pub mod lora;
pub mod ops;
pub mod quant;
mod recompute;

pub use config::{Config, Kernels, Precision, RopeLayout};
pub use llama::{KvCache, Llama};
