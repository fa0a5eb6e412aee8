//! [`TextPlugin`]: a [`TextModel`] as a complete [`Plugin`] — the lifecycle, the conversion
//! between the API's types and the author's plain ones, and the generation driver shared by
//! `generate`, `chat` and batched sequences.

use pio_plugin_api::{
    ActivateOptions, ChatRequest, EmbedRequest, EmbedResponse, GenerateRequest, GenerateResponse,
    GenerationParams, Health, Plugin, PluginMetadata, PluginResult, PluginStats, Prompt,
    SequenceOpened, SequenceRequest, SequenceStep, StreamControl, TokenStream,
};

use crate::{
    decoding::Decoding,
    lifecycle::{Active, Lifecycle},
    sequences::{Open, Sequences},
    Message, Sampling, TextModel, Tokenizer,
};

/// A [`TextModel`] as a [`Plugin`]; export it with
/// [`export_text_model!`](crate::export_text_model).
///
/// Calls on one instance never overlap (the host serialises them), and the API's glue catches
/// every panic, so neither the model nor this adapter locks anything or guards against unwinding.
pub struct TextPlugin<M: TextModel> {
    lifecycle: Lifecycle<M, Sequences<M>>,
}

type ActiveText<M> = Active<M, Sequences<M>>;

impl<M: TextModel> TextPlugin<M> {
    fn active(&mut self) -> PluginResult<&mut ActiveText<M>> {
        self.lifecycle.active()
    }
}

/// The ids of a completion prompt: text is encoded with the model's special tokens.
fn prompt_ids<M: TextModel>(model: &M, prompt: &Prompt) -> PluginResult<Vec<u32>> {
    match prompt {
        Prompt::Text(text) => model.tokenizer().encode(text, true),
        Prompt::Tokens(tokens) => Ok(tokens.to_vec()),
    }
}

/// The ids of a conversation, through the model's chat template.
fn chat_ids<M: TextModel>(model: &M, request: &ChatRequest) -> PluginResult<Vec<u32>> {
    let messages: Vec<Message> = request.messages.iter().map(Message::from).collect();
    model.chat_prompt(&messages)
}

/// Checks a request and opens its sequence on the model.
fn start<M: TextModel>(
    model: &mut M,
    prompt: &[u32],
    params: &GenerationParams,
) -> PluginResult<Open<M>> {
    params.validate()?;
    model.tokenizer().check(prompt)?;
    let decoding = Decoding::start(
        model.tokenizer().decoder(),
        params,
        prompt.len(),
        model.context_length(),
    )?;
    let sequence = model.open(prompt, &Sampling::from(params))?;
    Ok(Open { sequence, decoding })
}

/// Runs one sequence to its end, streaming every token; the host's `Stop` cancels it.
fn run<M: TextModel>(
    active: &mut ActiveText<M>,
    prompt: &[u32],
    params: &GenerationParams,
    stream: &mut TokenStream<'_>,
) -> PluginResult<GenerateResponse> {
    let Open {
        mut sequence,
        mut decoding,
    } = start(&mut active.model, prompt, params)?;
    let outcome = stream_tokens(&mut active.model, &mut sequence, &mut decoding, stream);
    active.model.close(sequence);
    outcome?;
    active.usage.record(decoding.processed_tokens());
    Ok(decoding.into_response())
}

fn stream_tokens<M: TextModel>(
    model: &mut M,
    sequence: &mut M::Sequence,
    decoding: &mut Decoding<<M::Tokenizer as Tokenizer>::Decoder>,
    stream: &mut TokenStream<'_>,
) -> PluginResult<()> {
    loop {
        let (event, finish) = decoding.accept(model.step(sequence)?)?;
        let control = stream.send(event);
        if finish.is_some() {
            return Ok(());
        }
        if control == StreamControl::Stop {
            decoding.cancel();
            return Ok(());
        }
    }
}

impl<M: TextModel> Plugin for TextPlugin<M> {
    fn metadata() -> PluginMetadata {
        M::metadata()
    }

    fn new() -> PluginResult<Self> {
        Ok(Self {
            lifecycle: Lifecycle::new(),
        })
    }

    fn initialize(&mut self, config: serde_json::Value) -> PluginResult<()> {
        self.lifecycle.initialize(config)
    }

    fn activate(&mut self, options: &ActivateOptions) -> PluginResult<()> {
        self.lifecycle.activate(options)
    }

    fn deactivate(&mut self) -> PluginResult<()> {
        self.lifecycle.deactivate();
        Ok(())
    }

    fn infer(&mut self, request: serde_json::Value) -> PluginResult<serde_json::Value> {
        self.active()?.model.infer(request)
    }

    fn tokenize(&mut self, text: &str, add_special: bool) -> PluginResult<Vec<u32>> {
        self.active()?.model.tokenizer().encode(text, add_special)
    }

    fn detokenize(&mut self, tokens: &[u32]) -> PluginResult<String> {
        self.active()?.model.tokenizer().decode(tokens)
    }

    fn generate(
        &mut self,
        request: &GenerateRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        let active = self.active()?;
        let prompt = prompt_ids(&active.model, &request.prompt)?;
        run(active, &prompt, &request.params, stream)
    }

    fn chat(
        &mut self,
        request: &ChatRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        let active = self.active()?;
        let prompt = chat_ids(&active.model, request)?;
        run(active, &prompt, &request.params, stream)
    }

    fn embed(&mut self, request: &EmbedRequest) -> PluginResult<EmbedResponse> {
        let active = self.active()?;
        let texts: Vec<&str> = request.inputs.iter().map(|t| t.as_str()).collect();
        let embeddings = active.model.embed(&texts)?;
        active.usage.record(u64::from(embeddings.prompt_tokens));
        Ok(EmbedResponse {
            embeddings: embeddings.vectors.into_iter().map(Into::into).collect(),
            dimensions: embeddings.dimensions,
            prompt_tokens: embeddings.prompt_tokens,
        })
    }

    fn stats(&self) -> PluginStats {
        self.lifecycle.stats(|active, details| {
            let sequences = &active.session;
            details.insert("largest_batch".to_owned(), sequences.largest_step().into());
            details.insert("open_sequences".to_owned(), sequences.count().into());
            details.insert(
                "vocab_size".to_owned(),
                active.model.tokenizer().vocab_size().into(),
            );
        })
    }

    fn health(&self) -> Health {
        self.lifecycle.health()
    }

    fn open_sequence(&mut self, request: &SequenceRequest) -> PluginResult<SequenceOpened> {
        let active = self.active()?;
        let (prompt, params) = match request {
            SequenceRequest::Generate(request) => {
                (prompt_ids(&active.model, &request.prompt)?, &request.params)
            }
            SequenceRequest::Chat(request) => (chat_ids(&active.model, request)?, &request.params),
        };
        let open = start(&mut active.model, &prompt, params)?;
        let prompt_tokens = open.decoding.prompt_tokens();
        let cached_tokens = active.model.reused_prompt_tokens(&open.sequence);
        let id = active.session.open(open);
        Ok(SequenceOpened {
            id,
            prompt_tokens,
            cached_tokens,
        })
    }

    fn step_sequences(&mut self, ids: &[u64]) -> PluginResult<Vec<SequenceStep>> {
        let active = self.active()?;
        active.session.step(&mut active.model, ids)
    }

    fn close_sequence(&mut self, id: u64) -> PluginResult<()> {
        let active = self.active()?;
        let Open { sequence, decoding } = active.session.close(id)?;
        active.model.close(sequence);
        active.usage.record(decoding.processed_tokens());
        Ok(())
    }
}
