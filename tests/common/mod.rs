//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, Var};

pub mod grad;
pub mod tmux;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// `reference.safetensors` of a tiny fixture: ids (B, T) u32, logits (B, T, V), loss.
pub struct Reference {
    pub ids: Tensor,
    pub logits: Tensor,
    pub loss: f32,
    pub grad_norms: HashMap<String, f64>,
}

pub fn reference(dir: &Path) -> Reference {
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .expect("fixture reference.safetensors loads");
    let norms: HashMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grad_norms.json")).expect("grad_norms.json"))
            .expect("grad_norms.json parses");
    Reference {
        ids: t["ids"].to_dtype(DType::U32).unwrap(),
        logits: t["logits"].clone(),
        loss: t["loss"].to_vec1::<f32>().unwrap()[0],
        grad_norms: norms,
    }
}

/// Largest |a - b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Wraps every weight in a Var (in `dtype`), so backward gives each a gradient.
pub fn as_vars(w: HashMap<String, Tensor>, dtype: DType) -> (HashMap<String, Var>, HashMap<String, Tensor>) {
    let vars: HashMap<String, Var> =
        w.into_iter().map(|(k, t)| (k, Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap())).collect();
    let tensors = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    (vars, tensors)
}

/// Fetches the default model once per test binary (scripts/fetch-default-model.sh).
pub fn default_model() -> PathBuf {
    static FETCHED: OnceLock<PathBuf> = OnceLock::new();
    FETCHED
        .get_or_init(|| {
            let status = std::process::Command::new("bash")
                .arg(root().join("scripts/fetch-default-model.sh"))
                .status()
                .expect("run scripts/fetch-default-model.sh");
            assert!(status.success(), "fetching the default model failed");
            root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
        .clone()
}

/// A run config's TOML on the tiny GQA model: `[model]`, `[method]` holding `method`, and
/// `[data]` training on `train`; `rest` goes on inside `[data]` and adds the other tables.
pub fn tiny_config_text(method: &str, train: &Path, rest: &str) -> String {
    let model = fixture("tiny-llama-gqa");
    format!(
        "[model]\npath = \"{}\"\n[method]\n{method}\n[data]\ntrain = \"{}\"\n{rest}",
        model.display(),
        train.display()
    )
}

/// The step lines of a run's `metrics.jsonl` (eval lines left out); none while it is missing.
pub fn metric_steps(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .collect()
}

/// Polls `f` every 100 ms until it gives a value, failing after `secs`.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
