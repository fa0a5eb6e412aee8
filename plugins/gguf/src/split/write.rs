//! Writing split models: a model cut into shards in llama.cpp's `gguf-split` layout with this
//! crate's manifest ([`split`]), and a model written back as one file ([`merge`]). Tensor bytes
//! are streamed from the source's mapping into each file, hashed as they are written.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::ops::Range;
use std::path::Path;

use crate::error::{GgufError, Result};
use crate::parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
use crate::reader::GgufFile;
use crate::split::digest::{sha256_hex, HashingWriter};
use crate::split::keys;
use crate::split::manifest::{FileEntry, Manifest};
use crate::split::name::ShardName;
use crate::tensor::TensorView;
use crate::value::MetadataValue;
use crate::writer::{header, tensor_info_len};

/// How much one shard may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// At most this many bytes per shard file, header and padding included. A tensor that
    /// alone exceeds it is written in a shard of its own, which then exceeds it.
    Bytes(u64),
    /// At most this many tensors per shard (at least one).
    Tensors(usize),
}

/// Writes the model `file` as shards `{prefix}-00001-of-0000N.gguf`, ... and the manifest
/// `{prefix}.shards.json`, and returns the manifest.
///
/// As llama.cpp's `gguf-split` does, the first shard holds the model's metadata and every shard
/// the split keys (`split.no`, `split.count`, `split.tensors.count`), its tensors' descriptors
/// and their data; tensors keep their order and the model's alignment (other shards than the
/// first carry `general.alignment` when it is not the default).
pub fn split(file: &GgufFile, limit: Limit, prefix: &Path) -> Result<Manifest> {
    let views = file
        .tensors()
        .iter()
        .map(|info| file.tensor(&info.name))
        .collect::<Result<Vec<_>>>()?;
    let alignment = file.alignment();
    let model_metadata = || file.metadata().iter().map(|(k, v)| (k.as_str(), v));
    let other_metadata: Vec<(&str, &MetadataValue)> = file
        .metadata()
        .iter()
        .filter(|(key, _)| key == ALIGNMENT_KEY && alignment != DEFAULT_ALIGNMENT)
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    // The split keys take the same bytes whatever their values: size the headers with any.
    let sizing_keys = keys::entries(0, 1, 0);
    let with_keys = |metadata: Vec<(&str, &MetadataValue)>| -> Result<u64> {
        let keys = sizing_keys.iter().map(|(k, v)| (*k, v));
        let all: Vec<_> = metadata.into_iter().chain(keys).collect();
        Ok(header(&all, &[], 1)?.len() as u64)
    };
    let bases = [
        with_keys(model_metadata().collect())?,
        with_keys(other_metadata.clone())?,
    ];
    let groups = group(&views, limit, bases, alignment)?;
    let count = groups.len();
    if count > u16::MAX as usize || views.len() > i32::MAX as usize {
        return Err(GgufError::Writer(format!(
            "{count} shards of {} tensors: llama.cpp's split keys hold at most {} shards and {} tensors",
            views.len(),
            u16::MAX,
            i32::MAX
        )));
    }

    let split_keys: Vec<_> = (0..count)
        .map(|index| keys::entries(index, count, views.len()))
        .collect();
    let mut shards = Vec::with_capacity(count);
    for (index, range) in groups.into_iter().enumerate() {
        let keys = split_keys[index].iter().map(|(k, v)| (*k, v));
        let metadata: Vec<_> = if index == 0 {
            model_metadata().chain(keys).collect()
        } else {
            keys.chain(other_metadata.iter().copied()).collect()
        };
        let path = ShardName::new(prefix, index, count).path();
        shards.push(write_file(&path, &metadata, &views[range], alignment)?);
    }
    let original = (file.shard_paths().len() == 1).then(|| {
        let bytes = file.shard_bytes(0);
        FileEntry {
            file: file_name(file.path()),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        }
    });
    let manifest = Manifest { original, shards };
    manifest.write_to(&ShardName::new(prefix, 0, count).manifest_path())?;
    Ok(manifest)
}

/// Writes the model `file` (typically a split model, opened from its first shard) as the one
/// GGUF file `out`: its metadata in order without the split keys, its tensors in order, its
/// alignment. For a model cut from a file laid out as GGUF writers lay files out (llama.cpp's,
/// the `gguf` Python package's, this crate's), these are that file's bytes.
pub fn merge(file: &GgufFile, out: &Path) -> Result<FileEntry> {
    let views = file
        .tensors()
        .iter()
        .map(|info| file.tensor(&info.name))
        .collect::<Result<Vec<_>>>()?;
    let metadata: Vec<_> = file
        .metadata()
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    write_file(out, &metadata, &views, file.alignment())
}

/// Cuts `views` into consecutive ranges, one per shard, as `limit` allows; `bases` are the
/// header bytes of the first and of the other shards before their tensor descriptors.
fn group(
    views: &[TensorView<'_>],
    limit: Limit,
    bases: [u64; 2],
    alignment: u64,
) -> Result<Vec<Range<usize>>> {
    let per_shard = match limit {
        Limit::Tensors(0) => {
            return Err(GgufError::Writer(
                "a shard holds at least one tensor".into(),
            ))
        }
        Limit::Tensors(n) => n,
        Limit::Bytes(_) => usize::MAX,
    };
    let max_bytes = match limit {
        Limit::Bytes(n) => n,
        Limit::Tensors(_) => u64::MAX,
    };
    let mut groups = Vec::new();
    let (mut start, mut infos, mut data) = (0, 0, 0);
    for (index, view) in views.iter().enumerate() {
        let info = tensor_info_len(view.info);
        let size = (view.data.len() as u64).next_multiple_of(alignment);
        let base = bases[usize::from(!groups.is_empty())];
        let bytes = (base + infos + info).next_multiple_of(alignment) + data + size;
        if index > start && (index - start == per_shard || bytes > max_bytes) {
            groups.push(start..index);
            (start, infos, data) = (index, 0, 0);
        }
        infos += info;
        data += size;
    }
    groups.push(start..views.len());
    Ok(groups)
}

/// Writes one GGUF file — `metadata`, then `tensors` with their data padded to `alignment` —
/// beside `path` and renames it into place (an interrupted run leaves no half-written file
/// under the name); returns its entry for the manifest.
fn write_file(
    path: &Path,
    metadata: &[(&str, &MetadataValue)],
    tensors: &[TensorView<'_>],
    alignment: u64,
) -> Result<FileEntry> {
    let partial = path.with_extension("partial");
    let io_error = |source| GgufError::Io {
        path: partial.clone(),
        source,
    };
    let descriptors: Vec<_> = tensors
        .iter()
        .map(|view| (view.info, view.data.len() as u64))
        .collect();
    let header = header(metadata, &descriptors, alignment)?;
    let file = File::create(&partial).map_err(io_error)?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let mut write = || -> io::Result<()> {
        out.write_all(&header)?;
        for view in tensors {
            out.write_all(view.data)?;
            let padding = out.bytes().next_multiple_of(alignment) - out.bytes();
            io::copy(&mut io::repeat(0).take(padding), &mut out)?;
        }
        out.flush()
    };
    write().map_err(io_error)?;
    let (_, bytes, sha256) = out.finish();
    std::fs::rename(&partial, path).map_err(io_error)?;
    Ok(FileEntry {
        file: file_name(path),
        bytes,
        sha256,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}
