//! Server-sent events of a streaming completion: one `data: {chunk}` per piece of text, a last
//! chunk with the finish reason and usage, optionally a usage-only chunk, then `data: [DONE]`.
//! Dropping the stream (the client disconnected) drops the sequence's receiver, which makes
//! the scheduler stop the generation at its next token.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use axum::response::sse::Event;
use futures_core::Stream;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{
    engine::{EngineError, SequenceEvent},
    error::ApiError,
    openai::{Endpoint, ResponseMeta},
};

/// The SSE body of one streaming completion.
pub struct CompletionStream {
    endpoint: Endpoint,
    meta: ResponseMeta,
    events: UnboundedReceiver<SequenceEvent>,
    include_usage: bool,
    /// Events formatted and not yet sent.
    ready: VecDeque<Event>,
    /// Whether a text chunk has been sent (chat sends the role with the first).
    started: bool,
    done: bool,
}

impl CompletionStream {
    /// A stream that starts with `first` (already received) and continues with `events`.
    pub fn new(
        endpoint: Endpoint,
        meta: ResponseMeta,
        first: SequenceEvent,
        events: UnboundedReceiver<SequenceEvent>,
        include_usage: bool,
    ) -> Self {
        let mut stream = Self {
            endpoint,
            meta,
            events,
            include_usage,
            ready: VecDeque::new(),
            started: false,
            done: false,
        };
        stream.push(Some(first));
        stream
    }

    fn data(&mut self, value: serde_json::Value) {
        self.ready
            .push_back(Event::default().data(value.to_string()));
    }

    /// Formats the next sequence event (`None`: the scheduler went away without finishing).
    fn push(&mut self, event: Option<SequenceEvent>) {
        let finished = match event {
            Some(SequenceEvent::Text(text)) => {
                let chunk = self.endpoint.text_chunk(&self.meta, &text, !self.started);
                self.started = true;
                self.data(chunk);
                return;
            }
            Some(SequenceEvent::Finished(result)) => result,
            None => Err(EngineError::Stopped(self.meta.model.clone())),
        };
        match finished {
            Ok(completion) => {
                let chunk = self.endpoint.finish_chunk(&self.meta, &completion);
                self.data(chunk);
                if self.include_usage {
                    let chunk = self.endpoint.usage_chunk(&self.meta, &completion);
                    self.data(chunk);
                }
            }
            Err(error) => self.data(ApiError::from(error).body()),
        }
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
            match this.events.poll_recv(cx) {
                Poll::Ready(event) => this.push(event),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
