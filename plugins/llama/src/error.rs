//! The crate's error type.

/// Everything that can go wrong loading, running or sampling a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The GGUF file declares an architecture this plugin does not implement.
    #[error(
        "unsupported model architecture `{0}` (this plugin runs {runs})",
        runs = crate::models::architectures()
    )]
    UnsupportedArchitecture(String),
    /// A tensor is stored in a type the kernels cannot read.
    #[error(
        "tensor `{name}` has unsupported type {dtype} (supported: {supported})",
        supported = supported_types()
    )]
    UnsupportedTensorType {
        /// Tensor name.
        name: String,
        /// The type as named by the GGUF reader.
        dtype: String,
    },
    /// The model needs something the GPU runtime has no kernel for (e.g. a sliding window).
    #[error("`{architecture}` model needs {feature}, which the GPU runtime does not implement")]
    UnsupportedFeature {
        /// The model's `general.architecture`.
        architecture: &'static str,
        /// What it needs, in words.
        feature: String,
    },
    /// Metadata or tensors are missing, inconsistent or out of range.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// A caller-supplied parameter is out of range.
    #[error("invalid parameter: {0}")]
    InvalidParams(String),
    /// The prompt does not fit in the context window.
    #[error("prompt has {prompt} tokens but the context holds {context}")]
    PromptTooLong {
        /// Prompt length in tokens.
        prompt: usize,
        /// Context length in tokens.
        context: usize,
    },
    /// The context asked for is longer than the model's trained context.
    #[error(
        "a context of {requested} positions exceeds the model's trained context of {trained} \
         positions (it would need {} of device memory); ask for at most {trained}",
        crate::memory::bytes_text(*bytes)
    )]
    ContextTooLong {
        /// Positions asked for.
        requested: usize,
        /// The model's trained context (`llama.context_length`).
        trained: usize,
        /// Device bytes the requested context would need.
        bytes: u64,
    },
    /// A configuration needs more memory than the device or the host can give; the message
    /// names the configuration, the bytes and the limit.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The batched sequences' block pool cannot hold a new sequence now (it names the pool's
    /// size). The request can wait for open sequences to close, or run as a single sequence.
    #[error(transparent)]
    KvPoolFull(#[from] crate::kv_pool::PoolFull),
    /// Loading would exceed the caller's device memory budget.
    #[error("the model needs about {needed} bytes of device memory, over the budget of {budget}")]
    OverBudget {
        /// Estimated bytes needed.
        needed: u64,
        /// The budget in bytes.
        budget: u64,
    },
    /// The budget is too small for the model however many of its layers stream from the file.
    #[error(
        "a device memory budget of {} is too small for this model even with its layers \
         streamed from the file: it needs at least {} — {} for what stays on the device \
         (embeddings, output head, norms, resident layers, KV cache, activations) and {} for a \
         ring of {} layers",
        crate::memory::bytes_text(*budget),
        crate::memory::bytes_text(*needed),
        crate::memory::bytes_text(needed - ring),
        crate::memory::bytes_text(*ring),
        crate::runtime::RING_SLOTS
    )]
    BudgetTooSmallToStream {
        /// The budget in bytes.
        budget: u64,
        /// Device bytes of the smallest plan.
        needed: u64,
        /// Of which the ring of streamed layers.
        ring: u64,
    },
    /// Reading the layers streamed from the model file failed.
    #[error("streaming layers from the model file: {0}")]
    Streaming(String),
    /// Logits are unusable (NaN, empty).
    #[error("numerical error: {0}")]
    Numerics(String),
    /// Reading the GGUF file failed.
    #[error(transparent)]
    Gguf(#[from] pio_gguf::GgufError),
    /// Building or running the tokenizer or chat template failed.
    #[error(transparent)]
    Text(#[from] pio_text::TextError),
    /// A GPU operation failed.
    #[error("GPU: {0}")]
    Gpu(#[from] pio_gpu::GpuError),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The GGUF types the matrix kernels read, for messages: `F32, F16, ...`.
fn supported_types() -> String {
    pio_gpu::WeightDtype::ALL
        .map(|dtype| dtype.gguf_type().name())
        .join(", ")
}
