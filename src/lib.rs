//! whet: a terminal workbench for training language models.
//! See ARCHITECTURE.md for the map.

pub mod bench;
pub mod chat;
pub mod cli;
pub mod data;
pub mod data_cli;
pub mod engine;
pub mod export;
pub mod generate;
pub mod infer;
pub mod kernel_check;
pub mod load;
pub mod logits;
pub mod model;
pub mod optim;
mod simd;
pub mod spelling;
pub mod train_cli;
pub mod tui;
