//! The example's generation "model": the prompt's characters in reverse order, streamed one
//! token at a time with stop strings and cancellation handled as a real model must.

use pio_plugin_api::{
    FinishReason, GenerateResponse, GenerationParams, PluginResult, StreamControl, Timings,
    TokenEvent, TokenStream,
};

/// Generates the mirror image of a prompt.
pub struct MirrorGenerator<'p> {
    output: Vec<u32>,
    params: &'p GenerationParams,
    /// Tokens the context still has room for.
    room: u32,
}

impl<'p> MirrorGenerator<'p> {
    /// A generator for `prompt` that may add at most `room` tokens to the context.
    pub fn new(prompt: &[u32], params: &'p GenerationParams, room: u32) -> Self {
        Self {
            output: prompt.iter().rev().copied().collect(),
            params,
            room,
        }
    }

    /// Streams tokens until the mirror ends, a stop string appears, a limit is reached or the
    /// host asks to stop.
    pub fn run(self, stream: &mut TokenStream<'_>) -> PluginResult<GenerateResponse> {
        let started = std::time::Instant::now();
        let limit = self.params.max_new_tokens.min(self.room) as usize;
        let stops: Vec<&str> = self.params.stop.iter().map(|s| s.as_str()).collect();
        let mut text = String::new();
        // Bytes of `text` already sent to the host.
        let mut sent = 0;
        let mut tokens = Vec::new();
        let mut finish = FinishReason::Stop;

        for (index, &token) in self.output.iter().enumerate() {
            if index == limit {
                finish = FinishReason::Length;
                break;
            }
            tokens.push(token);
            text.push(char::from_u32(token).unwrap_or(char::REPLACEMENT_CHARACTER));
            if let Some(at) = stops.iter().filter_map(|s| text.find(s)).min() {
                text.truncate(at);
                let event = event(index, token, &text[sent.min(at)..]);
                stream.send(event);
                return Ok(response(
                    text,
                    tokens,
                    self.output.len(),
                    FinishReason::Stop,
                    started,
                ));
            }
            let safe = safe_prefix_len(&text, &stops);
            let control = stream.send(event(index, token, &text[sent..safe]));
            sent = safe;
            if control == StreamControl::Stop {
                finish = FinishReason::Cancelled;
                break;
            }
        }
        Ok(response(text, tokens, self.output.len(), finish, started))
    }
}

fn event(index: usize, token: u32, text: &str) -> TokenEvent {
    TokenEvent {
        index: index as u32,
        token,
        text: text.into(),
    }
}

fn response(
    text: String,
    tokens: Vec<u32>,
    prompt_tokens: usize,
    finish_reason: FinishReason,
    started: std::time::Instant,
) -> GenerateResponse {
    GenerateResponse {
        text: text.into(),
        tokens: tokens.into(),
        prompt_tokens: prompt_tokens as u32,
        finish_reason,
        timings: Timings {
            prompt_ms: 0.0,
            generation_ms: started.elapsed().as_secs_f64() * 1e3,
        },
    }
}

/// Length of the longest prefix of `text` that cannot be the start of a stop string: the rest
/// is held back until it is known not to begin one.
fn safe_prefix_len(text: &str, stops: &[&str]) -> usize {
    let held_back = stops
        .iter()
        .flat_map(|stop| {
            (1..stop.len())
                .filter(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
                .max()
        })
        .max()
        .unwrap_or(0);
    text.len() - held_back
}

#[cfg(test)]
mod tests {
    use super::*;
    use pio_plugin_api::FnSink;

    fn run(
        prompt: &str,
        params: GenerationParams,
        stop_after: Option<usize>,
    ) -> (GenerateResponse, String) {
        let tokens: Vec<u32> = prompt.chars().map(u32::from).collect();
        let mut streamed = String::new();
        let mut count = 0;
        let mut sink = FnSink(|e: &TokenEvent| {
            streamed.push_str(&e.text);
            count += 1;
            if Some(count) == stop_after {
                StreamControl::Stop
            } else {
                StreamControl::Continue
            }
        });
        let response = MirrorGenerator::new(&tokens, &params, 1000)
            .run(&mut TokenStream::new(sink.as_sink()))
            .unwrap();
        (response, streamed)
    }

    #[test]
    fn mirrors_the_prompt_and_streams_all_of_it() {
        let (response, streamed) = run("héllo", GenerationParams::greedy(100), None);
        assert_eq!(response.text.as_str(), "olléh");
        assert_eq!(streamed, "olléh");
        assert_eq!(response.finish_reason, FinishReason::Stop);
    }

    #[test]
    fn max_new_tokens_limits_output() {
        let (response, _) = run("abcdef", GenerationParams::greedy(2), None);
        assert_eq!(response.text.as_str(), "fe");
        assert_eq!(response.finish_reason, FinishReason::Length);
    }

    #[test]
    fn stop_string_text_is_never_streamed() {
        let mut params = GenerationParams::greedy(100);
        params.stop = vec!["dc".into()].into();
        let (response, streamed) = run("abcdef", params, None);
        assert_eq!(response.text.as_str(), "fe");
        assert_eq!(streamed, "fe");
        assert_eq!(response.finish_reason, FinishReason::Stop);
    }

    #[test]
    fn held_back_prefix_is_released_when_no_stop_follows() {
        let mut params = GenerationParams::greedy(100);
        params.stop = vec!["cX".into()].into();
        let (response, streamed) = run("abcd", params, None);
        assert_eq!(response.text.as_str(), "dcba");
        assert_eq!(streamed, "dcba");
    }

    #[test]
    fn host_can_cancel() {
        let (response, streamed) = run("abcdef", GenerationParams::greedy(100), Some(3));
        assert_eq!(response.tokens.len(), 3);
        assert_eq!(streamed, "fed");
        assert_eq!(response.finish_reason, FinishReason::Cancelled);
    }
}
