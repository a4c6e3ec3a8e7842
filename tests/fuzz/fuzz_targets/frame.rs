//! The engine protocol's frame decoder, both readers, on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use whet::engine::{wire, Command, Event};

fuzz_target!(|data: &[u8]| {
    let _ = wire::read_frame::<Command>(&mut &data[..]);
    let _ = wire::read_frame::<Event>(&mut &data[..]);
    let _ = wire::read_frame_patient::<Command>(&mut &data[..]);
});
