//! Everything that crosses between the engine thread and its clients: one `Command` enum in,
//! one `Event` enum out. Owned plain data only (serde, so it can cross a socket later).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::config::RunConfig;
use crate::chat::Message;
use crate::logits::{ProbeResult, Sampler, TopToken};
use crate::optim::SchedulePlan;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Start a run; `resume` names a run directory to continue from its newest checkpoint.
    Start {
        config: Box<RunConfig>,
        run_dir: PathBuf,
        resume: bool,
    },
    Pause,
    Resume,
    Stop {
        save: bool,
    },
    SaveCheckpoint,
    /// Replace the schedule from the next optimizer step on (recorded in the edit log).
    SetSchedule(SchedulePlan),
    /// Replace the gradient-clipping norm (0 = off) from the next optimizer step on.
    SetGradClip(f64),
    /// The next-token distribution after a prompt: on the run's current weights, or (no run)
    /// on the model opened with `Open`.
    Probe(Probe),
    /// A reply to a conversation, generated whole between two training steps and streamed as
    /// `ChatToken`s, then `ChatDone`.
    Chat(ChatRequest),
    /// Load a model for probing while no run is active.
    Open(PathBuf),
    /// Evaluate on the eval windows now (answered with `Event::Eval`).
    Evaluate,
    Shutdown,
}

/// Which weights a probe or a chat runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Weights {
    /// The run's current weights (or the opened model).
    #[default]
    Live,
    /// The base model: the LoRA adapter off.
    Base,
    /// The run's checkpoint of this step, as saved.
    Checkpoint(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub id: u64,
    pub prompt: String,
    /// Render the prompt as a user turn through the chat template.
    pub chat: bool,
    pub top_k: usize,
    #[serde(default)]
    pub weights: Weights,
    /// Also give each top token's probability under this temperature and top-p, over the
    /// whole vocabulary (`ProbeResult::sampled`).
    #[serde(default)]
    pub sampler: Sampler,
    /// Also give the probability of this text's first token (`ProbeResult::target`).
    #[serde(default)]
    pub target: Option<String>,
}

impl Probe {
    pub fn new(id: u64, prompt: &str, top_k: usize) -> Self {
        Self {
            id,
            prompt: prompt.to_string(),
            chat: false,
            top_k,
            weights: Weights::Live,
            sampler: Sampler::default(),
            target: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub id: u64,
    pub messages: Vec<Message>,
    /// Temperature 0 is greedy.
    pub sampler: Sampler,
    pub max_tokens: usize,
    /// The alternatives kept for each generated token.
    pub top_k: usize,
    #[serde(default)]
    pub weights: Weights,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub method: String,
    pub params: usize,
    pub trainable: usize,
    pub layers: usize,
    pub vocab: usize,
    pub total_steps: u64,
    pub start_step: u64,
    pub train_windows: usize,
    pub eval_windows: usize,
    /// The schedule in force (a resumed run's includes its edits): clients draw the LR plan
    /// from this, not from their own copy of the config.
    pub schedule: SchedulePlan,
    pub grad_clip: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// 1-based count of optimizer steps done, as HF logs `global_step`.
    pub step: u64,
    /// The loss of this step's forward pass, before its update.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens processed in this step (all positions of all windows).
    pub tokens: u64,
    pub tokens_per_s: f64,
    /// Achieved training FLOP/s: `model::flops::train_flops_per_token` × tokens/s.
    #[serde(default)]
    pub flops_per_s: f64,
    /// Model FLOPs utilisation: `flops_per_s` over the GPU's dense bf16 peak
    /// (`model::flops::gpu_peak_flops`). None on a CPU or a GPU not in the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    pub elapsed_s: f64,
    /// Steps skipped so far for a non-finite loss or gradient.
    pub skipped: u64,
}

impl StepStats {
    /// The achieved FLOP/s for people: GFLOP/s on a CPU's scale, TFLOP/s on a GPU's, with the
    /// MFU when the GPU's peak is known.
    pub fn flops_label(&self) -> String {
        let rate = if self.flops_per_s >= 1e12 {
            format!("{:.1} TFLOP/s", self.flops_per_s / 1e12)
        } else {
            format!("{:.1} GFLOP/s", self.flops_per_s / 1e9)
        };
        match self.mfu {
            Some(m) => format!("{rate} · MFU {:.1}%", 100.0 * m),
            None => rate,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Loaded(ModelInfo),
    Step(StepStats),
    Eval {
        step: u64,
        loss: f64,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    ProbeResult {
        id: u64,
        step: u64,
        result: Result<ProbeResult, String>,
    },
    /// A token of a chat reply, with the top-k alternatives at its position (before sampling).
    ChatToken {
        id: u64,
        token: TopToken,
        alternatives: Vec<TopToken>,
    },
    /// The chat reply is complete (its text), or failed.
    ChatDone {
        id: u64,
        step: u64,
        result: Result<String, String>,
    },
    /// A schedule edit took effect (step, old, new).
    ScheduleEdited {
        step: u64,
        old: Box<SchedulePlan>,
        new: Box<SchedulePlan>,
    },
    /// `SetGradClip` took effect from the step after `step`.
    GradClipSet {
        step: u64,
        old: f64,
        new: f64,
    },
    /// `Open` finished: the model can be probed.
    Opened {
        path: PathBuf,
    },
    Paused {
        step: u64,
    },
    Resumed {
        step: u64,
    },
    Log(String),
    Warning(String),
    Failed(String),
    /// The run ended; `outputs` lists what it wrote (adapter or model directory).
    Finished {
        step: u64,
        outputs: Vec<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_label_shows_the_mfu_when_the_peak_is_known() {
        let s = StepStats {
            step: 1,
            loss: 1.0,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens: 1,
            tokens_per_s: 1.0,
            flops_per_s: 346e12,
            mfu: Some(346e12 / 989e12),
            elapsed_s: 1.0,
            skipped: 0,
        };
        assert_eq!(s.flops_label(), "346.0 TFLOP/s · MFU 35.0%");
        assert_eq!(StepStats { flops_per_s: 2.5e9, mfu: None, ..s }.flops_label(), "2.5 GFLOP/s");
        // An old metrics line, with neither field, still reads.
        let old = r#"{"step":1,"loss":1.0,"lr":0.001,"grad_norm":1.0,"tokens":1,"tokens_per_s":1.0,"elapsed_s":1.0,"skipped":0}"#;
        let s: StepStats = serde_json::from_str(old).unwrap();
        assert_eq!((s.flops_per_s, s.mfu), (0.0, None));
    }
}
