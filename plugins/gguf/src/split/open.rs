//! Opening a model from its first file: a whole model, or every shard of a split model, found by
//! llama.cpp's naming rule, checked against each other (numbering, count, tensor total, no
//! tensor twice) and, when a manifest lies beside them, each against its size and SHA-256 before
//! it is parsed.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::Path;

use crate::error::{FragmentProblem, GgufError, Result};
use crate::shard::{Header, Shard, Storage};
use crate::split::keys::SplitKeys;
use crate::split::manifest::{FileEntry, Manifest};
use crate::split::name::ShardName;
use crate::tensor::TensorInfo;
use crate::value::MetadataValue;

/// A model's files and tables, before [`crate::GgufFile`] indexes them.
pub(crate) struct Model {
    /// Its files, the first one first.
    pub(crate) shards: Vec<Shard>,
    /// The first file's metadata without the split keys, in file order.
    pub(crate) metadata: Vec<(String, MetadataValue)>,
    /// Every tensor in model order, with the index of the shard holding it.
    pub(crate) tensors: Vec<(TensorInfo, usize)>,
}

impl Model {
    /// One file's model: `shard`, already parsed into `header`; refused if it is a shard of a
    /// split model of more than one file (whose siblings cannot be found from here).
    pub(crate) fn single(shard: Shard, header: Header) -> Result<Self> {
        let Header {
            mut metadata,
            tensors,
        } = header;
        if let Some(keys) = SplitKeys::take(&shard.path, &mut metadata)?.filter(|k| k.count > 1) {
            return Err(GgufError::Split {
                path: shard.path,
                what: format!(
                    "shard {} of {}: a split model is opened from its first file, beside the others",
                    keys.index + 1,
                    keys.count
                ),
            });
        }
        Ok(Self::whole(shard, metadata, tensors))
    }

    fn whole(
        shard: Shard,
        metadata: Vec<(String, MetadataValue)>,
        tensors: Vec<TensorInfo>,
    ) -> Self {
        Self {
            shards: vec![shard],
            metadata,
            tensors: tensors.into_iter().map(|t| (t, 0)).collect(),
        }
    }

    /// The model whose first (or only) file is `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let name = ShardName::parse(path);
        if let Some(name) = name.as_ref().filter(|n| n.index() != 0) {
            return Err(GgufError::NotFirstShard {
                path: path.to_owned(),
                index: name.index(),
                count: name.count(),
                first: name.sibling(0).path(),
            });
        }
        // The named file first: if it is not there, that is the error, whatever the manifest.
        let storage = Storage::map(path).map_err(|source| GgufError::Io {
            path: path.to_owned(),
            source,
        })?;
        let manifest = match &name {
            Some(name) => Manifest::beside(name)?,
            None => None,
        };
        let expected = |index: usize| manifest.as_ref().map(|m| &m.shards[index]);
        if let Some(entry) = expected(0) {
            entry.verify(path, storage.bytes())?;
        }
        let (first, header) = Shard::parse(path.to_owned(), storage)?;
        let Header {
            mut metadata,
            tensors,
        } = header;
        let keys = match SplitKeys::take(path, &mut metadata)? {
            Some(keys) if keys.count > 1 => keys,
            _ => return Ok(Self::whole(first, metadata, tensors)),
        };
        let Some(name) = name.filter(|n| n.count() == keys.count && keys.index == 0) else {
            return Err(split_error(
                path,
                format!(
                    "shard {} of {} (by its split keys): a split model is opened from its first \
                     shard, named as llama.cpp names them (PREFIX-00001-of-{:05}.gguf) so that \
                     the others can be found",
                    keys.index + 1,
                    keys.count,
                    keys.count
                ),
            ));
        };

        let mut model = Self {
            shards: vec![first],
            metadata,
            tensors: Vec::new(),
        };
        let mut names = HashSet::new();
        model.add_tensors(path, tensors, &mut names)?;
        for index in 1..keys.count {
            let sibling = name.sibling(index).path();
            let (shard, header) = load(&sibling, expected(index))?;
            let Header {
                mut metadata,
                tensors,
            } = header;
            check_place(
                &sibling,
                SplitKeys::take(&sibling, &mut metadata)?,
                index,
                keys.count,
            )?;
            model.shards.push(shard);
            model.add_tensors(&sibling, tensors, &mut names)?;
        }
        if let Some(total) = keys.tensors.filter(|&n| n != model.tensors.len() as u64) {
            return Err(split_error(
                path,
                format!(
                    "`split.tensors.count` is {total}, the {} shards hold {} tensors",
                    keys.count,
                    model.tensors.len()
                ),
            ));
        }
        Ok(model)
    }

    /// Appends `tensors`, those of the last shard (the file `path`), refusing a name in `seen`.
    fn add_tensors(
        &mut self,
        path: &Path,
        tensors: Vec<TensorInfo>,
        seen: &mut HashSet<String>,
    ) -> Result<()> {
        let shard = self.shards.len() - 1;
        for tensor in tensors {
            if !seen.insert(tensor.name.clone()) {
                return Err(split_error(
                    path,
                    format!("tensor `{}` is also in an earlier shard", tensor.name),
                ));
            }
            self.tensors.push((tensor, shard));
        }
        Ok(())
    }
}

/// Fails unless `found`, the split keys of the file `path`, make it shard `index` of `count`.
fn check_place(path: &Path, found: Option<SplitKeys>, index: usize, count: usize) -> Result<()> {
    if found.map(|k| (k.index, k.count)) == Some((index, count)) {
        return Ok(());
    }
    let found = found.map_or("no split keys".to_owned(), |k| {
        format!("shard {} of {}", k.index + 1, k.count)
    });
    Err(split_error(
        path,
        format!("expected shard {} of {count}, found {found}", index + 1),
    ))
}

fn split_error(path: &Path, what: String) -> GgufError {
    GgufError::Split {
        path: path.to_owned(),
        what,
    }
}

/// Maps and parses the shard `path`, first checking it against the manifest's `expected` entry
/// if there is one.
fn load(path: &Path, expected: Option<&FileEntry>) -> Result<(Shard, Header)> {
    let storage = Storage::map(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => GgufError::Fragment {
            path: path.to_owned(),
            problem: FragmentProblem::Missing {
                expected_sha256: expected.map(|e| e.sha256.clone()),
            },
        },
        _ => GgufError::Io {
            path: path.to_owned(),
            source,
        },
    })?;
    if let Some(entry) = expected {
        entry.verify(path, storage.bytes())?;
    }
    Shard::parse(path.to_owned(), storage)
}
