//! One JSONL data line in each format.
#![no_main]
use libfuzzer_sys::fuzz_target;
use whet::data::config::DataFormat;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for f in [DataFormat::Alpaca, DataFormat::Chat, DataFormat::PromptCompletion] {
        let _ = whet::data::jsonl::messages(&v, f);
    }
});
