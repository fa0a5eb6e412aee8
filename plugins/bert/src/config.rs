//! The model's configuration, read from a sentence-transformers model directory:
//! `config.json` (the BERT architecture), `sentence_bert_config.json` (`max_seq_length`),
//! `modules.json` (which modules follow the transformer) and the pooling module's
//! `config.json` (e.g. `1_Pooling/config.json`). Every error names the file and the field.

use std::path::{Component, Path, PathBuf};

use pio_plugin_api::serde_json::{Map, Value};
use pio_plugin_api::{PluginError, PluginResult};

/// Shapes and constants of a BERT encoder (`config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width of the hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_layers: usize,
    /// Attention heads per layer.
    pub num_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Rows of the position-embedding table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type-embedding table.
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f32,
}

impl BertConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// How token vectors become one sentence vector (sentence-transformers' `Pooling` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average of the tokens' vectors (`pooling_mode_mean_tokens`).
    Mean,
    /// The first token's vector (`pooling_mode_cls_token`).
    Cls,
    /// Element-wise maximum over the tokens (`pooling_mode_max_tokens`).
    Max,
    /// Sum divided by the square root of the token count (`pooling_mode_mean_sqrt_len_tokens`).
    MeanSqrtLen,
}

impl Pooling {
    /// The `MODE` constant of `shaders/bert/pool.wgsl`.
    pub(crate) fn shader_mode(self) -> f64 {
        match self {
            Self::Mean => 0.0,
            Self::Cls => 1.0,
            Self::Max => 2.0,
            Self::MeanSqrtLen => 3.0,
        }
    }
}

/// Everything needed to run the model, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The encoder.
    pub bert: BertConfig,
    /// Longest input in tokens, `[CLS]` and `[SEP]` included (`sentence_bert_config.json`).
    pub max_seq_length: usize,
    /// Pooling of the token vectors.
    pub pooling: Pooling,
    /// Whether a `Normalize` module L2-normalises the pooled vector.
    pub normalize: bool,
}

/// Reads and parses one JSON file of the model directory into an object.
fn read_object(path: &Path) -> PluginResult<Map<String, Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PluginError::model_load(format!("cannot read {}: {e}", path.display())))?;
    parse_object(path, &text)
}

/// Parses the text of one JSON file (named `path` in errors) into an object.
fn parse_object(path: &Path, text: &str) -> PluginResult<Map<String, Value>> {
    match pio_plugin_api::serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(PluginError::model_load(format!(
            "{}: expected a JSON object",
            path.display()
        ))),
        Err(e) => Err(PluginError::model_load(format!(
            "{}: invalid JSON: {e}",
            path.display()
        ))),
    }
}

/// Field accessors that name the file and the field in their errors.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn error(&self, field: &str, what: impl std::fmt::Display) -> PluginError {
        PluginError::model_load(format!("{}: field '{field}' {what}", self.path.display()))
    }

    fn positive(&self, field: &str) -> PluginResult<usize> {
        match self.map.get(field) {
            None => Err(self.error(field, "is missing")),
            Some(value) => value
                .as_u64()
                .filter(|&n| n > 0)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    self.error(field, format!("must be a positive integer, got {value}"))
                }),
        }
    }

    fn string_or(&self, field: &str, default: &'static str) -> PluginResult<String> {
        match self.map.get(field) {
            None => Ok(default.to_owned()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(value) => Err(self.error(field, format!("must be a string, got {value}"))),
        }
    }

    fn flag(&self, field: &str) -> PluginResult<bool> {
        match self.map.get(field) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(value) => Err(self.error(field, format!("must be true or false, got {value}"))),
        }
    }
}

impl BertConfig {
    /// Parses and validates the text of a `config.json`; `path` only names the file in errors.
    /// [`ModelConfig::load`] reads the file and calls this.
    pub fn parse(text: &str, path: &Path) -> PluginResult<Self> {
        bert_config(path, parse_object(path, text)?)
    }
}

