//! llama.cpp's file names for the shards of a split model (`llama_split_path`):
//! `{prefix}-{n:05}-of-{count:05}.gguf`, `n` counted from 1, and this crate's manifest beside
//! them, `{prefix}.shards.json`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// One shard of a split model, by its place in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardName {
    prefix: PathBuf,
    index: usize,
    count: usize,
}

impl ShardName {
    /// Shard `index` (from 0) of `count`, named after `prefix` (a path without the suffix, e.g.
    /// `out/model`).
    pub fn new(prefix: impl Into<PathBuf>, index: usize, count: usize) -> Self {
        Self {
            prefix: prefix.into(),
            index,
            count,
        }
    }

    /// The shard a path names, if its file name follows the rule (`model-00002-of-00003.gguf`:
    /// prefix `model`, index 1, count 3).
    pub fn parse(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.strip_suffix(".gguf")?;
        let (rest, count) = name.rsplit_once("-of-")?;
        let (stem, number) = rest.rsplit_once('-')?;
        let field = |digits: &str| {
            (digits.len() == 5 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<usize>().ok())
                .flatten()
        };
        let (number, count) = (field(number)?, field(count)?);
        if stem.is_empty() || number == 0 || number > count {
            return None;
        }
        Some(Self::new(path.with_file_name(stem), number - 1, count))
    }

    /// The shard's index, from 0 (`split.no`).
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many shards the model has (`split.count`).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Shard `index` of the same model.
    pub fn sibling(&self, index: usize) -> Self {
        Self::new(self.prefix.clone(), index, self.count)
    }

    /// The shard's path.
    pub fn path(&self) -> PathBuf {
        self.with_suffix(&format!("-{:05}-of-{:05}.gguf", self.index + 1, self.count))
    }

    /// The path of the model's manifest.
    pub fn manifest_path(&self) -> PathBuf {
        self.with_suffix(".shards.json")
    }

    fn with_suffix(&self, suffix: &str) -> PathBuf {
        let mut path = OsString::from(self.prefix.as_os_str());
        path.push(suffix);
        PathBuf::from(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp_and_parse_back() {
        let name = ShardName::new("out/model", 1, 270);
        assert_eq!(name.path(), Path::new("out/model-00002-of-00270.gguf"));
        assert_eq!(name.manifest_path(), Path::new("out/model.shards.json"));
        assert_eq!(ShardName::parse(&name.path()), Some(name.clone()));
        assert_eq!(
            name.sibling(0).path(),
            Path::new("out/model-00001-of-00270.gguf")
        );
    }

    #[test]
    fn other_names_are_not_shards() {
        for path in [
            "model.gguf",
            "model-00001-of-00003.bin",
            "model-0001-of-00003.gguf",
            "model-00000-of-00003.gguf",
            "model-00004-of-00003.gguf",
            "-00001-of-00003.gguf",
            "model-0000a-of-00003.gguf",
        ] {
            assert_eq!(ShardName::parse(Path::new(path)), None, "{path}");
        }
    }
}
