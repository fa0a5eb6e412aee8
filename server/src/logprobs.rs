//! Log-probabilities in OpenAI's two shapes: chat's `content` list of token objects, and the
//! legacy completions object of parallel arrays (what evaluation harnesses read).

use pio_host::{PositionLogprobs, TokenLogprob};
use serde_json::{json, Map, Value};

/// A token's text: its bytes as UTF-8, a partial character replaced (the `bytes` of chat's
/// shape keep the exact bytes).
fn text(token: &TokenLogprob) -> String {
    String::from_utf8_lossy(&token.bytes).into_owned()
}

/// A log-probability, `null` where there is none (a prompt's first token).
fn logprob(value: f32) -> Value {
    if value.is_nan() {
        Value::Null
    } else {
        json!(value)
    }
}

fn chat_token(token: &TokenLogprob) -> Value {
    json!({"token": text(token), "logprob": logprob(token.logprob), "bytes": token.bytes})
}

/// Chat's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}`.
pub fn chat(positions: &[PositionLogprobs]) -> Value {
    let content: Vec<Value> = positions
        .iter()
        .map(|position| {
            let mut entry = chat_token(&position.chosen);
            entry["top_logprobs"] = position.top.iter().map(chat_token).collect();
            entry
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Completions' `logprobs`: `tokens`, `token_logprobs`, `top_logprobs` (one object of token
/// text → log-probability per position; `null` for a prompt's first token) and `text_offset`
/// (where each token's text starts, in characters, counting from `offset`).
pub fn completion(positions: &[PositionLogprobs], offset: usize) -> Value {
    let mut tokens = Vec::with_capacity(positions.len());
    let mut token_logprobs = Vec::with_capacity(positions.len());
    let mut top_logprobs = Vec::with_capacity(positions.len());
    let mut text_offset = Vec::with_capacity(positions.len());
    let mut at = offset;
    for position in positions {
        let token = text(&position.chosen);
        text_offset.push(at);
        at += token.chars().count();
        tokens.push(token);
        token_logprobs.push(logprob(position.chosen.logprob));
        top_logprobs.push(if position.chosen.logprob.is_nan() {
            Value::Null
        } else {
            let top: Map<String, Value> = position
                .top
                .iter()
                .map(|t| (text(t), logprob(t.logprob)))
                .collect();
            Value::Object(top)
        });
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: u32, bytes: &[u8], logprob: f32) -> TokenLogprob {
        TokenLogprob {
            token: id,
            bytes: bytes.to_vec(),
            logprob,
        }
    }

    fn positions() -> Vec<PositionLogprobs> {
        vec![
            PositionLogprobs {
                chosen: token(1, b"He", f32::NAN),
                top: Vec::new(),
            },
            PositionLogprobs {
                chosen: token(2, "llé".as_bytes(), -0.5),
                top: vec![token(2, "llé".as_bytes(), -0.5), token(3, b"y", -1.5)],
            },
        ]
    }

    #[test]
    fn completions_get_parallel_arrays_with_nulls_for_the_first_prompt_token() {
        let body = completion(&positions(), 3);
        assert_eq!(body["tokens"], json!(["He", "llé"]));
        assert_eq!(body["token_logprobs"], json!([null, -0.5]));
        assert_eq!(
            body["top_logprobs"],
            json!([null, {"llé": -0.5, "y": -1.5}])
        );
        assert_eq!(body["text_offset"], json!([3, 5]));
    }

    #[test]
    fn chat_gets_token_objects_with_exact_bytes() {
        let body = chat(&positions()[1..]);
        let entry = &body["content"][0];
        assert_eq!(entry["token"], "llé");
        assert_eq!(entry["bytes"], json!([108, 108, 195, 169]));
        assert_eq!(
            entry["top_logprobs"][1],
            json!({"token": "y", "logprob": -1.5, "bytes": [121]})
        );
        assert_eq!(body["refusal"], Value::Null);
    }
}
