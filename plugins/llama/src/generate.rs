//! The generation loop: prefill the prompt, then sample and decode one token at a time, streaming
//! text to a callback, until an end-of-generation token, a stop string, the token limit or a
//! cancellation ends it.
//!
//! The loop only needs a [`Forward`] (anything that turns tokens into logits with a KV cache) and
//! a [`Detokenizer`], so it runs unchanged over the GPU model and the CPU reference.

use std::time::Instant;

use std::borrow::Borrow;

use pio_plugin_api::{FinishReason, StreamControl, Timings, TokenEvent};
use pio_text::{StreamDecoder, TextTokenizer};

use crate::error::{Error, Result};
use crate::sampler::{Sampler, SamplingParams};
use pio_plugin_kit::StopMatcher;

/// A causal language model with a KV cache, seen as a function from tokens to logits.
pub trait Forward {
    /// Number of logits per position.
    fn vocab_size(&self) -> usize;

    /// Number of positions the KV cache holds.
    fn context_length(&self) -> usize;

    /// Runs `tokens` at positions `start_pos..start_pos + tokens.len()`, attending to the cached
    /// keys and values of positions `0..start_pos` (written by earlier calls) and overwriting the
    /// cache from `start_pos` on.
    ///
    /// Returns the logits of every processed position (`tokens.len() * vocab_size` values, row
    /// per position) when `all_logits` is set, otherwise only those of the last position.
    fn forward(&mut self, tokens: &[u32], start_pos: usize, all_logits: bool) -> Result<Vec<f32>>;

    /// Runs `tokens` like [`Forward::forward`] and picks the token that follows the last one
    /// with `sampler`, `history` being every token seen so far (for the repetition penalty).
    ///
    /// The default reads the logits back and samples on the CPU; a model that can sample where
    /// its logits are (on the device) overrides it and returns only the token id.
    fn next_token(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        sampler: &mut Sampler,
        history: &[u32],
    ) -> Result<u32> {
        let logits = self.forward(tokens, start_pos, false)?;
        sampler.sample(&logits, history)
    }
}

/// Turns generated tokens into text incrementally.
pub trait Detokenizer {
    /// Adds `token` and returns the text it completes (empty while, e.g., a UTF-8 sequence is
    /// still incomplete).
    fn push(&mut self, token: u32) -> Result<String>;

    /// Returns whatever text is still buffered; called once, when generation ends.
    fn finish(&mut self) -> String;
}

impl<T: Borrow<TextTokenizer>> Detokenizer for StreamDecoder<T> {
    fn push(&mut self, token: u32) -> Result<String> {
        Ok(StreamDecoder::push(self, token)?.unwrap_or_default())
    }

    fn finish(&mut self) -> String {
        StreamDecoder::finish(self).unwrap_or_default()
    }
}

impl<D: Detokenizer + ?Sized> Detokenizer for &mut D {
    fn push(&mut self, token: u32) -> Result<String> {
        (**self).push(token)
    }

    fn finish(&mut self) -> String {
        (**self).finish()
    }
}

/// Turns sampled tokens into stream events: detokenizes them, holds back text that could begin
/// a stop string, and decides when generation ends (an end-of-generation token, a stop string,
/// or the token limit). Shared by [`generate`] and batched sequences.
pub struct Emitter<D: Detokenizer> {
    detok: D,
    stops: StopMatcher,
    eog_ids: Vec<u32>,
    max_new: usize,
    emitted: usize,
}

impl<D: Detokenizer> Emitter<D> {
    /// An emitter for at most `max_new` tokens (at least 1).
    pub fn new(detok: D, stop_strings: &[String], eog_ids: Vec<u32>, max_new: usize) -> Self {
        Emitter {
            detok,
            stops: StopMatcher::new(stop_strings),
            eog_ids,
            max_new,
            emitted: 0,
        }
    }

