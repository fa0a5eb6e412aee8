//! Log-probabilities, prompt scoring and grammar-constrained decoding through the kit's driver,
//! with a byte-level model whose logits are a fixed function of its context, so every value the
//! kit reports can be recomputed here.

use pio_plugin_kit::{
    api::{
        serde_json::{self, json, Value},
        Constraint, DecodeOptions, GenerateRequest, GenerationParams, Plugin, PositionLogprobs,
        Prompt, SequenceRequest,
    },
    metadata, Activation, Decoder, ErrorKind, Logprobs, Model, Next, NoConfig, PluginMetadata,
    PluginResult, Sampled, SequenceParams, StepOptions, TextModel, TextPlugin, Tokenizer,
};

/// Tokens 0..=255 are bytes; 256 ends a generation.
const END: u32 = 256;
const VOCAB: u32 = 257;

/// A model over bytes: logits are noise from the position and the last token, plus a bonus for
/// the bytes that close JSON values, so constrained outputs end quickly; greedy.
struct Babbler;

struct Context {
    tokens: Vec<u32>,
}

fn logits(context: &[u32]) -> Vec<f32> {
    let seed =
        (context.len() as u32).wrapping_mul(1_000_003) ^ context.last().map_or(7, |&t| t * 7919);
    (0..VOCAB)
        .map(|token| {
            let noise =
                (seed ^ token.wrapping_mul(2_654_435_761)).wrapping_mul(2_246_822_519) >> 16;
            let bonus = match token {
                t if b"\"}],".contains(&(t as u8)) && t < 256 => 3.0,
                END => 2.0,
                _ => 0.0,
            };
            (noise % 1000) as f32 / 1000.0 + bonus
        })
        .collect()
}

struct Bytes;

impl Tokenizer for Bytes {
    type Decoder = ByteDecoder;
    fn vocab_size(&self) -> u32 {
        VOCAB
    }
    fn encode(&self, text: &str, _: bool) -> PluginResult<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, tokens: &[u32]) -> PluginResult<String> {
        let bytes: Vec<u8> = tokens
            .iter()
            .filter(|&&t| t < 256)
            .map(|&t| t as u8)
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn decoder(&self) -> ByteDecoder {
        ByteDecoder(Vec::new())
    }
    fn is_control(&self, token: u32) -> bool {
        token == END
    }
    fn end_of_generation(&self) -> Option<u32> {
        Some(END)
    }
}

struct ByteDecoder(Vec<u8>);

impl Decoder for ByteDecoder {
    fn push(&mut self, token: u32) -> PluginResult<String> {
        self.0.push(token as u8);
        match String::from_utf8(std::mem::take(&mut self.0)) {
            Ok(text) => Ok(text),
            Err(partial) => {
                self.0 = partial.into_bytes();
                Ok(String::new())
            }
        }
    }
}

impl Model for Babbler {
    type Config = NoConfig;
    type Tokenizer = Bytes;
    fn metadata() -> PluginMetadata {
        metadata!("babbler").build()
    }
    fn activate(_: &NoConfig, _: &Activation) -> PluginResult<Self> {
        Ok(Babbler)
    }
    fn tokenizer(&self) -> &Bytes {
        &Bytes
    }
}

