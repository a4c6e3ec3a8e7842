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

/// Runs `f` on a thread of rayon's pool and waits for it; on such a thread already, runs it in
/// place. Every fused op splits its work over the pool: called from another thread, each one
/// hands its work to the pool and sleeps until woken, so a SmolLM2 step made thousands of
/// such round trips (74k context switches in three LoRA steps, the two cores 78 % busy). From
/// a thread of the pool, an op runs one half itself and the other worker takes the rest:
/// eight LoRA steps ran at 257–260 tok/s against 240–242 (bench README, eleventh round).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