    /// The event for the next sampled `token` and, when it ends the generation, why:
    /// [`FinishReason::Stop`] for an end-of-generation token or a completed stop string (neither
    /// is emitted), [`FinishReason::Length`] for the last allowed token (its event carries the
    /// text still held back).
    pub fn accept(&mut self, token: u32) -> Result<(TokenEvent, Option<FinishReason>)> {
        let index = self.emitted;
        self.emitted += 1;
        let is_eog = self.eog_ids.contains(&token);
        let is_last = self.emitted >= self.max_new;

        let mut text = String::new();
        let mut matched = false;
        if !is_eog {
            let step = self.stops.push(&self.detok.push(token)?);
            text = step.emit;
            matched = step.stopped;
        }
        if !matched && (is_eog || is_last) {
            let step = self.stops.push(&self.detok.finish());
            text.push_str(&step.emit);
            matched = step.stopped;
            if !matched {
                text.push_str(&self.stops.flush());
            }
        }
        let finish = if is_eog || matched {
            Some(FinishReason::Stop)
        } else if is_last {
            Some(FinishReason::Length)
        } else {
            None
        };
        let event = TokenEvent {
            index: index as u32,
            token,
            text: text.as_str().into(),
        };
        Ok((event, finish))
    }
}

/// What to generate and when to stop.
#[derive(Debug, Clone, Default)]
pub struct GenerateConfig {
    /// Upper bound on sampled tokens (the end-of-generation token counts). Clamped, with a
    /// warning, to what the context has room for: `context_length - prompt_len + 1`.
    pub max_new_tokens: usize,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Strings that end generation; neither they nor anything after them is emitted.
    pub stop_strings: Vec<String>,
    /// Token ids that end generation (end-of-sequence, end-of-turn, ...).
    pub eog_ids: Vec<u32>,
}

/// The outcome of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Emitted text: the concatenation of every streamed event's text.
    pub text: String,
    /// Every sampled token, including a final end-of-generation token.
    pub tokens: Vec<u32>,
    /// Number of prompt tokens processed.
    pub prompt_tokens: usize,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Prompt processing (up to the first sampled token) and generation wall-clock times.
    pub timings: Timings,
}

/// Checks that `prompt` has tokens and fits a context of `context` positions.
pub fn check_prompt(prompt: &[u32], context: usize) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::InvalidParams("the prompt has no tokens".into()));
    }
    if prompt.len() > context {
        return Err(Error::PromptTooLong {
            prompt: prompt.len(),
            context,
        });
    }
    Ok(())
}

/// Largest number of tokens that can be sampled after a prompt of `prompt_len` tokens: every
/// sampled token but the last must be fed back, and positions run up to `context_length - 1`.
pub fn room_for_new_tokens(prompt_len: usize, context_length: usize) -> usize {
    (context_length + 1).saturating_sub(prompt_len)
}

