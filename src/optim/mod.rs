//! Optimizers and learning-rate schedules, written in whet so their state can be saved.
pub mod adamw;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::{Schedule, ScheduleKind};
