//! Chat templates come from model files, so a hostile one must end with an error, not a hang,
//! a stack overflow or memory exhaustion. Each render runs on its own thread with the 2 MiB
//! stack Rust gives spawned threads; the generous timeout only turns a hang into a failure
//! instead of a stuck test run (it is not a speed requirement).

use std::sync::mpsc;
use std::time::Duration;

use pio_text::{ChatMessage, ChatTemplate, TextError, CHATML, MAX_RENDERED_BYTES};

const HANG: Duration = Duration::from_secs(120);

fn render(source: &str, messages: Vec<ChatMessage>) -> Result<String, TextError> {
    let source = source.to_owned();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let result = ChatTemplate::new(source, "<s>", "</s>")
                .and_then(|template| template.render(&messages, true));
            let _ = tx.send(result);
        })
        .unwrap();
    rx.recv_timeout(HANG)
        .expect("rendering neither finished nor failed: it is unbounded")
}

fn hostile(source: &str) -> String {
    match render(source, vec![ChatMessage::user("Hi")]) {
        Ok(text) => panic!("a hostile template rendered {} bytes", text.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn nested_loops_run_out_of_fuel() {
    let err = hostile(
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    );
    assert!(err.contains("budget"), "{err}");
}

#[test]
fn a_huge_range_is_refused() {
    let err = hostile("{% for i in range(10**9) %}x{% endfor %}");
    assert!(err.contains("range"), "{err}");
}

#[test]
fn unbounded_macro_recursion_is_an_error_not_a_stack_overflow() {
    let err = hostile("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    assert!(err.contains("recursion"), "{err}");
}

#[test]
fn string_doubling_runs_out_of_fuel_before_memory() {
    let err = hostile(
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}\
         {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    );
    assert!(err.contains("budget"), "{err}");
}

#[test]
fn huge_string_multiplication_runs_out_of_fuel() {
    let err = hostile("{% set s = 'x' * 60000000 %}{{ s ~ s ~ s }}");
    assert!(err.contains("budget"), "{err}");
}

#[test]
fn oversized_output_is_refused_naming_the_limit() {
    // Cheap in fuel (20 writes of one string) but larger than the output limit.
    let err = hostile("{% set s = 'x' * 1000000 %}{% for i in range(20) %}{{ s }}{% endfor %}");
    assert!(err.contains(&MAX_RENDERED_BYTES.to_string()), "{err}");
}

#[test]
fn a_large_real_conversation_stays_within_the_budget() {
    // 1 MiB of content (the server's default body limit) over 64 messages.
    let content = "word ".repeat((1 << 20) / 5 / 64);
    let messages: Vec<ChatMessage> = (0..64)
        .map(|i| ChatMessage::new(["user", "assistant"][i % 2], content.as_str()))
        .collect();
    let rendered = render(CHATML, messages).unwrap();
    assert!(rendered.len() > 64 * content.len());
    assert!(rendered.ends_with("<|im_start|>assistant\n"));
}
