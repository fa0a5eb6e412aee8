//! The two text endpoints, `/v1/chat/completions` and `/v1/completions`: a request becomes its
//! choices (`n` per prompt, each prompt of a completions array, the prompt echoed with its
//! log-probabilities when asked), which are queued as sequences and answered together — as one
//! JSON body, or as one stream of chunks tagged with each choice's index.

use axum::{
    http::{HeaderMap, StatusCode},
    response::{sse::Sse, IntoResponse, Response},
};
use pio_host::{
    ChatRequest, DecodeOptions, ErrorKind, FinishReason, GenerateRequest, HostError, Prompt,
    SequenceRequest,
};

use super::{
    engine::{Completion, EngineError, Sequence, SequenceEvent, SequenceHandle},
    error::ApiError,
    openai::{ChatCompletionRequest, Choice, CompletionRequest, Echo, Endpoint, ResponseMeta},
    routes::{admit, json_response, priority},
    stream::{ChoiceEvents, CompletionStream},
    App,
};

/// One choice to generate.
struct Planned {
    index: u32,
    counts_prompt: bool,
    /// `None`: the choice is the echoed prompt alone (`max_tokens: 0` with `echo`).
    sequence: Option<Sequence>,
    echo: Option<Echo>,
}

/// What every choice of a request shares.
struct Request<'a> {
    endpoint: Endpoint,
    model: &'a str,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    app: &App,
    headers: &HeaderMap,
    request: ChatCompletionRequest,
) -> Result<Response, ApiError> {
    let sampling = &request.sampling;
    let logprobs = request.logprobs()?;
    let sequence = Sequence {
        request: SequenceRequest::Chat(ChatRequest {
            messages: request.messages()?,
            params: sampling.params(app.limits())?,
        }),
        options: DecodeOptions {
            logprobs,
            constraint: sampling.constraint()?,
        },
    };
    let planned = (0..sampling.choices()?)
        .map(|choice| Planned {
            index: choice,
            counts_prompt: choice == 0,
            sequence: Some(reseeded(&sequence, choice)),
            echo: None,
        })
        .collect();
    let shared = Request {
        endpoint: Endpoint::Chat,
        model: &request.model,
        stream: sampling.stream,
        include_usage: sampling.include_usage(),
        logprobs: logprobs.is_some(),
    };
    let priority = admit(
        priority(sampling.priority, headers)?,
        sampling.keep_alive.as_ref(),
    )?;
    answer(app, shared, priority, planned).await
}

/// `POST /v1/completions`.
pub async fn completion(
    app: &App,
    headers: &HeaderMap,
    request: CompletionRequest,
) -> Result<Response, ApiError> {
    let sampling = &request.sampling;
    let prompts = request.prompts()?;
    let logprobs = request.logprobs()?;
    let priority = admit(
        priority(sampling.priority, headers)?,
        sampling.keep_alive.as_ref(),
    )?;
    // `max_tokens: 0` with `echo` and `logprobs` scores the prompt alone (how evaluation
    // harnesses ask for a text's log-likelihood).
    let score_only = request.echo && logprobs.is_some() && sampling.asks_no_tokens();
    let params = match score_only {
        true => None,
        false => Some(sampling.params(app.limits())?),
    };
    let options = DecodeOptions {
        logprobs,
        constraint: sampling.constraint()?,
    };
    let n = sampling.choices()?;
    let mut planned = Vec::new();
    for (number, prompt) in prompts.into_iter().enumerate() {
        let echo = match request.echo {
            true => Some(echo(app, &request.model, priority, &prompt, logprobs).await?),
            false => None,
        };
        for choice in 0..n {
            let sequence = params.as_ref().map(|params| Sequence {
                request: SequenceRequest::Generate(GenerateRequest {
                    prompt: prompt.clone(),
                    params: params.clone(),
                }),
                options: options.clone(),
            });
            planned.push(Planned {
                index: number as u32 * n + choice,
                counts_prompt: choice == 0,
                sequence: sequence.map(|sequence| reseeded(&sequence, choice)),
                echo: echo.clone(),
            });
        }
    }
    let shared = Request {
        endpoint: Endpoint::Completion,
        model: &request.model,
        stream: sampling.stream,
        include_usage: sampling.include_usage(),
        logprobs: logprobs.is_some(),
    };
    answer(app, shared, priority, planned).await
}

/// Choice `choice` of a request: with the request's seed, each choice gets its own (seed + choice
/// number), so `n` seeded choices differ and are reproducible.
fn reseeded(sequence: &Sequence, choice: u32) -> Sequence {
    let mut sequence = sequence.clone();
    let params = match &mut sequence.request {
        SequenceRequest::Generate(request) => &mut request.params,
        SequenceRequest::Chat(request) => &mut request.params,
    };
    params.seed = params.seed.map(|seed| seed.wrapping_add(u64::from(choice)));
    sequence
}

