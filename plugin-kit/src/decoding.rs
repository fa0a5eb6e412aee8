//! The generation driver's state for one sequence: what the model's tokens become. Every path
//! (`generate`, `chat`, batched steps) feeds tokens through [`Decoding::accept`], which alone
//! decides each event's text and when the sequence ends, so the paths cannot disagree.

use std::time::Instant;

use pio_plugin_api::{
    FinishReason, GenerateResponse, GenerationParams, PluginError, PluginResult, Timings,
    TokenEvent,
};

use crate::{Decoder, Next, StopMatcher};

/// One sequence's output so far and the rules that end it.
pub(crate) struct Decoding<D> {
    decoder: D,
    stops: StopMatcher,
    /// Tokens the sequence may still generate at most, in total.
    limit: usize,
    tokens: Vec<u32>,
    /// Everything emitted so far.
    text: String,
    prompt_tokens: u32,
    started: Instant,
    first_token_at: Option<Instant>,
    finish: Option<FinishReason>,
}

impl<D: Decoder> Decoding<D> {
    /// Checks a prompt of `prompt_tokens` ids against a context of `context_length` positions
    /// and the request's limits, and starts decoding. Refused when not a single token could be
    /// generated: a batched sequence must yield a token at every step, and every path refuses
    /// alike. The last generated token is never fed back, so a prompt that fills the context
    /// still gets one.
    pub(crate) fn start(
        decoder: D,
        params: &GenerationParams,
        prompt_tokens: usize,
        context_length: u32,
    ) -> PluginResult<Self> {
        if prompt_tokens == 0 {
            return Err(PluginError::invalid_input(
                "the prompt is empty: there is nothing to continue",
            ));
        }
        let context = context_length as usize;
        if prompt_tokens > context {
            return Err(PluginError::invalid_input(format!(
                "prompt has {prompt_tokens} tokens but the context holds {context_length}"
            )));
        }
        if params.max_new_tokens == 0 {
            return Err(PluginError::invalid_input(
                "max_new_tokens is 0: nothing to generate",
            ));
        }
        let stops: Vec<String> = params.stop.iter().map(|s| s.to_string()).collect();
        Ok(Self {
            decoder,
            stops: StopMatcher::new(&stops),
            limit: (params.max_new_tokens as usize).min(context - prompt_tokens + 1),
            tokens: Vec::new(),
            text: String::new(),
            prompt_tokens: prompt_tokens as u32,
            started: Instant::now(),
            first_token_at: None,
            finish: None,
        })
    }

    /// The event for the model's next token and, when it ends the sequence, why: `stop` for a
    /// final or end-of-generation token or a completed stop string (whose text is never
    /// emitted), `length` for the last token the limits allow. The last event carries every
    /// piece of text still held back.
    pub(crate) fn accept(
        &mut self,
        next: Next,
    ) -> PluginResult<(TokenEvent, Option<FinishReason>)> {
        debug_assert!(self.finish.is_none(), "a finished sequence was stepped");
        self.first_token_at.get_or_insert_with(Instant::now);
        let index = self.tokens.len();
        let token = next.token();
        self.tokens.push(token);
        let is_last = self.tokens.len() >= self.limit;

        let mut text = String::new();
        let mut matched = false;
        if !matches!(next, Next::EndOfGeneration(_)) {
            let step = self.stops.push(&self.decoder.push(token)?);
            text = step.emit;
            matched = step.stopped;
        }
        let ends_naturally = !matches!(next, Next::Token(_));
        if !matched && (ends_naturally || is_last) {
            let step = self.stops.push(&self.decoder.finish());
            text.push_str(&step.emit);
            matched = step.stopped;
            if !matched {
                text.push_str(&self.stops.flush());
            }
        }
        let finish = if ends_naturally || matched {
            Some(FinishReason::Stop)
        } else if is_last {
            Some(FinishReason::Length)
        } else {
            None
        };
        self.finish = finish;
        self.text.push_str(&text);
        let event = TokenEvent {
            index: index as u32,
            token,
            text: text.into(),
        };
        Ok((event, finish))
    }

    /// The most tokens the sequence may generate: `max_new_tokens` within the context.
    pub(crate) fn limit(&self) -> u32 {
        // At most `max_new_tokens`, a u32.
        self.limit as u32
    }

