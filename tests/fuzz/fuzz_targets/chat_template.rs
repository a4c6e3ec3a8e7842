//! A chat template rendered on a fixed conversation, within whet's fuel and output limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use whet::chat::{render, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(template) = std::str::from_utf8(data) else { return };
    let msgs = [
        Message { role: "system".into(), content: "be brief".into() },
        Message::user("How are you?"),
        Message { role: "assistant".into(), content: "fine".into() },
    ];
    let _ = render(template, &msgs, true, "<s>", "</s>");
});
