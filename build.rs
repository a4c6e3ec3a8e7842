//! With the `cuda` feature, compiles the fused ops' CUDA kernels (src/model/fused/kernels.cu)
//! to PTX with nvcc, for `CUDA_COMPUTE_CAP` (90 unless set: the build machine may have no GPU
//! to ask). Without the feature there is nothing to build.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/model/fused/kernels.cu";
    println!("cargo::rerun-if-changed={src}");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("fused.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{nvcc} failed on {src} ({s}); see its messages above"),
        Err(e) => panic!("cannot run {nvcc} for {src}: {e}. The cuda feature needs nvcc on PATH (scripts/build-cuda.sh sets it up)"),
    }
}
