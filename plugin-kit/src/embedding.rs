//! [`EmbeddingPlugin`]: a [`Model`] that embeds (and does not generate) as a complete
//! [`Plugin`]: the lifecycle, `embed`, `tokenize` / `detokenize`, `infer` and the stats.

use pio_plugin_api::{
    ActivateOptions, CompressionReport, CompressionRequest, EmbedRequest, EmbedResponse, Health,
    MemoryFreed, MemoryReport, Plugin, PluginMetadata, PluginResult, PluginStats,
};

use crate::{lifecycle::Lifecycle, Model};

/// A [`Model`] overriding [`Model::embed`], as a [`Plugin`]; export it with
/// [`export_embedding_model!`](crate::export_embedding_model). Generation calls answer
/// `unsupported`.
pub struct EmbeddingPlugin<M: Model> {
    lifecycle: Lifecycle<M, ()>,
}

impl<M: Model> Plugin for EmbeddingPlugin<M> {
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
        self.lifecycle.infer(request)
    }

    fn tokenize(&mut self, text: &str, add_special: bool) -> PluginResult<Vec<u32>> {
        self.lifecycle.tokenize(text, add_special)
    }

    fn detokenize(&mut self, tokens: &[u32]) -> PluginResult<String> {
        self.lifecycle.detokenize(tokens)
    }

    fn embed(&mut self, request: &EmbedRequest) -> PluginResult<EmbedResponse> {
        self.lifecycle.embed(request)
    }

    fn stats(&self) -> PluginStats {
        self.lifecycle.model_stats()
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
}

#[cfg(test)]
mod tests {
    use pio_plugin_api::{
        ErrorKind, FnSink, GenerateRequest, GenerationParams, Prompt, StreamControl, TokenEvent,
        TokenStream,
    };
    use serde_json::json;

    use super::*;
    use crate::{metadata, Activation, CharTokenizer, Embeddings, NoConfig};

    /// Embeds a text as its length and its count of `a`s.
    struct Counts;

    impl Model for Counts {
        type Config = NoConfig;
        type Tokenizer = CharTokenizer;
        fn metadata() -> PluginMetadata {
            metadata!("counts").build()
        }
        fn activate(_: &NoConfig, _: &Activation) -> PluginResult<Self> {
            Ok(Counts)
        }
        fn tokenizer(&self) -> &CharTokenizer {
            &CharTokenizer
        }
        fn embed(&mut self, texts: &[&str]) -> PluginResult<Embeddings> {
            let count = |text: &str, f: fn(char) -> bool| text.chars().filter(|&c| f(c)).count();
            Ok(Embeddings {
                vectors: texts
                    .iter()
                    .map(|t| vec![count(t, |_| true) as f32, count(t, |c| c == 'a') as f32])
                    .collect(),
                dimensions: 2,
                prompt_tokens: texts.iter().map(|t| count(t, |_| true) as u32).sum(),
            })
        }
    }

    #[test]
    fn a_model_without_memory_hooks_reports_nothing_and_refuses_compression() {
        let mut plugin = EmbeddingPlugin::<Counts>::new().unwrap();
        let options = ActivateOptions::default();
        let error = plugin.estimate_memory(&options).unwrap_err();
        assert!(error.message.contains("not initialized"), "{error:?}");
        plugin.initialize(json!({})).unwrap();
        assert!(plugin
            .estimate_memory(&options)
            .unwrap()
            .categories
            .is_empty());
        assert!(plugin.memory_report().unwrap().categories.is_empty());
        plugin.activate(&options).unwrap();
        assert!(plugin.memory_report().unwrap().categories.is_empty());
        assert!(plugin.force_memory_cleanup().unwrap().categories.is_empty());
        assert_eq!(plugin.compression_stats().unwrap(), None);
        let request = pio_plugin_api::CompressionRequest {
            scope: pio_plugin_api::CompressionScope::Weights,
            format: "q8_0".into(),
        };
        let error = plugin.compress(&request).unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidInput);
        assert!(
            error.message.contains("cannot compress weights to 'q8_0'")
                && error.message.contains("supports no compression"),
            "{error:?}"
        );
    }

    #[test]
    fn embeds_tokenizes_counts_and_refuses_generation() {
        let mut plugin = EmbeddingPlugin::<Counts>::new().unwrap();
        plugin.initialize(json!({})).unwrap();
        plugin.activate(&ActivateOptions::default()).unwrap();
        let response = plugin
            .embed(&EmbedRequest {
                inputs: vec!["banana".into(), "kit".into()].into(),
            })
            .unwrap();
        let vectors: Vec<Vec<f32>> = response.embeddings.iter().map(|v| v.to_vec()).collect();
        assert_eq!(vectors, [[6.0, 3.0], [3.0, 0.0]]);
        assert_eq!((response.dimensions, response.prompt_tokens), (2, 9));
        assert_eq!(plugin.tokenize("ab", true).unwrap(), [97, 98]);
        let stats = plugin.stats();
        assert_eq!((stats.requests, stats.tokens), (1, 9));

        let mut sink = FnSink(|_: &TokenEvent| StreamControl::Continue);
        let request = GenerateRequest {
            prompt: Prompt::Text("a".into()),
            params: GenerationParams::greedy(1),
        };
        let error = plugin
            .generate(&request, &mut TokenStream::new(sink.as_sink()))
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unsupported);
    }
}
