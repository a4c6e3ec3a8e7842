//! The run-config TOML, with and without a `--set` override.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = whet::engine::config::RunConfig::from_toml(text);
    let _ = whet::engine::config::RunConfig::with_overrides(text, &["optim.max_steps=3".to_string()]);
});
