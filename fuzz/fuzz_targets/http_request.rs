//! Arbitrary bytes as the body of a `POST /v1/chat/completions`, `/v1/completions` or
//! `/v1/embeddings` request: parsed as JSON into the request type the route extracts
//! (`serde_json::from_slice`, as the server's `JsonBody` does), then validated and converted
//! into the plugin's request fields. Every step must end with a value or an `ApiError`, and
//! whatever passes validation must respect the server's limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pio_server::openai::{
    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Limits, MAX_STOP_BYTES,
    MAX_STOP_STRINGS,
};

const LIMITS: Limits = Limits {
    default_max_tokens: 256,
    max_tokens_limit: 4096,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<ChatCompletionRequest>(data) {
        if let Ok(messages) = request.messages() {
            assert!(!messages.is_empty());
            for message in &messages {
                assert!(["system", "user", "assistant"].contains(&message.role.as_str()));
            }
        }
        let _ = request.logprobs();
        check_sampling(&request.sampling);
    }
    if let Ok(request) = serde_json::from_slice::<CompletionRequest>(data) {
        if let Ok(prompts) = request.prompts() {
            assert!(!prompts.is_empty());
        }
        let _ = request.logprobs();
        check_sampling(&request.sampling);
    }
    if let Ok(request) = serde_json::from_slice::<EmbeddingRequest>(data) {
        if let Ok(inputs) = request.inputs() {
            assert!(!inputs.is_empty() && inputs.iter().all(|s| !s.is_empty()));
        }
        let _ = request.encoding();
    }
});

/// Whatever `params` accepts is inside the server's limits and the plugin API's own checks.
fn check_sampling(sampling: &pio_server::openai::Sampling) {
    let _ = sampling.include_usage();
    let _ = sampling.constraint();
    if let Ok(n) = sampling.choices() {
        assert!((1..=pio_server::openai::MAX_CHOICES).contains(&n));
    }
    if let Ok(params) = sampling.params(LIMITS) {
        assert!((1..=LIMITS.max_tokens_limit).contains(&params.max_new_tokens));
        assert!(params.stop.len() <= MAX_STOP_STRINGS);
        assert!(params.stop.iter().all(|s| s.len() <= MAX_STOP_BYTES));
        assert!(params.validate().is_ok());
        assert!(params.temperature.is_finite() && (0.0..=2.0).contains(&params.temperature));
    }
}
