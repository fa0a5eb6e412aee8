//! Test support shared by the plugin crates: where the real models are cached, and the rule for
//! tests that need one.
//!
//! Models are fetched by `pio models fetch` into `<cache>/models` (`$PIO_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/pio`, else `~/.cache/pio` — the host's rule). A test that needs a missing
//! model prints a loud `SKIPPED` line and passes, unless `PIO_REQUIRE_MODELS=1` (set by the
//! project's test command), which makes a missing model a failure.

use std::path::PathBuf;

/// SmolLM2-135M-Instruct Q4_1, relative to the models directory.
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

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

/// The cached model `relative` (e.g. [`SMOLLM2`]), or `None` after a loud skip notice; panics
/// when it is missing and `PIO_REQUIRE_MODELS=1`.
pub fn cached_model(relative: &str) -> Option<PathBuf> {
    let path = models_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("PIO_REQUIRE_MODELS").as_deref() != Ok("1"),
        "PIO_REQUIRE_MODELS=1 but the model is not at {} (run `pio models fetch`)",
        path.display()
    );
    eprintln!("\n*** SKIPPED: model not found at {} ***\n", path.display());
    None
}
