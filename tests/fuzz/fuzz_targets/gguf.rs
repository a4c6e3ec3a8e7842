//! The GGUF parser on arbitrary bytes: an error or a table, never a panic or an abort.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = whet::load::gguf_file::check_bytes(data);
});