impl TextModel for Babbler {
    type Sequence = Context;
    fn context_length(&self) -> u32 {
        4096
    }
    fn open(&mut self, prompt: &[u32], _: &SequenceParams) -> PluginResult<Context> {
        Ok(Context {
            tokens: prompt.to_vec(),
        })
    }
    fn step(&mut self, context: &mut Context) -> PluginResult<Next> {
        self.step_with(&mut [context], &[StepOptions::default()])
            .map(|sampled| sampled[0].next)
    }
    fn step_with(
        &mut self,
        batch: &mut [&mut Context],
        options: &[StepOptions<'_>],
    ) -> PluginResult<Vec<Sampled>> {
        Ok(batch
            .iter_mut()
            .zip(options)
            .map(|(context, options)| {
                let raw = logits(&context.tokens);
                let mut masked = raw.clone();
                if let Some(allowed) = options.allowed {
                    allowed.mask(&mut masked);
                }
                let token = (0..VOCAB)
                    .max_by(|&a, &b| {
                        masked[a as usize]
                            .total_cmp(&masked[b as usize])
                            .then(b.cmp(&a))
                    })
                    .unwrap();
                context.tokens.push(token);
                Sampled {
                    next: if token == END {
                        Next::EndOfGeneration(token)
                    } else {
                        Next::Token(token)
                    },
                    logprobs: options
                        .logprobs
                        .map(|top| Logprobs::from_logits(&raw, token, top)),
                }
            })
            .collect())
    }
    fn score(&mut self, prompt: &[u32], top: u32) -> PluginResult<Vec<Logprobs>> {
        Ok((1..prompt.len())
            .map(|i| Logprobs::from_logits(&logits(&prompt[..i]), prompt[i], top))
            .collect())
    }
}

fn plugin() -> TextPlugin<Babbler> {
    let mut plugin = TextPlugin::<Babbler>::new().unwrap();
    plugin.initialize(json!({})).unwrap();
    plugin.activate(&Default::default()).unwrap();
    plugin
}

fn request(prompt: &str, max_new_tokens: u32) -> SequenceRequest {
    SequenceRequest::Generate(GenerateRequest {
        prompt: Prompt::Text(prompt.into()),
        params: GenerationParams::greedy(max_new_tokens),
    })
}

fn options(logprobs: Option<u32>, constraint: Option<Constraint>) -> DecodeOptions {
    DecodeOptions {
        logprobs: logprobs.into(),
        constraint: constraint.into(),
    }
}

/// Runs the opened sequences `ids` together to their ends; their texts, in order.
fn run(plugin: &mut TextPlugin<Babbler>, ids: &[u64]) -> Vec<String> {
    let mut texts = vec![String::new(); ids.len()];
    let mut open: Vec<u64> = ids.to_vec();
    while !open.is_empty() {
        for step in plugin.step_sequences(&open).unwrap() {
            let i = ids.iter().position(|&id| id == step.id).unwrap();
            texts[i].push_str(&step.event.text);
            if step.finish.is_some() {
                open.retain(|&id| id != step.id);
            }
        }
    }
    texts
}

fn json_schema(schema: Value) -> Constraint {
    Constraint::new("json_schema", &schema.to_string())
}

#[test]
fn constrained_and_free_sequences_decode_in_one_batch_and_every_output_matches() {
    let schemas = [
        json!({"type": "object", "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["cat", "dog"]},
            "address": {"type": "object", "properties": {"city": {"type": "string"}},
                        "required": ["city"]}
        }, "required": ["name", "age", "kind", "address"], "additionalProperties": false}),
        json!({"type": "array", "items": {"type": "number"}, "minItems": 2}),
        json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}),
    ];
    let mut plugin = plugin();
    let free = plugin.open_sequence(&request("x", 40)).unwrap().id;
    let mut ids = vec![free];
    for (i, schema) in schemas.iter().enumerate() {
        let prompt = format!("answer {i}:");
        let opened = plugin
            .open_sequence_with(
                &request(&prompt, 400),
                &options(None, Some(json_schema(schema.clone()))),
            )
            .unwrap();
        ids.push(opened.id);
    }
    let any_object = Constraint::new("json_object", "");
    ids.push(
        plugin
            .open_sequence_with(&request("{", 400), &options(None, Some(any_object)))
            .unwrap()
            .id,
    );
    let digits = Constraint::new("regex", "[0-9]{3}-[a-c]+");
    ids.push(
        plugin
            .open_sequence_with(&request("id", 50), &options(None, Some(digits)))
            .unwrap()
            .id,
    );

    let texts = run(&mut plugin, &ids);
    let details: Value = serde_json::from_str(&plugin.stats().details_json).unwrap();
    assert_eq!(details["largest_batch"], ids.len(), "all in one batch");

    let parsed: Vec<Value> = texts[1..5]
        .iter()
        .map(|text| serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}")))
        .collect();
    let person = &parsed[0];
    assert!(
        person["name"].is_string() && person["age"].is_i64(),
        "{person}"
    );
    assert!(
        ["cat", "dog"].contains(&person["kind"].as_str().unwrap()),
        "{person}"
    );
    assert!(person["address"]["city"].is_string(), "{person}");
    assert!(person
        .as_object()
        .unwrap()
        .keys()
        .all(|k| schemas[0]["properties"].get(k).is_some()));
    let numbers = parsed[1].as_array().unwrap();
    assert!(
        numbers.len() >= 2 && numbers.iter().all(Value::is_number),
        "{}",
        parsed[1]
    );
    assert!(parsed[2]["ok"].is_boolean(), "{}", parsed[2]);
    assert!(parsed[3].is_object(), "{}", parsed[3]);
    let pattern = &texts[5];
    let (digits, letters) = pattern.split_once('-').unwrap();
    assert!(
        digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()),
        "{pattern}"
    );
    assert!(
        !letters.is_empty() && letters.bytes().all(|b| b"abc".contains(&b)),
        "{pattern}"
    );
    assert!(
        serde_json::from_str::<Value>(&texts[0]).is_err(),
        "the free sequence is not constrained: {:?}",
        texts[0]
    );
}

