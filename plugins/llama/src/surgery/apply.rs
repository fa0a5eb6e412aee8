//! `surgery.apply`: a model file rewritten without some layers and heads ([`pio_gguf::surgery`]),
//! with what its family infers from layer indices written out ([`models::surgery_metadata`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pio_gguf::surgery::{Shape, Surgery};
use pio_gguf::{GgufError, GgufFile};

use crate::error::{Error, Result};
use crate::models;

/// What [`apply`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// The file written.
    pub out: PathBuf,
    /// Layers of the model before and after.
    pub layers_before: usize,
    /// Layers left.
    pub layers_after: usize,
    /// Query heads whose output columns were zeroed (they are still computed).
    pub silenced_heads: usize,
    /// Size of the model file before.
    pub bytes_before: u64,
    /// Size of the file written.
    pub bytes_after: u64,
}

/// Checks `surgery` against the model in `file`; a bad one is [`Error::InvalidParams`] naming
/// the component.
pub fn check(file: &GgufFile, surgery: &Surgery) -> Result<Shape> {
    let shape = Shape::of(file)?;
    surgery
        .validate(shape)
        .map_err(|e| Error::InvalidParams(e.to_string()))?;
    Ok(shape)
}

/// Writes `file` with `surgery` applied to `out`: checked first (nothing is written for a bad
/// surgery), then written beside `out` and renamed into place, so an interrupted run leaves no
/// half-written model under that name. Refuses to overwrite the model itself.
pub fn apply(file: &GgufFile, surgery: &Surgery, out: &Path) -> Result<Applied> {
    if same_file(file.path(), out) {
        return Err(Error::InvalidParams(format!(
            "the output {} is the model itself; write to another file",
            out.display()
        )));
    }
    let shape = check(file, surgery)?;
    let spec = models::describe(file)?;
    let kept: Vec<usize> = surgery
        .renumbering(shape.layers)
        .iter()
        .enumerate()
        .filter_map(|(old, new)| new.map(|_| old))
        .collect();
    let overrides = models::surgery_metadata(&spec, &kept);
    let writer = surgery.apply(file, &overrides).map_err(|e| match e {
        // Heads whose columns split the tensor's blocks: the request cannot be served.
        GgufError::Surgery(_) => Error::InvalidParams(e.to_string()),
        e => e.into(),
    })?;
    let partial = out.with_extension("partial");
    writer.write_to(&partial)?;
    std::fs::rename(&partial, out).map_err(|source| GgufError::Io {
        path: out.to_owned(),
        source,
    })?;
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    Ok(Applied {
        out: out.to_owned(),
        layers_before: shape.layers,
        layers_after: kept.len(),
        silenced_heads: surgery.remove_heads.iter().collect::<BTreeSet<_>>().len(),
        bytes_before: size(file.path()),
        bytes_after: size(out),
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
