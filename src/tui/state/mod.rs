//! Per-pane state: each folds engine events or keys into what its view draws. Pure: no I/O,
//! no tensors.
pub mod chat;
pub mod data;
pub mod explorer;
pub mod form;
pub mod log;
pub mod metrics;
pub mod models;
pub mod schedule;
