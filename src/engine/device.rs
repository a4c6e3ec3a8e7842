//! Which device a run computes on: `cpu`, `cuda` or `cuda:N`, from `--device` or `[run] device`.

use anyhow::{anyhow, bail, Result};
use candle_core::{Device, DeviceLocation};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

/// `cpu`, `cuda` (GPU 0) or `cuda:N`.
pub fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    match s.trim() {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => Err(format!("device {other:?}: expected cpu, cuda or cuda:N")),
        },
    }
}

/// The device for `spec`; None picks the first GPU when there is one, else the CPU.
pub fn device(spec: Option<DeviceSpec>) -> Result<Device> {
    match spec {
        Some(DeviceSpec::Cpu) => Ok(Device::Cpu),
        // candle's `cuda_if_available` only asks whether the binary has CUDA, and fails on a
        // box whose driver sees no GPU (or none free); the default must then be the CPU.
        None if cfg!(feature = "cuda") => Ok(Device::new_cuda(0).unwrap_or_else(|e| {
            tracing::warn!("no usable GPU ({}); running on the CPU", without_backtrace(e));
            Device::Cpu
        })),
        None => Ok(Device::Cpu),
        Some(DeviceSpec::Cuda(n)) if !cfg!(feature = "cuda") => bail!(
            "device cuda:{n}: this whet was built without CUDA; build it with scripts/build-cuda.sh, \
             or use --device cpu"
        ),
        Some(DeviceSpec::Cuda(n)) => Device::new_cuda(n)
            .map_err(|e| anyhow!("device cuda:{n}: no usable GPU there ({})", without_backtrace(e))),
    }
}

/// candle attaches a backtrace to its errors when RUST_BACKTRACE is set; a device that is not
/// there is the user's situation, not whet's bug, so its message stays one line.
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => *inner,
        e => e,
    }
}

impl DeviceSpec {
    /// The spec that names `dev`.
    pub fn of(dev: &Device) -> Self {
        match dev.location() {
            DeviceLocation::Cuda { gpu_id } => DeviceSpec::Cuda(gpu_id),
            _ => DeviceSpec::Cpu,
        }
    }

    /// Whether `dev` is this device.
    pub fn is(&self, dev: &Device) -> bool {
        match (self, dev.location()) {
            (DeviceSpec::Cpu, DeviceLocation::Cpu) => true,
            (DeviceSpec::Cuda(n), DeviceLocation::Cuda { gpu_id }) => *n == gpu_id,
            _ => false,
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The GPU's own name, as CUDA reports it ("NVIDIA H200"); None on the CPU.
pub fn gpu_name(dev: &Device) -> Option<String> {
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d.cuda_stream().context().name().ok(),
        _ => None,
    }
}

/// `name` with the GPU's own name where there is one: "cuda:0 (NVIDIA H200)" or "cpu".
pub fn label(dev: &Device) -> String {
    match gpu_name(dev) {
        Some(gpu) => format!("{} ({gpu})", name(dev)),
        None => name(dev),
    }
}

/// The name a person would write for `dev`.
pub fn name(dev: &Device) -> String {
    match dev.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        parse_device(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
