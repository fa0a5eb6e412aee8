//! Chat templates: the Jinja templates HF models ship in `tokenizer.chat_template`.

use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind, Value};
use pio_gguf::GgufFile;
use serde::Serialize;

use crate::error::{Result, TextError};

/// A plain ChatML template, for callers that want an explicit fallback when
/// a model has no `tokenizer.chat_template` ([`ChatTemplate::from_gguf`]
/// never falls back silently).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat_template";

/// The work one render may do, in minijinja fuel: one fuel per template instruction, plus one
/// per 64 bytes of text the template creates or writes. Templates come from model files, so a
/// hostile one (`{% for i in range(100000) %}{% for j in range(100000) %}`, strings doubled in
/// a loop) must end with an error instead of looping for hours or filling memory: 2 000 000
/// fuel bounds a render to about two million instructions and 128 MB of text created in all.
/// Real templates need far less: ChatML over a 1 MiB conversation (the server's default body
/// limit) uses about 100 000.
pub const RENDER_FUEL: u64 = 2_000_000;

/// The longest rendered prompt, in bytes. Far above any context window, but it stops a
/// template from turning a short conversation into an enormous prompt before the fuel runs
/// out, and names the problem.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// How deep templates may nest blocks, loops and macro calls (a macro call counts about 10).
/// Lower than minijinja's default of 500 so that a recursive macro fails with an error, not a
/// stack overflow, on threads with the 2 MiB stack Rust gives spawned threads, in unoptimised
/// builds too; real chat templates nest a few levels.
pub const RECURSION_LIMIT: usize = 200;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template, rendered the way `transformers`'
/// `apply_chat_template` does: Jinja with `trim_blocks` and `lstrip_blocks`,
/// Python string methods (`.strip()`, `.startswith()`, ...), loop controls,
/// `raise_exception(msg)` and a `tojson` filter that does not HTML-escape.
///
/// Templates see `messages`, `add_generation_prompt`, `bos_token` and `eos_token`.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

fn template_error(e: Error) -> TextError {
    if e.kind() == ErrorKind::OutOfFuel {
        return TextError::Template(format!(
            "rendering used up its budget of {RENDER_FUEL} fuel \
             (the template loops too long or builds too much text)"
        ));
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    TextError::Template(message)
}

/// `raise_exception(message)`: aborts rendering with the template's message.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `value | tojson(indent=None)` with Python's `json.dumps(ensure_ascii=False)` output.
fn tojson(value: Value, indent: Option<usize>) -> std::result::Result<Value, Error> {
    let to_err = |e: serde_json::Error| {
        Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(e)
    };
    let text = match indent {
        None => serde_json::to_string(&value).map_err(to_err)?,
        Some(width) => {
            let indent = " ".repeat(width);
            let formatter = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
            let mut out = Vec::new();
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
            value.serialize(&mut serializer).map_err(to_err)?;
            String::from_utf8(out).expect("serde_json writes UTF-8")
        }
    };
    Ok(Value::from_safe_string(text))
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts the template
    /// sees under those names.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(template_error)?,
        );
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.add_template_owned(TEMPLATE_NAME, source.into())
            .map_err(template_error)?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The template in `tokenizer.chat_template`, with the BOS/EOS token
    /// texts looked up in the vocabulary. A model without a template is an
    /// error naming the key; use [`CHATML`] explicitly if a fallback is wanted.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let source = file.get_str("tokenizer.chat_template")?;
        let tokens = file.get_string_array("tokenizer.ggml.tokens")?;
        let token_text = |key: &str| -> Result<String> {
            Ok(file
                .opt_u32(key)?
                .and_then(|id| tokens.get(id as usize))
                .map_or_else(String::new, |t| (*t).to_owned()))
        };
        Self::new(
            source,
            token_text("tokenizer.ggml.bos_token_id")?,
            token_text("tokenizer.ggml.eos_token_id")?,
        )
    }

    /// Renders a conversation. With `add_generation_prompt`, the template
    /// appends the header that starts the assistant's reply.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(template_error)?;
        let mut out = CappedOutput(Vec::new());
        template
            .render_captured_to(
                context! {
                    messages => Value::from(Serde(messages)),
                    add_generation_prompt => add_generation_prompt,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                },
                &mut out,
            )
            .map_err(template_error)?;
        String::from_utf8(out.0)
            .map_err(|e| TextError::Template(format!("rendered text is not UTF-8: {e}")))
    }
}

/// The render's output, refusing to grow past [`MAX_RENDERED_BYTES`].
struct CappedOutput(Vec<u8>);

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
            return Err(std::io::Error::other(format!(
                "the rendered prompt exceeds {MAX_RENDERED_BYTES} bytes"
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