    /// Ends the sequence because the host asked to stop; text still held back is dropped.
    pub(crate) fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Cancelled);
    }

    /// Why the sequence ended, once it has.
    pub(crate) fn finish(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Tokens of the prompt.
    pub(crate) fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }

    /// Prompt and generated tokens: what the usage counters add.
    pub(crate) fn processed_tokens(&self) -> u64 {
        u64::from(self.prompt_tokens) + self.tokens.len() as u64
    }

    /// The response of a finished `generate` / `chat`.
    pub(crate) fn into_response(self) -> GenerateResponse {
        let ended = Instant::now();
        let first = self.first_token_at.unwrap_or(ended);
        GenerateResponse {
            text: self.text.into(),
            tokens: self.tokens.into(),
            prompt_tokens: self.prompt_tokens,
            finish_reason: self.finish.unwrap_or(FinishReason::Cancelled),
            timings: Timings {
                prompt_ms: ms_between(self.started, first),
                generation_ms: ms_between(first, ended),
            },
        }
    }
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CharTokenizer;

    fn params(max_new_tokens: u32, stop: &[&str]) -> GenerationParams {
        let mut params = GenerationParams::greedy(max_new_tokens);
        params.stop = stop.iter().map(|s| (*s).into()).collect();
        params
    }

    /// Feeds the characters of `output` (the last one as `last`) and collects event texts.
    fn decode(
        params: &GenerationParams,
        output: &str,
        last: fn(u32) -> Next,
    ) -> (Vec<String>, Option<FinishReason>) {
        let mut decoding = Decoding::start(CharTokenizer, params, 1, 100).unwrap();
        let chars: Vec<u32> = output.chars().map(u32::from).collect();
        let mut texts = Vec::new();
        for (i, &c) in chars.iter().enumerate() {
            let next = if i + 1 == chars.len() {
                last(c)
            } else {
                Next::Token(c)
            };
            let (event, finish) = decoding.accept(next).unwrap();
            assert_eq!(event.index as usize, i);
            texts.push(event.text.into_string());
            if finish.is_some() {
                break;
            }
        }
        (texts, decoding.finish())
    }

    #[test]
    fn a_stop_string_across_tokens_is_held_back_and_never_emitted() {
        let (texts, finish) = decode(&params(100, &["cd"]), "abcde", Next::Final);
        assert_eq!(texts, ["a", "b", "", ""]);
        assert_eq!(finish, Some(FinishReason::Stop));
    }

    #[test]
    fn held_back_text_is_released_when_no_stop_string_follows() {
        let (texts, finish) = decode(&params(100, &["bX"]), "abc", Next::Token);
        assert_eq!(texts, ["a", "", "bc"]);
        assert_eq!(finish, None);
    }

    #[test]
    fn the_last_token_releases_held_back_text() {
        let (texts, finish) = decode(&params(100, &["bX"]), "ab", Next::Final);
        assert_eq!(texts, ["a", "b"]);
        assert_eq!(finish, Some(FinishReason::Stop));
        let (texts, finish) = decode(&params(2, &["bX"]), "abc", Next::Token);
        assert_eq!(texts, ["a", "b"]);
        assert_eq!(finish, Some(FinishReason::Length));
    }

    #[test]
    fn max_new_tokens_and_the_context_limit_the_output() {
        let (texts, finish) = decode(&params(3, &[]), "abcdef", Next::Token);
        assert_eq!(
            (texts.concat(), finish),
            ("abc".into(), Some(FinishReason::Length))
        );
        // A prompt of 1 token in a context of 100 leaves room for 100: 99 fed back, the last
        // one not.
        let mut decoding = Decoding::start(CharTokenizer, &params(1000, &[]), 1, 100).unwrap();
        assert_eq!(decoding.limit(), 100);
        let ends = (0..200)
            .position(|_| decoding.accept(Next::Token(97)).unwrap().1.is_some())
            .unwrap();
        assert_eq!(ends + 1, 100);
        // A prompt that fills the context gets one token.
        let mut full = Decoding::start(CharTokenizer, &params(1000, &[]), 100, 100).unwrap();
        assert_eq!(
            full.accept(Next::Token(97)).unwrap().1,
            Some(FinishReason::Length)
        );
    }

    #[test]
    fn an_end_of_generation_token_has_no_text_but_flushes_what_is_held() {
        let (texts, finish) = decode(&params(100, &["bX"]), "abZ", Next::EndOfGeneration);
        assert_eq!(texts, ["a", "", "b"]);
        assert_eq!(finish, Some(FinishReason::Stop));
    }

    #[test]
    fn refuses_what_cannot_produce_a_token() {
        let refused = |params: &GenerationParams, prompt, context| {
            Decoding::start(CharTokenizer, params, prompt, context)
                .err()
                .unwrap()
                .message
                .into_string()
        };
        assert!(refused(&params(5, &[]), 0, 10).contains("prompt is empty"));
        assert!(refused(&params(0, &[]), 1, 10).contains("max_new_tokens is 0"));
        assert_eq!(
            refused(&params(5, &[]), 5, 4),
            "prompt has 5 tokens but the context holds 4"
        );
    }

    #[test]
    fn timings_and_counts_cover_the_sequence() {
        let mut decoding = Decoding::start(CharTokenizer, &params(2, &[]), 3, 10).unwrap();
        decoding.accept(Next::Token(97)).unwrap();
        decoding.accept(Next::Token(98)).unwrap();
        assert_eq!(decoding.processed_tokens(), 5);
        let response = decoding.into_response();
        assert_eq!((response.text.as_str(), response.prompt_tokens), ("ab", 3));
        assert_eq!(response.finish_reason, FinishReason::Length);
        assert!(response.timings.prompt_ms >= 0.0 && response.timings.generation_ms >= 0.0);
    }
}
