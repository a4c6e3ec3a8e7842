//! A safetensors file (header and data) through whet's streaming reader, and a shard index
//! through `weight_files`: errors, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let file = dir.path().join("model.safetensors");
    if std::fs::write(&file, data).is_err() {
        return;
    }
    let _ = whet::load::quantized::for_each_tensor(&file, &candle_core::Device::Cpu, |_, _| Ok(()));
    // The same bytes as a shard index beside it.
    let _ = std::fs::remove_file(&file);
    if std::fs::write(dir.path().join("model.safetensors.index.json"), data).is_ok() {
        let _ = whet::load::hf::weight_files(dir.path());
    }
});
