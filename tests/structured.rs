//! Structured output and log-probabilities on the real Llama plugin (SmolLM2) through the HTTP
//! server: JSON Schemas (nested objects, arrays, enums, numbers, required fields) over several
//! prompts, greedy and sampled, every output parsed and validated against its schema by an
//! independent validator (`jsonschema`); an invalid schema is a 400 naming the problem; a
//! constrained request and free ones served at the same time; the CLI's `--json-schema`.

use std::process::Command;

use pio_host::ActivateOptions;
use pio_server::ConfigLayer;
use pio_tests::{
    http::{Served, TestServer},
    target_dir, workspace_plugin,
};
use serde_json::{json, Value};

fn llama_server() -> TestServer {
    let model = pio_testkit::model(pio_testkit::SMOLLM2);
    TestServer::start(
        &[Served {
            folder: "llama",
            library: &workspace_plugin("pio_plugin_llama"),
            config: json!({ "model": model, "tuning": "off" }),
        }],
        ConfigLayer::default(),
        ActivateOptions {
            context_length: 1024,
            ..ActivateOptions::default()
        },
    )
}

/// Schemas and prompts that ask for them. Strings and arrays are bounded, so every output is
/// finite and fits `max_tokens`.
fn cases() -> Vec<(&'static str, Value)> {
    let name = json!({"type": "string", "maxLength": 40});
    vec![
        (
            "Describe a fictional person.",
            json!({"type": "object", "properties": {
                "name": name,
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "email": name,
                "address": {"type": "object", "properties": {
                    "city": name, "country": name
                }, "required": ["city", "country"], "additionalProperties": false}
            }, "required": ["name", "age", "address"], "additionalProperties": false}),
        ),
        (
            "Give me a pancake recipe.",
            json!({"type": "object", "properties": {
                "title": name,
                "ingredients": {"type": "array", "minItems": 1, "maxItems": 5, "items": {
                    "type": "object",
                    "properties": {"item": name, "grams": {"type": "number", "minimum": 0, "maximum": 1000}},
                    "required": ["item", "grams"], "additionalProperties": false
                }},
                "vegetarian": {"type": "boolean"}
            }, "required": ["title", "ingredients", "vegetarian"], "additionalProperties": false}),
        ),
        (
            "What is the weather like in Paris today?",
            json!({"type": "object", "properties": {
                "city": name,
                "temperature_c": {"type": "number", "minimum": -50, "maximum": 60},
                "condition": {"enum": ["sunny", "cloudy", "rain", "snow"]}
            }, "required": ["city", "temperature_c", "condition"], "additionalProperties": false}),
        ),
        (
            "List three colors.",
            json!({"type": "object", "properties": {
                "colors": {"type": "array", "minItems": 3, "maxItems": 3, "items": name}
            }, "required": ["colors"], "additionalProperties": false}),
        ),
    ]
}

fn request(prompt: &str, schema: &Value, sampling: Value) -> Value {
    let mut request = json!({
        "model": "llama",
        "messages": [{"role": "user", "content": format!("{prompt} Answer in JSON.")}],
        "max_tokens": 400,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    });
    request
        .as_object_mut()
        .unwrap()
        .extend(sampling.as_object().unwrap().clone());
    request
}

