//! Server-sent events of a streaming completion: one `data: {chunk}` per piece of text of any
//! choice (with the log-probabilities of the tokens that made it, when asked for), a last chunk
//! per choice with its finish reason and usage, optionally a usage-only chunk for all choices,
//! then `data: [DONE]`. Dropping the stream (the client disconnected) drops every choice's
//! receiver, which makes the scheduler stop their generations at their next token.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use axum::response::sse::Event;
use futures_core::Stream;
use pio_host::PositionLogprobs;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{
    engine::{EngineError, SequenceEvent},
    error::ApiError,
    openai::{self, Choice, Echo, Endpoint, ResponseMeta},
};

/// One choice of a streaming completion.
pub struct ChoiceEvents {
    /// The choice's `index`.
    pub index: u32,
    /// Whether its prompt's tokens count in the usage (the first choice of each prompt).
    pub counts_prompt: bool,
    /// Its first event, already received.
    pub first: SequenceEvent,
    /// The rest.
    pub events: UnboundedReceiver<SequenceEvent>,
    /// The prompt its text starts with (completions' `echo`).
    pub echo: Option<Echo>,
}

/// A choice as the stream follows it.
struct Following {
    index: u32,
    counts_prompt: bool,
    events: UnboundedReceiver<SequenceEvent>,
    /// Log-probabilities received whose text has not been sent.
    unsent: Vec<PositionLogprobs>,
    /// Characters of text sent so far (where the next piece starts).
    sent_chars: usize,
    started: bool,
    finished: Option<Choice>,
}

/// The SSE body of one streaming completion.
pub struct CompletionStream {
    endpoint: Endpoint,
    meta: ResponseMeta,
    choices: Vec<Following>,
    include_usage: bool,
    logprobs: bool,
    /// Events formatted and not yet sent.
    ready: VecDeque<Event>,
    done: bool,
}

impl CompletionStream {
    /// A stream of `choices`; `logprobs` says whether the request asked for log-probabilities.
    pub fn new(
        endpoint: Endpoint,
        meta: ResponseMeta,
        choices: Vec<ChoiceEvents>,
        include_usage: bool,
        logprobs: bool,
    ) -> Self {
        let mut stream = Self {
            endpoint,
            meta,
            choices: Vec::new(),
            include_usage,
            logprobs,
            ready: VecDeque::new(),
            done: false,
        };
        for (at, choice) in choices.into_iter().enumerate() {
            stream.choices.push(Following {
                index: choice.index,
                counts_prompt: choice.counts_prompt,
                events: choice.events,
                unsent: Vec::new(),
                sent_chars: 0,
                started: false,
                finished: None,
            });
            if let Some(echo) = choice.echo {
                stream.choices[at].unsent = echo.logprobs;
                stream.text(at, &echo.text);
            }
            stream.push(at, Some(choice.first));
        }
        stream
    }

    fn data(&mut self, value: serde_json::Value) {
        self.ready
            .push_back(Event::default().data(value.to_string()));
    }

    /// Sends a piece of choice `at`'s text with the log-probabilities held for it.
    fn text(&mut self, at: usize, text: &str) {
        let choice = &mut self.choices[at];
        let unsent = std::mem::take(&mut choice.unsent);
        let chunk = self.endpoint.text_chunk(
            &self.meta,
            choice.index,
            text,
            !choice.started,
            self.logprobs.then_some(unsent.as_slice()),
            choice.sent_chars,
        );
        choice.started = true;
        choice.sent_chars += text.chars().count();
        self.data(chunk);
    }

    /// Formats choice `at`'s next event (`None`: the scheduler went away without finishing).
    fn push(&mut self, at: usize, event: Option<SequenceEvent>) {
        let finished = match event {
            Some(SequenceEvent::Logprobs(logprobs)) => {
                self.choices[at].unsent.extend(logprobs);
                return;
            }
            Some(SequenceEvent::Text(text)) => return self.text(at, &text),
            Some(SequenceEvent::Finished(result)) => result,
            None => Err(EngineError::Stopped(self.meta.model.clone())),
        };
        let completion = match finished {
            Ok(completion) => completion,
            Err(error) => {
                // One failed choice ends the stream; the others' receivers go with it.
                self.data(ApiError::from(error).body());
                return self.end();
            }
        };
        let choice = &mut self.choices[at];
        let unsent = std::mem::take(&mut choice.unsent);
        let finished = Choice {
            index: choice.index,
            counts_prompt: choice.counts_prompt,
            completion,
            echo: None,
        };
        let chunk = self.endpoint.finish_chunk(
            &self.meta,
            &finished,
            self.logprobs.then_some(unsent.as_slice()),
            choice.sent_chars,
        );
        choice.finished = Some(finished);
        self.data(chunk);
        if self.choices.iter().all(|c| c.finished.is_some()) {
            if self.include_usage {
                let usage = openai::usage(
                    self.choices
                        .iter()
                        .filter_map(|c| c.finished.as_ref())
                        .map(|c| (c.counts_prompt, &c.completion)),
                );
                let chunk = self.endpoint.usage_chunk(&self.meta, usage);
                self.data(chunk);
            }
            self.end();
        }
    }

    fn end(&mut self) {
        self.ready.push_back(Event::default().data("[DONE]"));
        self.done = true;
    }
}

impl Stream for CompletionStream {
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let ready = this
                .choices
                .iter_mut()
                .enumerate()
                .filter(|(_, choice)| choice.finished.is_none())
                .find_map(|(at, choice)| match choice.events.poll_recv(cx) {
                    Poll::Ready(event) => Some((at, event)),
                    Poll::Pending => None,
                });
            match ready {
                Some((at, event)) => this.push(at, event),
                None => return Poll::Pending,
            }
        }
    }
}
