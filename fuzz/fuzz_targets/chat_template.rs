//! Arbitrary bytes as a model's `tokenizer.chat_template`: the input up to the first 0xFF byte
//! is the template, each later 0xFF-separated piece one message's content. Compiling and
//! rendering must end with text or an error — never a panic, a hang or unbounded memory,
//! whatever loops, recursion or string growth the template asks for.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pio_text::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xFF);
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let roles = ["system", "user", "assistant", "user"];
    let messages: Vec<ChatMessage> = parts
        .take(8)
        .zip(roles.iter().cycle())
        .map(|(content, role)| ChatMessage::new(*role, String::from_utf8_lossy(content)))
        .collect();
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else {
        return;
    };
    for add_generation_prompt in [false, true] {
        let _ = template.render(&messages, add_generation_prompt);
    }
});
