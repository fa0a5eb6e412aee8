//! The example's generation "model": the prompt's characters in reverse order, one token at a
//! time, with stop strings, limits and cancellation handled as a real model must.
//!
//! [`MirrorSequence`] is the state of one sequence. The streaming `generate`/`chat` path runs
//! one to its end ([`MirrorSequence::stream`]); batched generation advances many by one token
//! per step ([`OpenSequences`](crate::batch::OpenSequences)). Both call the same
//! [`next_token`](MirrorSequence::next_token), so their results never differ.

use std::time::Instant;

use pio_plugin_api::{
    FinishReason, GenerateResponse, GenerationParams, PluginError, PluginResult, StreamControl,
    Timings, TokenEvent, TokenStream,
};

/// One sequence of the mirror model.
#[derive(Debug)]
pub struct MirrorSequence {
    /// The whole mirror image of the prompt.
    output: Vec<u32>,
    /// Tokens it may generate (`max_new_tokens`, bounded by the room left in the context).
    limit: usize,
    stops: Vec<String>,
    /// The text generated so far, stop strings cut off.
    text: String,
    /// Bytes of `text` already emitted.
    sent: usize,
    tokens: Vec<u32>,
    /// Set once the sequence has ended.
    finish: Option<FinishReason>,
    started: Instant,
}

/// One generated token and, if it ended the sequence, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The token and the text it completes.
    pub event: TokenEvent,
    /// Set on the last token.
    pub finish: Option<FinishReason>,
}

impl MirrorSequence {
    /// A sequence for `prompt` that may add at most `room` tokens to the context. Refused
    /// when it could not generate a single token (empty prompt, `max_new_tokens` 0): a batched
    /// sequence must produce a token at every step, and both paths refuse alike.
    pub fn new(prompt: &[u32], params: &GenerationParams, room: u32) -> PluginResult<Self> {
        if prompt.is_empty() {
            return Err(PluginError::invalid_input(
                "the prompt is empty: the mirror has nothing to generate",
            ));
        }
        let limit = params.max_new_tokens.min(room) as usize;
        if limit == 0 {
            return Err(PluginError::invalid_input(
                "max_new_tokens is 0: nothing to generate",
            ));
        }
        Ok(Self {
            output: prompt.iter().rev().copied().collect(),
            limit,
            stops: params.stop.iter().map(|s| s.to_string()).collect(),
            text: String::new(),
            sent: 0,
            tokens: Vec::new(),
            finish: None,
            started: Instant::now(),
        })
    }

    /// Tokens of the prompt.
    pub fn prompt_tokens(&self) -> u32 {
        self.output.len() as u32
    }

    /// Tokens generated so far.
    pub fn generated_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Why the sequence ended, once it has.
    pub fn finish(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Generates the next token; `None` once the sequence has ended. The text of the last
    /// token releases everything held back.
    pub fn next_token(&mut self) -> Option<Decoded> {
        if self.finish.is_some() {
            return None;
        }
        let index = self.tokens.len();
        let token = self.output[index];
        self.tokens.push(token);
        self.text
            .push(char::from_u32(token).unwrap_or(char::REPLACEMENT_CHARACTER));
        let stops: Vec<&str> = self.stops.iter().map(String::as_str).collect();
        let stop_at = stops.iter().filter_map(|s| self.text.find(s)).min();
        let finish = if let Some(at) = stop_at {
            self.text.truncate(at);
            Some(FinishReason::Stop)
        } else if index + 1 == self.output.len() {
            Some(FinishReason::Stop)
        } else if index + 1 == self.limit {
            Some(FinishReason::Length)
        } else {
            None
        };
        // A stop string's text is never emitted; a possible start of one is held back until
        // it is known not to be one, or the sequence ends.
        let end = match finish {
            Some(_) => self.text.len(),
            None => safe_prefix_len(&self.text, &stops),
        };
        let start = self.sent.min(end);
        self.sent = end;
        self.finish = finish;
        Some(Decoded {
            event: TokenEvent {
                index: index as u32,
                token,
                text: self.text[start..end].into(),
            },
            finish,
        })
    }

    /// Streams tokens until the sequence ends or the host asks to stop.
    pub fn stream(mut self, stream: &mut TokenStream<'_>) -> GenerateResponse {
        while let Some(decoded) = self.next_token() {
            let control = stream.send(decoded.event);
            if decoded.finish.is_none() && control == StreamControl::Stop {
                self.finish = Some(FinishReason::Cancelled);
            }
        }
        GenerateResponse {
            prompt_tokens: self.prompt_tokens(),
            finish_reason: self.finish.unwrap_or(FinishReason::Cancelled),
            timings: Timings {
                prompt_ms: 0.0,
                generation_ms: self.started.elapsed().as_secs_f64() * 1e3,
            },
            text: self.text.into(),
            tokens: self.tokens.into(),
        }
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
        let response = MirrorSequence::new(&tokens, &params, 1000)
            .unwrap()
            .stream(&mut TokenStream::new(sink.as_sink()));
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

    #[test]
    fn the_last_token_releases_held_back_text() {
        let mut params = GenerationParams::greedy(100);
        params.stop = vec!["aX".into()].into();
        let (response, streamed) = run("ab", params, None);
        assert_eq!((response.text.as_str(), streamed.as_str()), ("ba", "ba"));
    }

    #[test]
    fn refuses_what_cannot_produce_a_token() {
        let error = MirrorSequence::new(&[], &GenerationParams::greedy(5), 10).unwrap_err();
        assert!(error.message.contains("prompt is empty"), "{error:?}");
        let error = MirrorSequence::new(&[97], &GenerationParams::greedy(0), 10).unwrap_err();
        assert!(error.message.contains("max_new_tokens"), "{error:?}");
    }
}
