//! [`TextPlugin`]: a [`TextModel`] as a complete [`Plugin`] — the lifecycle, the conversion
//! between the API's types and the author's plain ones, and the generation driver shared by
//! `generate`, `chat` and batched sequences.

use pio_plugin_api::{
    ActivateOptions, Capability, ChatRequest, CompressionReport, CompressionRequest, DecodeOptions,
    EmbedRequest, EmbedResponse, GenerateRequest, GenerateResponse, GenerationParams, Health,
    MemoryFreed, MemoryReport, Plugin, PluginError, PluginMetadata, PluginResult, PluginStats,
    PositionLogprobs, Prompt, SequenceOpened, SequenceRequest, SequenceStep, StreamControl,
    TokenStream,
};

use crate::{
    decoding::Decoding,
    lifecycle::{Active, Lifecycle},
    sequences::{position_logprobs, Extras, Open, Sequences},
    Logprobs, Message, Sampling, SequenceParams, TextModel, Tokenizer,
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

/// How a sequence will be stepped, which decides how the model opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stepping {
    /// By `generate` / `chat`, to its end within the call: [`TextModel::open_alone`].
    Alone,
    /// In batches, between other calls: [`TextModel::open`].
    Batched,
}

/// Checks a request and opens its sequence on the model.
fn start<M: TextModel>(
    model: &mut M,
    prompt: &[u32],
    params: &GenerationParams,
    stepping: Stepping,
) -> PluginResult<Open<M>> {
    params.validate()?;
    model.tokenizer().check(prompt)?;
    let decoding = Decoding::start(
        model.tokenizer().decoder(),
        params,
        prompt.len(),
        model.context_length(),
    )?;
    let params = SequenceParams {
        sampling: Sampling::from(params),
        max_new_tokens: decoding.limit(),
    };
    let sequence = match stepping {
        Stepping::Alone => model.open_alone(prompt, &params)?,
        Stepping::Batched => model.open(prompt, &params)?,
    };
    Ok(Open {
        sequence,
        decoding,
        extras: Extras::default(),
    })
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
        ..
    } = start(&mut active.model, prompt, params, Stepping::Alone)?;
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
    /// The model's metadata with the capabilities every text model has through the kit —
    /// `text-generation` and `batched-generation` — added where the model left them out.
    fn metadata() -> PluginMetadata {
        let mut metadata = M::metadata();
        for capability in [Capability::TextGeneration, Capability::BatchedGeneration] {
            if !metadata.has(capability) {
                metadata.capabilities.push(capability);
            }
        }
        metadata
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
        self.lifecycle.infer(request)
    }

    fn tokenize(&mut self, text: &str, add_special: bool) -> PluginResult<Vec<u32>> {
        self.lifecycle.tokenize(text, add_special)
    }

    fn detokenize(&mut self, tokens: &[u32]) -> PluginResult<String> {
        self.lifecycle.detokenize(tokens)
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
        self.lifecycle.embed(request)
    }

    fn stats(&self) -> PluginStats {
        self.lifecycle.stats(|active, details| {
            let sequences = &active.session;
            details.insert("largest_batch".to_owned(), sequences.largest_step().into());
            details.insert("open_sequences".to_owned(), sequences.count().into());
            let (masks, mask_ms) = sequences.mask_work();
            details.insert("grammar_masks".to_owned(), masks.into());
            details.insert("grammar_mask_ms".to_owned(), mask_ms.into());
        })
    }

    fn health(&self) -> Health {
        self.lifecycle.health()
    }

    fn memory_report(&mut self) -> PluginResult<MemoryReport> {
        self.lifecycle.memory_report()
    }

    fn estimate_memory(&mut self, options: &ActivateOptions) -> PluginResult<MemoryReport> {
        self.lifecycle.estimate_memory(options)
    }

    fn force_memory_cleanup(&mut self) -> PluginResult<MemoryFreed> {
        self.lifecycle.force_memory_cleanup()
    }

    fn compress(&mut self, request: &CompressionRequest) -> PluginResult<CompressionReport> {
        self.lifecycle.compress(request)
    }

    fn compression_stats(&mut self) -> PluginResult<Option<CompressionReport>> {
        self.lifecycle.compression_stats()
    }

    fn open_sequence(&mut self, request: &SequenceRequest) -> PluginResult<SequenceOpened> {
        self.open_sequence_with(request, &DecodeOptions::default())
    }

    fn open_sequence_with(
        &mut self,
        request: &SequenceRequest,
        options: &DecodeOptions,
    ) -> PluginResult<SequenceOpened> {
        options.validate()?;
        let active = self.active()?;
        let (prompt, params) = match request {
            SequenceRequest::Generate(request) => {
                (prompt_ids(&active.model, &request.prompt)?, &request.params)
            }
            SequenceRequest::Chat(request) => (chat_ids(&active.model, request)?, &request.params),
        };
        // The grammar is compiled before the prompt is processed: an invalid one costs nothing.
        let guide = options
            .constraint
            .as_ref()
            .into_option()
            .map(|constraint| active.session.guide(&active.model, constraint))
            .transpose()?;
        let mut open = start(&mut active.model, &prompt, params, Stepping::Batched)?;
        open.extras = Extras {
            guide,
            logprobs: options.logprobs.into_option(),
            unread: Vec::new(),
        };
        let prompt_tokens = open.decoding.prompt_tokens();
        let cached_tokens = active.model.reused_prompt_tokens(&open.sequence);
        let id = active.session.open(open);
        Ok(SequenceOpened {
            id,
            prompt_tokens,
            cached_tokens,
        })
    }

    fn sequence_logprobs(&mut self, id: u64) -> PluginResult<Vec<PositionLogprobs>> {
        self.active()?.session.take_logprobs(id)
    }

    fn score(&mut self, prompt: &Prompt, top: u32) -> PluginResult<Vec<PositionLogprobs>> {
        let active = self.active()?;
        let model = &mut active.model;
        let prompt = prompt_ids(model, prompt)?;
        model.tokenizer().check(&prompt)?;
        let context = model.context_length() as usize;
        if prompt.is_empty() {
            return Err(PluginError::invalid_input(
                "the prompt is empty: there is nothing to score",
            ));
        }
        if prompt.len() > context {
            return Err(PluginError::invalid_input(format!(
                "prompt has {} tokens but the context holds {context}",
                prompt.len()
            )));
        }
        let scored = model.score(&prompt, top)?;
        if scored.len() + 1 != prompt.len() {
            return Err(PluginError::internal(format!(
                "the model scored {} positions of a {}-token prompt",
                scored.len(),
                prompt.len()
            )));
        }
        active.usage.record(prompt.len() as u64);
        let tokenizer = model.tokenizer();
        // The first token has no context to be scored against.
        let first = Logprobs {
            logprob: f32::NAN,
            top: Vec::new(),
        };
        prompt
            .iter()
            .zip(std::iter::once(&first).chain(&scored))
            .map(|(&token, logprobs)| position_logprobs(tokenizer, token, logprobs, top))
            .collect()
    }

    fn step_sequences(&mut self, ids: &[u64]) -> PluginResult<Vec<SequenceStep>> {
        let active = self.active()?;
        active.session.step(&mut active.model, ids)
    }

    fn close_sequence(&mut self, id: u64) -> PluginResult<()> {
        let active = self.active()?;
        let Open {
            sequence, decoding, ..
        } = active.session.close(id)?;
        active.model.close(sequence);
        active.usage.record(decoding.processed_tokens());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use pio_plugin_api::{ChatMessage, ErrorKind, FinishReason, FnSink, HealthStatus, TokenEvent};
    use serde_json::json;

    use super::*;
    use crate::{metadata, Activation, CharTokenizer, Config, Model, ModelStats, Next};

    /// A deterministic model over characters: each token follows from the last one and the
    /// step count, and the sequence ends with an end-of-generation token after `length` steps.
    struct Counter {
        length: u32,
        activation: Activation,
        /// How each sequence was opened, and the most tokens it was opened for.
        opened: Vec<String>,
    }

    /// The end-of-generation token: NUL, which has no text to show.
    const EOG: u32 = 0;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CounterConfig {
        length: u32,
    }

    impl Config for CounterConfig {
        fn validate(&self) -> Result<(), String> {
            match self.length {
                0 => Err("length must be at least 1".to_owned()),
                _ => Ok(()),
            }
        }
    }

    struct Count {
        last: u32,
        steps: u32,
    }

    impl Model for Counter {
        type Config = CounterConfig;
        type Tokenizer = CharTokenizer;
        fn metadata() -> PluginMetadata {
            metadata!("counter").build()
        }
        fn activate(config: &CounterConfig, activation: &Activation) -> PluginResult<Self> {
            Ok(Self {
                length: config.length,
                activation: activation.clone(),
                opened: Vec::new(),
            })
        }
        fn tokenizer(&self) -> &CharTokenizer {
            &CharTokenizer
        }
        fn stats(&self) -> ModelStats {
            let mut details = serde_json::Map::new();
            details.insert(
                "activation".to_owned(),
                format!("{:?}", self.activation).into(),
            );
            details.insert("opened".to_owned(), self.opened.clone().into());
            ModelStats {
                host_memory_bytes: 7,
                details,
                ..ModelStats::default()
            }
        }
    }

    impl TextModel for Counter {
        type Sequence = Count;
        fn context_length(&self) -> u32 {
            64
        }
        fn chat_prompt(&self, messages: &[Message]) -> PluginResult<Vec<u32>> {
            let text: String = messages
                .iter()
                .map(|m| format!("{}:{}\n", m.role, m.content))
                .collect();
            CharTokenizer.encode(&text, true)
        }
        fn open(&mut self, prompt: &[u32], params: &SequenceParams) -> PluginResult<Count> {
            self.opened
                .push(format!("batched, {}", params.max_new_tokens));
            Ok(Count {
                last: prompt.iter().sum(),
                steps: 0,
            })
        }
        fn open_alone(&mut self, prompt: &[u32], params: &SequenceParams) -> PluginResult<Count> {
            self.opened
                .push(format!("alone, {}", params.max_new_tokens));
            Ok(Count {
                last: prompt.iter().sum(),
                steps: 0,
            })
        }
        fn step(&mut self, count: &mut Count) -> PluginResult<Next> {
            count.steps += 1;
            if count.steps > self.length {
                return Ok(Next::EndOfGeneration(EOG));
            }
            count.last = 'a' as u32 + (count.last + count.steps) % 26;
            Ok(Next::Token(count.last))
        }
    }

    fn plugin(length: u32) -> TextPlugin<Counter> {
        let mut plugin = TextPlugin::<Counter>::new().unwrap();
        plugin.initialize(json!({ "length": length })).unwrap();
        plugin.activate(&ActivateOptions::default()).unwrap();
        plugin
    }

    fn params(max_new_tokens: u32, stop: &[&str]) -> GenerationParams {
        let mut params = GenerationParams::greedy(max_new_tokens);
        params.stop = stop.iter().map(|s| (*s).into()).collect();
        params
    }

    /// Runs `request` through `generate` or `chat`, answering `Stop` after `stop_after` events.
    fn stream(
        plugin: &mut TextPlugin<Counter>,
        request: &SequenceRequest,
        stop_after: Option<usize>,
    ) -> (Vec<TokenEvent>, GenerateResponse) {
        let mut events = Vec::new();
        let mut sink = FnSink(|e: &TokenEvent| {
            events.push(e.clone());
            match stop_after == Some(events.len()) {
                true => StreamControl::Stop,
                false => StreamControl::Continue,
            }
        });
        let mut stream = TokenStream::new(sink.as_sink());
        let response = match request {
            SequenceRequest::Generate(r) => plugin.generate(r, &mut stream),
            SequenceRequest::Chat(r) => plugin.chat(r, &mut stream),
        }
        .unwrap();
        drop(stream);
        (events, response)
    }

    fn generate(prompt: &str, params: GenerationParams) -> SequenceRequest {
        SequenceRequest::Generate(GenerateRequest {
            prompt: Prompt::Text(prompt.into()),
            params,
        })
    }

    fn requests() -> Vec<SequenceRequest> {
        vec![
            generate("hello", params(100, &[])),
            generate("hello", params(3, &[])),
            generate("abc", params(100, &["fi"])),
            generate("xyz", params(100, &["q", "zz"])),
            SequenceRequest::Chat(ChatRequest {
                messages: vec![ChatMessage::new("user", "hi")].into(),
                params: params(100, &["ghi"]),
            }),
        ]
    }

    #[test]
    fn batched_sequences_give_exactly_what_generate_and_chat_give() {
        let requests = requests();
        let mut batched = plugin(10);
        let mut open: Vec<(u64, usize)> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| (batched.open_sequence(r).unwrap().id, i))
            .collect();
        let mut got = vec![(Vec::new(), None); requests.len()];
        while !open.is_empty() {
            let ids: Vec<u64> = open.iter().map(|(id, _)| *id).collect();
            let steps = batched.step_sequences(&ids).unwrap();
            assert_eq!(steps.iter().map(|s| s.id).collect::<Vec<_>>(), ids);
            for (step, (id, i)) in steps.into_iter().zip(open.clone()) {
                got[i].0.push(step.event);
                if let Some(finish) = step.finish.into_option() {
                    got[i].1 = Some(finish);
                    batched.close_sequence(id).unwrap();
                    open.retain(|(open_id, _)| *open_id != id);
                }
            }
        }
        let mut alone = plugin(10);
        for (request, (events, finish)) in requests.iter().zip(got) {
            let (streamed, response) = stream(&mut alone, request, None);
            assert_eq!(events, streamed, "{request:?}");
            assert_eq!(finish, Some(response.finish_reason), "{request:?}");
            let text: String = events.iter().map(|e| e.text.as_str()).collect();
            assert_eq!(text, response.text.as_str());
            let tokens: Vec<u32> = events.iter().map(|e| e.token).collect();
            assert_eq!(tokens, response.tokens.as_slice());
        }
        let details: serde_json::Value =
            serde_json::from_str(&batched.stats().details_json).unwrap();
        assert_eq!(details["largest_batch"], requests.len());
        assert_eq!(details["open_sequences"], 0);
        assert_eq!(details["vocab_size"], 0x11_0000);
        assert_eq!(details["pid"], std::process::id());
        let usage = |stats: PluginStats| (stats.requests, stats.tokens);
        assert_eq!(usage(batched.stats()), usage(alone.stats()));
    }

    #[test]
    fn generate_opens_its_sequence_alone_and_each_open_knows_its_limit() {
        let mut plugin = plugin(100);
        stream(&mut plugin, &generate("abc", params(5, &[])), None);
        plugin
            .open_sequence(&generate("abc", params(500, &[])))
            .unwrap();
        // A prompt that fills the context still gets its one token.
        let full = generate(&"a".repeat(64), params(5, &[]));
        let (events, response) = stream(&mut plugin, &full, None);
        assert_eq!(
            (events.len(), response.finish_reason),
            (1, FinishReason::Length)
        );
        let details: serde_json::Value =
            serde_json::from_str(&plugin.stats().details_json).unwrap();
        // The second: 500 asked for, 62 left after a prompt of 3 in a context of 64.
        assert_eq!(
            details["opened"],
            json!(["alone, 5", "batched, 62", "alone, 1"])
        );
    }

    #[test]
    fn stop_strings_limits_and_end_of_generation_end_a_generation() {
        let mut plugin = plugin(10);
        let (_, free) = stream(&mut plugin, &generate("abc", params(100, &[])), None);
        assert_eq!(free.finish_reason, FinishReason::Stop);
        assert_eq!(
            free.tokens.len(),
            11,
            "10 tokens and the end-of-generation token"
        );
        assert_eq!(free.tokens.last(), Some(&EOG));
        assert_eq!(free.text.chars().count(), 10);

        let (_, limited) = stream(&mut plugin, &generate("abc", params(4, &[])), None);
        assert_eq!(limited.finish_reason, FinishReason::Length);
        assert_eq!(limited.text.as_str(), &free.text[..4]);

        // A stop string spanning two tokens: neither token's text is shown.
        let stop = &free.text[5..7];
        let (events, stopped) = stream(&mut plugin, &generate("abc", params(100, &[stop])), None);
        assert_eq!(stopped.finish_reason, FinishReason::Stop);
        assert_eq!(stopped.text.as_str(), &free.text[..5]);
        assert_eq!(events.len(), 7);
        assert_eq!(
            events[5].text.as_str(),
            "",
            "held back: it may start the stop string"
        );
    }

    #[test]
    fn the_host_can_cancel_and_held_back_text_is_dropped() {
        let mut plugin = plugin(10);
        let (_, free) = stream(&mut plugin, &generate("abc", params(100, &[])), None);
        let held = &free.text[2..3];
        let request = generate("abc", params(100, &[&format!("{held}?")]));
        let (events, cancelled) = stream(&mut plugin, &request, Some(3));
        assert_eq!(events.len(), 3);
        assert_eq!(cancelled.finish_reason, FinishReason::Cancelled);
        assert_eq!(cancelled.text.as_str(), &free.text[..2]);
        assert_eq!(cancelled.tokens.len(), 3);
    }

    #[test]
    fn the_lifecycle_answers_calls_in_the_wrong_state() {
        let mut plugin = TextPlugin::<Counter>::new().unwrap();
        assert_eq!(plugin.health().status, HealthStatus::Unavailable);
        let error = plugin.tokenize("a", false).unwrap_err();
        assert_eq!(error.message.as_str(), "the plugin is not initialized");
        let error = plugin.activate(&ActivateOptions::default()).unwrap_err();
        assert!(error.message.contains("not initialized"), "{error}");

        let error = plugin.initialize(json!({ "length": 0 })).unwrap_err();
        assert_eq!(
            error.message.as_str(),
            "configuration: length must be at least 1"
        );
        let error = plugin.initialize(json!({ "length": "9" })).unwrap_err();
        assert_eq!(
            error.message.as_str(),
            "configuration: length: invalid type: string \"9\", expected u32"
        );

        // The host adds `plugin_dir` to every configuration; the kit hands it to `activate`.
        plugin
            .initialize(json!({ "length": 3, "plugin_dir": "/plugins/counter" }))
            .unwrap();
        let error = plugin.detokenize(&[97]).unwrap_err();
        assert_eq!(error.message.as_str(), "the plugin is not active");
        plugin
            .activate(&ActivateOptions {
                context_length: 32,
                ..ActivateOptions::default()
            })
            .unwrap();
        let stats = plugin.stats();
        assert_eq!(stats.host_memory_bytes, 7);
        let details: serde_json::Value = serde_json::from_str(&stats.details_json).unwrap();
        let expected = Activation {
            plugin_dir: Some("/plugins/counter".into()),
            context_length: Some(32),
            ..Activation::default()
        };
        assert_eq!(details["activation"], format!("{expected:?}"));
        assert_eq!(plugin.health().status, HealthStatus::Ok);
        assert_eq!(plugin.detokenize(&[104, 105]).unwrap(), "hi");
        let error = plugin.initialize(json!({ "length": 3 })).unwrap_err();
        assert!(error.message.contains("deactivate it first"), "{error}");
        let error = plugin
            .embed(&EmbedRequest {
                inputs: vec!["a".into()].into(),
            })
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unsupported);

        plugin.deactivate().unwrap();
        assert_eq!(plugin.health().message.as_str(), "initialized, not active");
        assert_eq!(plugin.stats(), PluginStats::default());
        plugin.activate(&ActivateOptions::default()).unwrap();
    }

    #[test]
    fn requests_are_checked_before_the_model_sees_them() {
        let mut plugin = plugin(10);
        let refused = |plugin: &mut TextPlugin<Counter>, request| {
            plugin
                .open_sequence(&request)
                .unwrap_err()
                .message
                .into_string()
        };
        let tokens = |ids: &[u32]| {
            SequenceRequest::Generate(GenerateRequest {
                prompt: Prompt::Tokens(ids.to_vec().into()),
                params: params(5, &[]),
            })
        };
        assert!(refused(&mut plugin, tokens(&[97, 0xD800])).contains("55296"));
        assert!(refused(&mut plugin, tokens(&[])).contains("prompt is empty"));
        assert_eq!(
            refused(&mut plugin, tokens(&[97; 65])),
            "prompt has 65 tokens but the context holds 64"
        );
        let mut bad = params(5, &[]);
        bad.top_p = 2.0;
        assert!(refused(&mut plugin, generate("a", bad)).contains("top_p"));

        let id = plugin.open_sequence(&tokens(&[97])).unwrap().id;
        let error = plugin.step_sequences(&[id, id + 1]).unwrap_err();
        assert_eq!(
            error.message.as_str(),
            format!("no open sequence {}", id + 1)
        );
        let error = plugin.step_sequences(&[id, id]).unwrap_err();
        assert!(error.message.contains("twice"), "{error}");
        let details: serde_json::Value =
            serde_json::from_str(&plugin.stats().details_json).unwrap();
        assert_eq!(
            details["largest_batch"], 0,
            "a refused step changes nothing"
        );
    }
}