/// The prompt a completion echoes: as given, and scored by the plugin when log-probabilities
/// are asked for (token ids are echoed as the plugin's text for them).
async fn echo(
    app: &App,
    model: &str,
    priority: super::engine::Admit,
    prompt: &Prompt,
    logprobs: Option<u32>,
) -> Result<Echo, ApiError> {
    let given_text = match prompt {
        Prompt::Text(text) => Some(text.clone()),
        Prompt::Tokens(_) => None,
    };
    let prompt = prompt.clone();
    let Some(top) = logprobs else {
        let text = match (given_text, prompt) {
            (Some(text), _) => text,
            (None, Prompt::Tokens(tokens)) => {
                app.engine
                    .call(model, priority, move |manager, reference| {
                        manager.detokenize(reference, &tokens)
                    })
                    .await?
            }
            (None, Prompt::Text(text)) => text,
        };
        return Ok(Echo {
            text,
            logprobs: Vec::new(),
        });
    };
    let scored = app
        .engine
        .call(model, priority, move |manager, reference| {
            manager.score(reference, &prompt, top)
        })
        .await
        .map_err(refused_prompt)?
        .response;
    let text = given_text.unwrap_or_else(|| {
        let bytes: Vec<u8> = scored.iter().flat_map(|p| p.chosen.bytes.clone()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    });
    Ok(Echo {
        text,
        logprobs: scored,
    })
}

/// A plugin's refusal of a prompt (too long, ids outside the vocabulary) is the client's
/// mistake; everything else keeps its status.
fn refused_prompt(error: EngineError) -> ApiError {
    match error {
        EngineError::Host(HostError::Plugin { error, .. })
            if error.kind == ErrorKind::InvalidInput =>
        {
            ApiError::invalid("prompt", error.message.to_string())
        }
        error => error.into(),
    }
}

/// Queues every planned choice and answers with all of them, or streams them.
///
/// Each choice's first event is awaited before answering, so a request the plugin refuses (a
/// prompt longer than the context, an invalid schema) gets its 4xx status even when streaming.
async fn answer(
    app: &App,
    request: Request<'_>,
    priority: super::engine::Admit,
    planned: Vec<Planned>,
) -> Result<Response, ApiError> {
    let mut started = Vec::with_capacity(planned.len());
    for plan in planned {
        let handle = match plan.sequence {
            Some(sequence) => Some(app.engine.submit_sequence(
                request.model,
                priority,
                sequence,
            )?),
            None => None,
        };
        started.push((plan.index, plan.counts_prompt, plan.echo, handle));
    }
    let mut choices = Vec::with_capacity(started.len());
    for (index, counts_prompt, echo, handle) in started {
        let (first, events) = match handle {
            Some(mut handle) => {
                let first = next_event(&mut handle, app, request.model).await?;
                if let SequenceEvent::Finished(Err(error)) = first {
                    return Err(error.into());
                }
                (first, handle)
            }
            None => echo_only(echo.as_ref()),
        };
        choices.push((
            ChoiceEvents {
                index,
                counts_prompt,
                first,
                events: events.events,
                echo,
            },
            events.deadline,
        ));
    }
    let meta = ResponseMeta::new(request.endpoint, app.next_request_number(), request.model);
    if request.stream {
        let choices = choices.into_iter().map(|(choice, _)| choice).collect();
        let stream = CompletionStream::new(
            request.endpoint,
            meta,
            choices,
            request.include_usage,
            request.logprobs,
        );
        return Ok(Sse::new(stream).into_response());
    }
    let mut finished = Vec::with_capacity(choices.len());
    for (choice, deadline) in choices {
        let mut handle = SequenceHandle {
            events: choice.events,
            deadline,
        };
        let mut event = choice.first;
        let completion = loop {
            match event {
                SequenceEvent::Logprobs(_) | SequenceEvent::Text(_) => {
                    event = next_event(&mut handle, app, request.model).await?;
                }
                SequenceEvent::Finished(result) => break result?,
            }
        };
        finished.push(Choice {
            index: choice.index,
            counts_prompt: choice.counts_prompt,
            completion,
            echo: choice.echo,
        });
    }
    let body = request
        .endpoint
        .response(&meta, &finished, request.logprobs);
    Ok(json_response(StatusCode::OK, &body))
}

/// The events of a choice that generates nothing: it ends at once, its text the echo alone.
fn echo_only(echo: Option<&Echo>) -> (SequenceEvent, SequenceHandle) {
    let prompt_tokens = echo.map_or(0, |echo| echo.logprobs.len() as u32);
    let completion = Completion {
        text: String::new(),
        prompt_tokens,
        completion_tokens: 0,
        finish: FinishReason::Length,
        plugin: String::new(),
        logprobs: Vec::new(),
    };
    let (_, events) = tokio::sync::mpsc::unbounded_channel();
    let handle = SequenceHandle {
        events,
        deadline: std::time::Instant::now(),
    };
    (SequenceEvent::Finished(Ok(completion)), handle)
}

/// The next event of a sequence for `model`, or the reason there is none before its deadline.
pub async fn next_event(
    handle: &mut SequenceHandle,
    app: &App,
    model: &str,
) -> Result<SequenceEvent, ApiError> {
    match tokio::time::timeout_at(handle.deadline.into(), handle.events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(EngineError::Stopped(model.to_owned()).into()),
        Err(_) => Err(EngineError::Timeout(app.config.request_timeout).into()),
    }
}