#[test]
fn step_log_probabilities_are_the_models_own_and_are_drained_once() {
    let mut plugin = plugin();
    let prompt = "hello";
    let id = plugin
        .open_sequence_with(&request(prompt, 6), &options(Some(3), None))
        .unwrap()
        .id;
    let text = run(&mut plugin, &[id]).remove(0);
    let reported: Vec<PositionLogprobs> = plugin.sequence_logprobs(id).unwrap();
    assert_eq!(reported.len(), text.len());
    let mut context: Vec<u32> = prompt.bytes().map(u32::from).collect();
    for (position, byte) in reported.iter().zip(text.bytes()) {
        let expected = Logprobs::from_logits(&logits(&context), u32::from(byte), 3);
        assert_eq!(position.chosen.token, u32::from(byte));
        assert_eq!(position.chosen.bytes.as_slice(), [byte]);
        assert_eq!(position.chosen.logprob, expected.logprob);
        let top: Vec<(u32, f32)> = position.top.iter().map(|t| (t.token, t.logprob)).collect();
        assert_eq!(top, expected.top);
        assert_eq!(
            top[0].0,
            u32::from(byte),
            "greedy: the chosen token is the most likely"
        );
        context.push(u32::from(byte));
    }
    assert!(plugin.sequence_logprobs(id).unwrap().is_empty(), "drained");
    plugin.close_sequence(id).unwrap();

    let plain = plugin.open_sequence(&request(prompt, 2)).unwrap().id;
    let error = plugin.sequence_logprobs(plain).unwrap_err();
    assert!(
        error.message.contains("without log-probabilities"),
        "{error}"
    );
}

#[test]
fn a_prompt_is_scored_token_by_token() {
    let mut plugin = plugin();
    let scored = plugin.score(&Prompt::Text("abc".into()), 2).unwrap();
    assert_eq!(scored.len(), 3, "every token");
    assert_eq!(scored[0].chosen.token, u32::from(b'a'));
    assert!(
        scored[0].chosen.logprob.is_nan() && scored[0].top.is_empty(),
        "no context"
    );
    for (i, position) in scored[1..].iter().enumerate() {
        let context: Vec<u32> = b"abc"[..=i].iter().map(|&b| u32::from(b)).collect();
        let expected = Logprobs::from_logits(&logits(&context), u32::from(b"abc"[i + 1]), 2);
        assert_eq!(position.chosen.token, u32::from(b"abc"[i + 1]));
        assert_eq!(position.chosen.logprob, expected.logprob);
        assert_eq!(position.top.len(), 2);
    }
    let error = plugin.score(&Prompt::Tokens(vec![].into()), 0).unwrap_err();
    assert!(error.message.contains("empty"), "{error}");
}

#[test]
fn bad_constraints_are_refused_naming_the_problem() {
    let mut plugin = plugin();
    let refused = |plugin: &mut TextPlugin<Babbler>, constraint: Constraint| {
        let error = plugin
            .open_sequence_with(&request("a", 5), &options(None, Some(constraint)))
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidInput, "{error}");
        error.message.into_string()
    };
    let message = refused(&mut plugin, Constraint::new("json_schema", "{not json"));
    assert!(message.contains("not valid JSON"), "{message}");
    let message = refused(&mut plugin, Constraint::new("json_schema", "[1]"));
    assert!(message.contains("must be an object"), "{message}");
    let message = refused(
        &mut plugin,
        json_schema(json!({"type": "object", "required": 5})),
    );
    assert!(message.contains("json_schema"), "{message}");
    let message = refused(&mut plugin, Constraint::new("regex", "(unclosed"));
    assert!(message.contains("regex"), "{message}");
    let message = refused(&mut plugin, Constraint::new("yaml", ""));
    assert!(message.contains("unknown constraint kind"), "{message}");
    let too_many = options(Some(21), None);
    let error = plugin
        .open_sequence_with(&request("a", 5), &too_many)
        .unwrap_err();
    assert!(error.message.contains("at most 20"), "{error}");
}
