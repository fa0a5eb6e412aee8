//! Constrained decoding: a grammar (JSON Schema, any JSON object, a regular expression or a
//! Lark grammar) compiled by llguidance against the model's vocabulary, and per sequence the set
//! of tokens that keep the text inside the grammar.

use std::sync::Arc;

use llguidance::{
    api::TopLevelGrammar,
    toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie},
    JsonCompileOptions, Matcher, ParserFactory,
};
use pio_plugin_api::{Constraint, PluginError, PluginResult};

use crate::{TokenSet, Tokenizer};

/// llguidance's marker before a control token's name: such a token never matches grammar text.
const CONTROL_TOKEN_MARKER: u8 = TokTrie::SPECIAL_TOKEN_MARKER;

/// What compiles grammars for one model: its vocabulary as llguidance's token trie. Built once
/// per activation, at the first constrained request (a 262k vocabulary takes a moment).
pub(crate) struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// The compiler for `tokenizer`'s vocabulary.
    pub(crate) fn new(tokenizer: &impl Tokenizer) -> PluginResult<Self> {
        let end = tokenizer.end_of_generation().ok_or_else(|| {
            PluginError::unsupported(
                "constrained decoding: this model names no end-of-generation token",
            )
        })?;
        let words = (0..tokenizer.vocab_size())
            .map(|token| match tokenizer.is_control(token) {
                true => {
                    let name = tokenizer.decode(&[token]).unwrap_or_default();
                    [&[CONTROL_TOKEN_MARKER], name.as_bytes()].concat()
                }
                false => tokenizer.token_bytes(token).unwrap_or_default(),
            })
            .collect::<Vec<_>>();
        let info = TokRxInfo::new(tokenizer.vocab_size(), end);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env).map_err(grammar_error)?;
        // llguidance logs grammar warnings to stderr by default; the host's log is not ours.
        factory.set_stderr_log_level(0);
        Ok(Self { factory })
    }

    /// A fresh guide for one sequence, or an `invalid_input` error naming what is wrong with
    /// the constraint (an invalid schema, regular expression or grammar).
    pub(crate) fn guide(&self, constraint: &Constraint) -> PluginResult<Guide> {
        let source = constraint.source.as_str();
        let grammar = match constraint.kind.as_str() {
            "json_object" => json_grammar(serde_json::json!({"type": "object"}))?,
            "json_schema" => json_grammar(serde_json::from_str(source).map_err(|e| {
                PluginError::invalid_input(format!("the JSON schema is not valid JSON: {e}"))
            })?)?,
            "regex" => TopLevelGrammar::from_regex(source),
            "lark" => TopLevelGrammar::from_lark(source.to_owned()),
            other => {
                return Err(PluginError::invalid_input(format!(
                    "unknown constraint kind '{other}'"
                )))
            }
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| PluginError::invalid_input(format!("invalid {}: {e}", constraint.kind)))?;
        Ok(Guide {
            matcher: Matcher::new(Ok(parser)),
        })
    }
}

/// One sequence's position in its grammar.
pub(crate) struct Guide {
    matcher: Matcher,
}

impl Guide {
    /// The tokens the next step may choose: those that keep the text a prefix of a sentence
    /// of the grammar, and the end-of-generation token once the text is a whole sentence.
    pub(crate) fn allowed(&mut self) -> PluginResult<TokenSet> {
        let mask = self.matcher.compute_mask_or_eos().map_err(grammar_error)?;
        Ok(TokenSet::from_words(mask.as_slice().to_vec()))
    }

    /// Moves past `token`; returns whether the grammar is complete and allows nothing more.
    pub(crate) fn accept(&mut self, token: u32) -> PluginResult<bool> {
        self.matcher.consume_token(token).map_err(grammar_error)?;
        Ok(self.matcher.is_stopped())
    }
}

/// The grammar of JSON matching `schema`, written as `json.dumps` writes it: `", "` between
/// items, `": "` after keys, no other whitespace. Free whitespace is what small models loop on
/// (llguidance allows any by default); one fixed layout keeps every output finite and readable.
fn json_grammar(mut schema: serde_json::Value) -> PluginResult<TopLevelGrammar> {
    let Some(object) = schema.as_object_mut() else {
        return Err(PluginError::invalid_input(
            "the JSON schema must be an object",
        ));
    };
    if !object.contains_key("x-guidance") {
        let layout = JsonCompileOptions {
            item_separator: ", ".to_owned(),
            key_separator: ": ".to_owned(),
            whitespace_flexible: false,
            ..JsonCompileOptions::default()
        };
        layout.apply_to(&mut schema);
    }
    Ok(TopLevelGrammar::from_json_schema(schema))
}

fn grammar_error(error: impl std::fmt::Display) -> PluginError {
    PluginError::internal(format!("constrained decoding: {error}"))
}