/// Generates a continuation of `prompt`.
///
/// After every sampled token, `on_token` receives a [`TokenEvent`] whose text is what that token
/// made emittable (possibly empty: held back because it could begin a stop string, or an
/// incomplete UTF-8 sequence). For an end-of-generation token or the last token allowed by the
/// limit, the event carries the remaining held-back text. Returning [`StreamControl::Stop`] ends
/// generation at once with [`FinishReason::Cancelled`] (text still held back is dropped).
///
/// Errors: an empty prompt, a prompt longer than the context ([`Error::PromptTooLong`]), invalid
/// sampling parameters, or a failing forward pass.
pub fn generate<F: Forward + ?Sized>(
    model: &mut F,
    detok: &mut dyn Detokenizer,
    prompt: &[u32],
    config: &GenerateConfig,
    on_token: &mut dyn FnMut(&TokenEvent) -> StreamControl,
) -> Result<Generation> {
    let start = Instant::now();
    let context = model.context_length();
    check_prompt(prompt, context)?;
    let vocab = model.vocab_size();
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::InvalidParams(format!(
            "prompt token {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let mut sampler = Sampler::new(config.sampling.clone())?;
    let room = room_for_new_tokens(prompt.len(), context);
    let max_new = if config.max_new_tokens > room {
        tracing::warn!(
            requested = config.max_new_tokens,
            allowed = room,
            "max_new_tokens exceeds the context; clamped"
        );
        room
    } else {
        config.max_new_tokens
    };

    let mut out = Generation {
        text: String::new(),
        tokens: Vec::new(),
        prompt_tokens: prompt.len(),
        finish_reason: FinishReason::Length,
        timings: Timings::default(),
    };
    if max_new == 0 {
        out.timings.prompt_ms = ms_since(start);
        return Ok(out);
    }

    let mut emitter = Emitter::new(detok, &config.stop_strings, config.eog_ids.clone(), max_new);
    let mut history = prompt.to_vec();
    let mut token = model.next_token(prompt, 0, &mut sampler, &history)?;
    let mut first_token_at = None;
    loop {
        first_token_at.get_or_insert_with(Instant::now);
        history.push(token);
        out.tokens.push(token);
        let (event, finish) = emitter.accept(token)?;
        out.text.push_str(&event.text);
        let control = on_token(&event);
        if finish == Some(FinishReason::Stop) {
            out.finish_reason = FinishReason::Stop;
            break;
        }
        if control == StreamControl::Stop {
            out.finish_reason = FinishReason::Cancelled;
            break;
        }
        if finish == Some(FinishReason::Length) {
            break;
        }
        token = model.next_token(&[token], history.len() - 1, &mut sampler, &history)?;
    }
    let first = first_token_at.unwrap_or(start);
    out.timings.prompt_ms = (first - start).as_secs_f64() * 1e3;
    out.timings.generation_ms = ms_since(first);
    Ok(out)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic fake model: the next token is a fixed function of the previous one and
    /// its position, checked against what it was fed so cache misuse shows up.
    pub(crate) struct Script {
        /// `next[t]` is the token the model predicts after token `t`.
        pub next: Vec<u32>,
        pub context: usize,
        /// Tokens at each cached position, to check callers feed positions in order.
        pub cache: Vec<u32>,
        pub calls: usize,
    }

    impl Script {
        pub fn new(next: Vec<u32>, context: usize) -> Self {
            Script {
                next,
                context,
                cache: Vec::new(),
                calls: 0,
            }
        }
    }

    impl Forward for Script {
        fn vocab_size(&self) -> usize {
            self.next.len()
        }
        fn context_length(&self) -> usize {
            self.context
        }
        fn forward(&mut self, tokens: &[u32], start: usize, all: bool) -> Result<Vec<f32>> {
            assert!(start <= self.cache.len(), "gap in the KV cache");
            assert!(start + tokens.len() <= self.context, "past the context");
            self.calls += 1;
            self.cache.truncate(start);
            self.cache.extend_from_slice(tokens);
            let rows: Vec<Vec<f32>> = tokens
                .iter()
                .map(|&t| {
                    let mut l = vec![0.0; self.next.len()];
                    l[self.next[t as usize] as usize] = 10.0;
                    l
                })
                .collect();
            Ok(if all {
                rows.concat()
            } else {
                rows.last().unwrap().clone()
            })
        }
    }

    /// Token `t` spells `pieces[t]`.
    pub(crate) struct Pieces(pub Vec<&'static str>);

    impl Detokenizer for Pieces {
        fn push(&mut self, token: u32) -> Result<String> {
            Ok(self.0[token as usize].to_owned())
        }
        fn finish(&mut self) -> String {
            String::new()
        }
    }

    /// Vocabulary: 0 "<eos>", 1 "A", 2 "B", 3 "C", 4 " S", 5 "TOP", 6 "D".
    fn pieces() -> Pieces {
        Pieces(vec!["<eos>", "A", "B", "C", " S", "TOP", "D"])
    }

    fn config(max_new_tokens: usize) -> GenerateConfig {
        GenerateConfig {
            max_new_tokens,
            eog_ids: vec![0],
            ..GenerateConfig::default()
        }
    }

    fn collect(
        model: &mut Script,
        prompt: &[u32],
        cfg: &GenerateConfig,
    ) -> (Result<Generation>, Vec<TokenEvent>) {
        let mut events = Vec::new();
        let r = generate(model, &mut pieces(), prompt, cfg, &mut |e| {
            events.push(e.clone());
            StreamControl::Continue
        });
        (r, events)
    }

    #[test]
    fn stops_on_end_of_generation_token() {
        // 1 -> 2 -> 3 -> 0 (eos)
        let mut m = Script::new(vec![0, 2, 3, 0, 0, 0, 0], 32);
        let (g, events) = collect(&mut m, &[1], &config(10));
        let g = g.unwrap();
        assert_eq!(g.tokens, vec![2, 3, 0]);
        assert_eq!(g.text, "BC");
        assert_eq!(g.finish_reason, FinishReason::Stop);
        let texts: Vec<&str> = events.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, vec!["B", "C", ""]);
        // Prefill plus one decode step per fed-back token (eos is not fed).
        assert_eq!(m.calls, 3);
        assert_eq!(m.cache, vec![1, 2, 3]);
    }

    #[test]
    fn stops_at_max_new_tokens() {
        // 1 -> 2 -> 1 -> 2 ...
        let mut m = Script::new(vec![0, 2, 1, 0, 0, 0, 0], 32);
        let (g, _) = collect(&mut m, &[1, 2, 1], &config(4));
        let g = g.unwrap();
        assert_eq!(g.tokens, vec![2, 1, 2, 1]);
        assert_eq!(g.text, "BABA");
        assert_eq!(g.finish_reason, FinishReason::Length);
        assert_eq!(g.prompt_tokens, 3);
    }

    #[test]
    fn stop_string_spanning_tokens_is_not_emitted() {
        // 1 A -> 4 " S" -> 5 "TOP" -> 6 "D"
        let mut m = Script::new(vec![0, 4, 0, 0, 5, 6, 6], 32);
        let cfg = GenerateConfig {
            stop_strings: vec!["STOP".into()],
            ..config(10)
        };
        let (g, events) = collect(&mut m, &[1], &cfg);
        let g = g.unwrap();
        assert_eq!(g.text, " ");
        assert_eq!(g.tokens, vec![4, 5]);
        assert_eq!(g.finish_reason, FinishReason::Stop);
        let texts: Vec<&str> = events.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, vec![" ", ""]);
    }

    #[test]
    fn held_back_text_is_released_on_the_last_token() {
        // " S" could start "STOP" but generation ends by length first.
        let mut m = Script::new(vec![0, 4, 0, 0, 1, 0, 0], 32);
        let cfg = GenerateConfig {
            stop_strings: vec!["STOP".into()],
            ..config(1)
        };
        let (g, events) = collect(&mut m, &[1], &cfg);
        assert_eq!(g.unwrap().text, " S");
        assert_eq!(events[0].text.as_str(), " S");
    }

    #[test]
    fn callback_cancels_within_one_token() {
        let mut m = Script::new(vec![0, 2, 1, 0, 0, 0, 0], 32);
        let mut seen = 0;
        let g = generate(&mut m, &mut pieces(), &[1], &config(100), &mut |_| {
            seen += 1;
            if seen == 2 {
                StreamControl::Stop
            } else {
                StreamControl::Continue
            }
        })
        .unwrap();
        assert_eq!(g.finish_reason, FinishReason::Cancelled);
        assert_eq!(g.tokens.len(), 2);
        assert_eq!(seen, 2);
        assert_eq!(g.text, "BA");
    }

    #[test]
    fn prompt_longer_than_context_is_an_error() {
        let mut m = Script::new(vec![0, 2, 1, 0, 0, 0, 0], 4);
        let (g, _) = collect(&mut m, &[1, 1, 1, 1, 1], &config(1));
        let err = g.unwrap_err();
        assert!(matches!(
            err,
            Error::PromptTooLong {
                prompt: 5,
                context: 4
            }
        ));
        assert_eq!(m.calls, 0);
    }

    #[test]
    fn max_new_tokens_is_clamped_to_the_context() {
        let mut m = Script::new(vec![0, 2, 1, 0, 0, 0, 0], 6);
        let (g, _) = collect(&mut m, &[1, 2, 1, 2], &config(100));
        let g = g.unwrap();
        // Positions 4 and 5 are free: 2 tokens are fed back, a third is sampled from position 5.
        assert_eq!(g.tokens.len(), 3);
        assert_eq!(g.finish_reason, FinishReason::Length);
        assert_eq!(m.cache.len(), 6);
    }

    #[test]
    fn empty_and_out_of_vocabulary_prompts_are_errors() {
        let mut m = Script::new(vec![0, 2, 1, 0, 0, 0, 0], 8);
        assert!(collect(&mut m, &[], &config(1)).0.is_err());
        let err = collect(&mut m, &[99], &config(1)).0.unwrap_err();
        assert!(err.to_string().contains("99"), "{err}");
    }
}
