//! Test support shared by the plugin crates: where the real models are cached, and the rule for
//! tests that need one.
//!
//! Models are fetched by `pio models fetch` into `<cache>/models` (`$PIO_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/pio`, else `~/.cache/pio` — the host's rule). A test that needs a model is
//! `#[ignore = "needs the SmolLM2 model: pio models fetch"]` (so a plain `cargo test` lists it as
//! ignored instead of passing it) and gets the model from [`model`], which fails the test when
//! the model is missing; the project's test command (`scripts/test`) fetches the models and runs
//! the ignored tests too (`--include-ignored`).

use std::path::PathBuf;

/// SmolLM2-135M-Instruct Q4_1, relative to the models directory.
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Gemma 3 270M Q4_K_M, relative to the models directory.
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// The all-MiniLM-L6-v2 folder, relative to the models directory.
pub const MINILM: &str = "all-MiniLM-L6-v2";

/// The directory `pio models fetch` writes to.
pub fn models_dir() -> PathBuf {
    let cache = std::env::var_os("PIO_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("pio")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pio")))
        .unwrap_or_else(|| PathBuf::from("/tmp/pio"));
    cache.join("models")
}

/// The cached model `relative` (e.g. [`SMOLLM2`]); fails the test, naming the command that
/// fetches it, when it is missing.
pub fn model(relative: &str) -> PathBuf {
    find_model(relative).unwrap_or_else(|| {
        panic!(
            "this test needs the model {relative} at {}: run `pio models fetch`",
            models_dir().join(relative).display()
        )
    })
}

/// The cached model `relative`, if it is there (for benchmarks that can run without it).
pub fn find_model(relative: &str) -> Option<PathBuf> {
    Some(models_dir().join(relative)).filter(|path| path.exists())
}