/// Parses `text` and validates it against `schema`, naming what is wrong.
fn check(text: &str, schema: &Value) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("{text:?}: {e}"))?;
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    match errors.is_empty() {
        true => Ok(value),
        false => Err(format!("{text}: {errors:?}")),
    }
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn every_constrained_output_parses_and_validates_against_its_schema() {
    let server = llama_server();
    let samplings = [
        json!({"temperature": 0}),
        json!({"temperature": 0.8, "seed": 7}),
    ];
    let mut failures = Vec::new();
    let mut outputs = 0;
    for (prompt, schema) in cases() {
        for sampling in &samplings {
            let (status, body) = server.post(
                "/v1/chat/completions",
                &request(prompt, &schema, sampling.clone()),
            );
            assert_eq!(status, 200, "{body}");
            let choice = &body["choices"][0];
            assert_eq!(choice["finish_reason"], "stop", "{body}");
            let text = choice["message"]["content"].as_str().unwrap();
            outputs += 1;
            if let Err(failure) = check(text, &schema) {
                failures.push(failure);
            }
        }
    }
    assert_eq!(outputs, 8);
    assert!(failures.is_empty(), "{failures:#?}");

    // Any JSON object, streamed. Unbounded (any keys, any length), so a small model may also
    // go on until `max_tokens` (finish reason `length`, the text then a prefix of a JSON
    // object, as OpenAI documents); this prompt gets a whole object.
    let mut request = json!({
        "model": "llama", "max_tokens": 200, "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "Reply with the JSON object {\"greeting\": \"hello\"}."}],
        "response_format": {"type": "json_object"},
    });
    let (status, sse) = server.stream("/v1/chat/completions", &request);
    assert_eq!(status, 200);
    let data = sse.collect_all();
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| pio_tests::http::chunk_text(&serde_json::from_str(d).unwrap()).to_owned())
        .collect();
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(value.is_object(), "{text}");

    // A regular expression (the extension) on completions.
    request = json!({"model": "llama", "prompt": "The year the Berlin wall fell:",
                     "max_tokens": 10, "temperature": 0, "regex": " ?[12][0-9]{3}"});
    let (status, body) = server.post("/v1/completions", &request);
    assert_eq!(status, 200, "{body}");
    let year = body["choices"][0]["text"].as_str().unwrap().trim();
    assert!(
        year.len() == 4 && year.bytes().all(|b| b.is_ascii_digit()),
        "{body}"
    );
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn an_invalid_schema_is_a_400_and_free_requests_batch_with_a_constrained_one() {
    let server = llama_server();
    let bad = json!({"type": "object", "properties": {"a": {"type": "no-such-type"}}});
    let (status, body) = server.post(
        "/v1/chat/completions",
        &request("Hi.", &bad, json!({"temperature": 0})),
    );
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("json_schema"), "{message}");

    // One constrained request and three free ones at the same time: all are answered, the
    // constrained one with valid JSON, the free ones as they are alone.
    let (prompt, schema) = &cases()[2];
    let constrained = request(prompt, schema, json!({"temperature": 0}));
    let free = json!({"model": "llama", "max_tokens": 24, "temperature": 0,
                      "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let (_, alone) = server.post("/v1/chat/completions", &free);
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = std::iter::once(&constrained)
            .chain(std::iter::repeat_n(&free, 3))
            .map(|body| scope.spawn(|| server.post("/v1/chat/completions", body)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let text = |body: &Value| {
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    check(&text(&answers[0].1), schema).unwrap();
    for (_, body) in &answers[1..] {
        assert_eq!(
            text(body),
            text(&alone),
            "a free request gets what it gets alone"
        );
    }
    let stats = server.metric("pio_batch_limit{plugin=\"llama\"}");
    assert!(
        stats.is_some(),
        "the llama plugin is served by continuous batching"
    );
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn pio_generate_with_a_json_schema_prints_valid_json() {
    let model = pio_testkit::model(pio_testkit::SMOLLM2);
    let dir = tempfile::tempdir().unwrap();
    let (_, schema) = &cases()[3];
    let schema_file = dir.path().join("schema.json");
    std::fs::write(&schema_file, schema.to_string()).unwrap();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let output = Command::new(target_dir().join(profile).join("pio"))
        .args([
            "generate",
            "llama",
            "Three colors as JSON:",
            "--temperature",
            "0",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--json-schema")
        .arg(&schema_file)
        .env("PIO_CACHE_DIR", dir.path().join("cache"))
        .env_remove("PIO_PLUGIN_PATH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    check(stdout.trim(), schema).unwrap();
}
