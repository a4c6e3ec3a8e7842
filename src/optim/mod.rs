//! Optimizers and learning-rate schedules, written in whet so their state can be saved.
pub mod adamw;
mod adamw_kernel;
pub mod grads;
pub(crate) mod inplace;
pub mod schedule;
pub mod schedule_fields;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::{Schedule, ScheduleKind, SchedulePlan, Warmup};
