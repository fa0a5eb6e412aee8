//! [`Embedder`]: texts in, sentence embeddings out — tokenization, batching by length and the
//! device model together.

use std::path::Path;
use std::sync::Arc;

use pio_gpu::{Gpu, Profile, WeightDtype};
use pio_plugin_api::{PluginError, PluginResult};

use crate::config::ModelConfig;
use crate::model::GpuBert;
use crate::tokenize::BertTokenizer;
use crate::weights::BertWeights;

/// Most sequences run in one pass by default.
pub const DEFAULT_MAX_BATCH: usize = 32;
/// Most tokens in one pass (its sequences packed, no padding): bounds the activation memory
/// (about 15 KiB per token for a 384-wide model).
const MAX_PASS_TOKENS: usize = 4096;

/// The files of a model directory, loaded on the host.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The validated configuration.
    pub config: ModelConfig,
    /// The tokenizer, truncating at `max_seq_length`.
    pub tokenizer: BertTokenizer,
    /// Every weight, f32.
    pub weights: BertWeights,
}

impl ModelFiles {
    /// Reads `config.json`, the sentence-transformers files, `tokenizer.json` and
    /// `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> PluginResult<Self> {
        if !dir.is_dir() {
            return Err(PluginError::model_load(format!(
                "model directory {} does not exist",
                dir.display()
            )));
        }
        let config = ModelConfig::load(dir)?;
        let tokenizer = BertTokenizer::load(
            &dir.join("tokenizer.json"),
            config.max_seq_length,
            config.bert.vocab_size,
        )?;
        let weights = BertWeights::load(&dir.join("model.safetensors"), &config.bert)?;
        Ok(Self {
            config,
            tokenizer,
            weights,
        })
    }
}

/// Embeddings of a list of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per text, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens processed (special tokens included, padding excluded).
    pub tokens: usize,
}

/// A tokenizer and a device model: embeds any number of texts.
#[derive(Debug)]
pub struct Embedder {
    tokenizer: BertTokenizer,
    model: GpuBert,
    hidden: usize,
    max_batch: usize,
}

impl Embedder {
    /// Uploads `files`' weights to `gpu`, the linear layers stored as `dtype`, and warms every
    /// pipeline up with one batch. At most `max_batch` texts run in one pass.
    pub fn new(
        gpu: Arc<Gpu>,
        files: &ModelFiles,
        dtype: WeightDtype,
        max_batch: usize,
    ) -> PluginResult<Self> {
        if max_batch == 0 {
            return Err(PluginError::invalid_input("max_batch must be at least 1"));
        }
        let model = GpuBert::new(gpu, &files.config, &files.weights, dtype)?;
        let mut embedder = Self {
            tokenizer: files.tokenizer.clone(),
            model,
            hidden: files.config.bert.hidden_size,
            max_batch,
        };
        embedder.embed(&["warm-up"])?;
        Ok(embedder)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.tokenizer
    }

    /// The device model.
    pub fn model(&self) -> &GpuBert {
        &self.model
    }

    /// The encoder, to drop its activation buffers.
    pub fn model_mut(&mut self) -> &mut GpuBert {
        &mut self.model
    }

    /// Length of every embedding.
    pub fn dimensions(&self) -> usize {
        self.hidden
    }

    /// Embeds `texts`. Texts longer than `max_seq_length` tokens are truncated and an empty
    /// text is embedded as `[CLS] [SEP]`, as sentence-transformers does. Texts are sorted by
    /// length and run in passes of at most `max_batch` texts (fewer when they are long), each
    /// pass packing its texts' tokens one after another; the result is in input order.
    pub fn embed<S: AsRef<str>>(&mut self, texts: &[S]) -> PluginResult<Embeddings> {
        self.run_passes(texts, |model, batch| model.forward(batch))
    }

    /// [`Self::embed`] with every kernel launch of every pass timed on its own
    /// ([`pio_gpu::Gpu::profile`]): the embeddings and the passes' profiles, in order.
    pub fn embed_profiled<S: AsRef<str>>(
        &mut self,
        texts: &[S],
    ) -> PluginResult<(Embeddings, Profile)> {
        let mut profile: Option<Profile> = None;
        let embeddings = self.run_passes(texts, |model, batch| {
            let (vectors, pass) = model.forward_profiled(batch)?;
            match &mut profile {
                Some(profile) => profile.extend(pass),
                None => profile = Some(pass),
            }
            Ok(vectors)
        })?;
        let profile = profile.ok_or_else(|| PluginError::invalid_input("no texts to embed"))?;
        Ok((embeddings, profile))
    }

    /// Tokenizes `texts`, sorts them longest first (so a pass's sequences are of similar
    /// lengths, which keeps attention's launch grid, sized by the longest, mostly busy) and runs
    /// `pass` on batches of them (see
    /// [`Self::embed`]); returns the vectors in input order.
    fn run_passes<S: AsRef<str>>(
        &mut self,
        texts: &[S],
        mut pass: impl FnMut(&mut GpuBert, &[Vec<u32>]) -> PluginResult<Vec<Vec<f32>>>,
    ) -> PluginResult<Embeddings> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenizer.encode(t.as_ref()))
            .collect::<PluginResult<_>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut vectors = vec![Vec::new(); ids.len()];
        let mut start = 0;
        while start < order.len() {
            // The first text always; then more while the pass has room for their tokens.
            let mut end = start + 1;
            let mut tokens = ids[order[start]].len();
            while end < order.len()
                && end - start < self.max_batch
                && tokens + ids[order[end]].len() <= MAX_PASS_TOKENS
            {
                tokens += ids[order[end]].len();
                end += 1;
            }
            let batch: Vec<Vec<u32>> = order[start..end].iter().map(|&i| ids[i].clone()).collect();
            for (&i, vector) in order[start..end].iter().zip(pass(&mut self.model, &batch)?) {
                vectors[i] = vector;
            }
            start = end;
        }
        Ok(Embeddings {
            vectors,
            tokens: ids.iter().map(Vec::len).sum(),
        })
    }
}
