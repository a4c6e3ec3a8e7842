//! `config.json` → `Config`: serde, then the config's own checks and limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = serde_json::from_slice::<whet::load::hf_config::HfConfig>(data) {
        let _ = c.to_config();
    }
});
