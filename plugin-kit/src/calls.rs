//! The calls every kit plugin answers alike, whatever it generates: they need only an active
//! [`Model`] and convert between the API's types and the author's.

use pio_plugin_api::{EmbedRequest, EmbedResponse, PluginResult, PluginStats};

use crate::{lifecycle::Lifecycle, Model, Tokenizer};

impl<M: Model, S: Default> Lifecycle<M, S> {
    /// A free-form JSON request, answered by [`Model::infer`].
    pub(crate) fn infer(&mut self, request: serde_json::Value) -> PluginResult<serde_json::Value> {
        self.active()?.model.infer(request)
    }

    /// Text to token ids with the model's tokenizer.
    pub(crate) fn tokenize(&mut self, text: &str, add_special: bool) -> PluginResult<Vec<u32>> {
        self.active()?.model.tokenizer().encode(text, add_special)
    }

    /// Token ids to text with the model's tokenizer.
    pub(crate) fn detokenize(&mut self, tokens: &[u32]) -> PluginResult<String> {
        self.active()?.model.tokenizer().decode(tokens)
    }

    /// Embeds the request's texts with [`Model::embed`], counting the request.
    pub(crate) fn embed(&mut self, request: &EmbedRequest) -> PluginResult<EmbedResponse> {
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

    /// The stats of a model without per-activation state of the kit's.
    pub(crate) fn model_stats(&self) -> PluginStats {
        self.stats(|_, _| ())
    }
}
