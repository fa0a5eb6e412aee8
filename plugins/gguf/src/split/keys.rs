//! The metadata keys of a split model, as llama.cpp writes them into every shard
//! (`LLM_KV_SPLIT_*`): the shard's index, the number of shards and the model's tensor count.

use std::path::Path;

use crate::error::{GgufError, Result};
use crate::value::MetadataValue;

/// The shard's index, from 0 (u16).
pub const SPLIT_NO: &str = "split.no";
/// How many shards the model has (u16).
pub const SPLIT_COUNT: &str = "split.count";
/// How many tensors the model has in all its shards (i32).
pub const SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// One shard's split keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SplitKeys {
    pub(crate) index: usize,
    pub(crate) count: usize,
    /// `None` when the shard does not say (llama.cpp does not need it to load a model).
    pub(crate) tensors: Option<u64>,
}

impl SplitKeys {
    /// Removes the split keys from `metadata` (the metadata of the file `path`) and reads them;
    /// `None` when the file has no `split.count`, that is, is not a shard.
    pub(crate) fn take(
        path: &Path,
        metadata: &mut Vec<(String, MetadataValue)>,
    ) -> Result<Option<Self>> {
        let mut take = |key: &str| {
            let at = metadata.iter().position(|(k, _)| k == key)?;
            Some(metadata.remove(at).1)
        };
        let (index, count, tensors) =
            (take(SPLIT_NO), take(SPLIT_COUNT), take(SPLIT_TENSORS_COUNT));
        let Some(count) = count else {
            return Ok(None);
        };
        let number = |key: &str, value: MetadataValue, max: u64| {
            value.as_u64().filter(|&n| n <= max).ok_or_else(|| {
                GgufError::MetadataType {
                    path: path.to_owned(),
                    key: key.to_owned(),
                    expected: "a non-negative integer of its llama.cpp type (u16, or i32 for the tensor count)",
                    found: value.describe(),
                }
            })
        };
        let count = number(SPLIT_COUNT, count, u16::MAX.into())? as usize;
        let index = match index {
            Some(value) => number(SPLIT_NO, value, u16::MAX.into())? as usize,
            None if count <= 1 => 0,
            None => {
                return Err(GgufError::MissingKey {
                    path: path.to_owned(),
                    key: SPLIT_NO.to_owned(),
                })
            }
        };
        let tensors = tensors
            .map(|value| number(SPLIT_TENSORS_COUNT, value, i32::MAX as u64))
            .transpose()?;
        if index >= count.max(1) {
            return Err(GgufError::Split {
                path: path.to_owned(),
                what: format!("`{SPLIT_NO}` is {index}, past `{SPLIT_COUNT}` {count}"),
            });
        }
        Ok(Some(Self {
            index,
            count,
            tensors,
        }))
    }
}

/// The split keys of shard `index` of `count` of a model of `tensors` tensors, typed as llama.cpp
/// types them (u16, u16, i32; the writer checks the ranges).
pub(crate) fn entries(
    index: usize,
    count: usize,
    tensors: usize,
) -> [(&'static str, MetadataValue); 3] {
    [
        (SPLIT_NO, MetadataValue::U16(index as u16)),
        (SPLIT_COUNT, MetadataValue::U16(count as u16)),
        (SPLIT_TENSORS_COUNT, MetadataValue::I32(tensors as i32)),
    ]
}