/// Validates the object of `config.json` (read from `path`).
fn bert_config(path: &Path, map: Map<String, Value>) -> PluginResult<BertConfig> {
    let f = Fields { path, map: &map };
    let model_type = f.string_or("model_type", "bert")?;
    if model_type != "bert" {
        return Err(f.error(
            "model_type",
            format!("is {model_type:?}; only \"bert\" is supported"),
        ));
    }
    let act = f.string_or("hidden_act", "gelu")?;
    if act != "gelu" {
        return Err(f.error(
            "hidden_act",
            format!("is {act:?}; only \"gelu\" (the erf form) is supported"),
        ));
    }
    let position = f.string_or("position_embedding_type", "absolute")?;
    if position != "absolute" {
        return Err(f.error(
            "position_embedding_type",
            format!("is {position:?}; only \"absolute\" is supported"),
        ));
    }
    let layer_norm_eps = match map.get("layer_norm_eps") {
        None => 1e-12,
        Some(value) => value
            .as_f64()
            .filter(|e| *e > 0.0 && *e < 1.0)
            .ok_or_else(|| f.error("layer_norm_eps", format!("must be in (0, 1), got {value}")))?
            as f32,
    };
    let config = BertConfig {
        vocab_size: f.positive("vocab_size")?,
        hidden_size: f.positive("hidden_size")?,
        num_layers: f.positive("num_hidden_layers")?,
        num_heads: f.positive("num_attention_heads")?,
        intermediate_size: f.positive("intermediate_size")?,
        max_position_embeddings: f.positive("max_position_embeddings")?,
        type_vocab_size: f.positive("type_vocab_size")?,
        layer_norm_eps,
    };
    if config.hidden_size % config.num_heads != 0 {
        return Err(f.error(
            "num_attention_heads",
            format!(
                "({}) must divide hidden_size ({})",
                config.num_heads, config.hidden_size
            ),
        ));
    }
    if config.head_dim() % 4 != 0 || config.head_dim() > 128 {
        return Err(f.error(
            "num_attention_heads",
            format!(
                "gives a head width of {}; the kernels need a multiple of 4 up to 128",
                config.head_dim()
            ),
        ));
    }
    if config.intermediate_size % 4 != 0 {
        return Err(f.error("intermediate_size", "must be a multiple of 4"));
    }
    Ok(config)
}

/// Which modules follow the transformer, from `modules.json`: the pooling module's directory
/// and whether a `Normalize` module is present.
fn modules(path: &Path) -> PluginResult<(PathBuf, bool)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PluginError::model_load(format!("cannot read {}: {e}", path.display())))?;
    let list: Vec<Value> = pio_plugin_api::serde_json::from_str(&text).map_err(|e| {
        PluginError::model_load(format!(
            "{}: expected a JSON array of modules: {e}",
            path.display()
        ))
    })?;
    let mut pooling = None;
    let mut normalize = false;
    for (i, module) in list.iter().enumerate() {
        let kind = module.get("type").and_then(Value::as_str).ok_or_else(|| {
            PluginError::model_load(format!(
                "{}: module {i} has no string field 'type'",
                path.display()
            ))
        })?;
        match kind.rsplit('.').next().unwrap_or(kind) {
            "Transformer" => {}
            "Pooling" => {
                let dir = module.get("path").and_then(Value::as_str).ok_or_else(|| {
                    PluginError::model_load(format!(
                        "{}: Pooling module {i} has no string field 'path'",
                        path.display()
                    ))
                })?;
                // modules.json comes with the downloaded model: a path that leaves the model
                // folder ("/dev/zero", "../../..") would make loading read any file, even one
                // that never ends. Only plain relative paths are followed.
                let relative = Path::new(dir);
                if !relative
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
                {
                    return Err(PluginError::model_load(format!(
                        "{}: Pooling module {i} has path {dir:?}; it must be a relative path \
                         inside the model folder (no '..', not absolute)",
                        path.display()
                    )));
                }
                pooling = Some(relative.to_owned());
            }
            "Normalize" => normalize = true,
            other => {
                return Err(PluginError::model_load(format!(
                    "{}: module {i} has type {kind:?}; module {other:?} is not supported",
                    path.display()
                )))
            }
        }
    }
    let pooling = pooling.ok_or_else(|| {
        PluginError::model_load(format!("{}: no Pooling module listed", path.display()))
    })?;
    Ok((pooling, normalize))
}

