//! Arbitrary bytes as the files of a sentence-transformers BERT model directory. The input is
//! cut at 0xFF bytes (never part of JSON text) into `config.json`, `sentence_bert_config.json`,
//! `modules.json`, `1_Pooling/config.json` and `model.safetensors`. Every reader must fail with
//! an error or succeed without a panic, a huge allocation or a hang.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pio_plugin_bert::config::{BertConfig, ModelConfig};
use pio_plugin_bert::weights::BertWeights;

/// One model folder for the whole run; each input overwrites its files.
fn model_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        std::fs::create_dir(dir.path().join("1_Pooling")).expect("the pooling folder");
        dir
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |&b| b == 0xFF);
    let mut next = || parts.next().unwrap_or_default();
    let (config, sentence, modules, pooling, safetensors) =
        (next(), next(), next(), next(), next());

    let config_text = String::from_utf8_lossy(config);
    let Ok(bert) = BertConfig::parse(&config_text, Path::new("config.json")) else {
        return;
    };
    // Validation promises what the kernels rely on.
    assert!(bert.hidden_size % bert.num_heads == 0);
    assert!(bert.head_dim() % 4 == 0 && bert.head_dim() <= 128);
    if let Ok(weights) = BertWeights::from_bytes(safetensors, Path::new("model.safetensors"), &bert)
    {
        assert_eq!(weights.layers.len(), bert.num_layers);
        assert_eq!(
            weights.word_embeddings.len(),
            bert.vocab_size * bert.hidden_size
        );
    }

    let dir = model_dir();
    for (name, bytes) in [
        ("config.json", config),
        ("sentence_bert_config.json", sentence),
        ("modules.json", modules),
        ("1_Pooling/config.json", pooling),
    ] {
        std::fs::write(dir.join(name), bytes).expect("writing a model file");
    }
    if let Ok(model) = ModelConfig::load(dir) {
        assert_eq!(model.bert, bert);
        assert!((2..=bert.max_position_embeddings).contains(&model.max_seq_length));
    }
});