/// Parses the pooling module's `config.json`; exactly one mode must be enabled.
fn pooling(path: &Path, hidden_size: usize) -> PluginResult<Pooling> {
    let map = read_object(path)?;
    let f = Fields { path, map: &map };
    let width = f.positive("word_embedding_dimension")?;
    if width != hidden_size {
        return Err(f.error(
            "word_embedding_dimension",
            format!("is {width} but config.json has hidden_size {hidden_size}"),
        ));
    }
    let modes = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_max_tokens", Pooling::Max),
        ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
    ];
    let mut chosen = Vec::new();
    for (field, mode) in modes {
        if f.flag(field)? {
            chosen.push((field, mode));
        }
    }
    for field in ["pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"] {
        if f.flag(field)? {
            return Err(f.error(field, "is true; that pooling mode is not supported"));
        }
    }
    match chosen.as_slice() {
        [(_, mode)] => Ok(*mode),
        [] => Err(PluginError::model_load(format!(
            "{}: no pooling mode is enabled",
            path.display()
        ))),
        several => Err(PluginError::model_load(format!(
            "{}: several pooling modes are enabled ({}); only one is supported",
            path.display(),
            several
                .iter()
                .map(|(f, _)| *f)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

impl ModelConfig {
    /// Reads and validates the configuration files of the model directory `dir`.
    pub fn load(dir: &Path) -> PluginResult<Self> {
        let config_path = dir.join("config.json");
        let bert = bert_config(&config_path, read_object(&config_path)?)?;
        let st_path = dir.join("sentence_bert_config.json");
        let st = read_object(&st_path)?;
        let st_fields = Fields {
            path: &st_path,
            map: &st,
        };
        let max_seq_length = st_fields.positive("max_seq_length")?;
        if max_seq_length < 2 || max_seq_length > bert.max_position_embeddings {
            return Err(st_fields.error(
                "max_seq_length",
                format!(
                    "is {max_seq_length}; it must be in 2..={} (max_position_embeddings)",
                    bert.max_position_embeddings
                ),
            ));
        }
        let (pooling_dir, normalize) = modules(&dir.join("modules.json"))?;
        let pooling = pooling(&dir.join(pooling_dir).join("config.json"), bert.hidden_size)?;
        Ok(Self {
            bert,
            max_seq_length,
            pooling,
            normalize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model folder whose modules.json names `pooling_path` as the Pooling module's folder.
    fn model_with_pooling_path(pooling_path: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, value: Value| {
            std::fs::write(dir.path().join(name), value.to_string()).unwrap();
        };
        write(
            "config.json",
            pio_plugin_api::serde_json::json!({
                "vocab_size": 3, "hidden_size": 4, "num_hidden_layers": 1,
                "num_attention_heads": 1, "intermediate_size": 4,
                "max_position_embeddings": 4, "type_vocab_size": 1
            }),
        );
        write(
            "sentence_bert_config.json",
            pio_plugin_api::serde_json::json!({"max_seq_length": 4}),
        );
        write(
            "modules.json",
            pio_plugin_api::serde_json::json!([
                {"path": pooling_path, "type": "sentence_transformers.models.Pooling"}
            ]),
        );
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        write(
            "1_Pooling/config.json",
            pio_plugin_api::serde_json::json!({
                "word_embedding_dimension": 4, "pooling_mode_mean_tokens": true
            }),
        );
        dir
    }

    #[test]
    fn pooling_path_inside_the_model_folder_loads() {
        let dir = model_with_pooling_path("1_Pooling");
        let config = ModelConfig::load(dir.path()).unwrap();
        assert_eq!(config.pooling, Pooling::Mean);
        assert_eq!(config.bert.hidden_size, 4);
    }

    /// Regression: the Pooling module's path was joined to the model folder unchecked, so a
    /// modules.json naming "/dev/zero" made loading read without end (memory exhaustion).
    #[test]
    fn pooling_path_outside_the_model_folder_is_refused() {
        for escape in ["/dev/zero", "../1_Pooling", "1_Pooling/../../etc"] {
            let dir = model_with_pooling_path(escape);
            let err = ModelConfig::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("inside the model folder"), "{escape}: {err}");
        }
    }

    #[test]
    fn parse_names_the_file_and_field() {
        let err = BertConfig::parse(r#"{"vocab_size": 0}"#, Path::new("x/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x/config.json") && err.contains("vocab_size"),
            "{err}"
        );
        let err = BertConfig::parse("[1]", Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a JSON object"), "{err}");
    }
}
