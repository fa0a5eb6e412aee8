//! `surgery.apply`: a model file rewritten without some layers and heads ([`pio_gguf::surgery`]),
//! with what its family infers from layer indices written out ([`models::surgery_metadata`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pio_gguf::surgery::{Shape, Surgery};
use pio_gguf::{GgufError, GgufFile};
use pio_gpu::BLOCK_ELEMENTS;

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
    /// Query heads removed from the projections.
    pub removed_heads: usize,
    /// Query heads of each layer left, in the new numbering.
    pub heads_after: Vec<usize>,
    /// Key/value heads of each layer left (see [`pio_gguf::surgery::HeadPlan`] for why a
    /// layer may get more than it had).
    pub kv_heads_after: Vec<usize>,
    /// Size of the model file before.
    pub bytes_before: u64,
    /// Size of the file written.
    pub bytes_after: u64,
}

/// Checks `surgery` against the model in `file`; a bad one is [`Error::InvalidParams`] naming
/// the component. Beyond [`Surgery::validate`], a layer left with query heads whose output
/// projection the GPU kernels cannot read (they take a matrix's columns in blocks of
/// [`BLOCK_ELEMENTS`]; only heads narrower than that can leave such a width) is refused, so
/// nothing is written that this plugin would not load.
pub fn check(file: &GgufFile, surgery: &Surgery) -> Result<Shape> {
    let shape = Shape::of(file)?;
    surgery
        .validate(&shape)
        .map_err(|e| Error::InvalidParams(e.to_string()))?;
    for (layer, plan) in surgery.head_plans(&shape).iter().enumerate() {
        let Some(plan) = plan else { continue };
        let columns = plan.query.len() * shape.head_dim;
        if columns % BLOCK_ELEMENTS != 0 {
            return Err(Error::InvalidParams(format!(
                "layer {layer} would keep {} heads of {} values, {columns} columns of \
                 attn_output; the GPU kernels read columns in blocks of {BLOCK_ELEMENTS}",
                plan.query.len(),
                shape.head_dim
            )));
        }
    }
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
        // Heads whose columns split the tensor's blocks, or a fused q/k/v projection: the
        // request cannot be served.
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
    let plans = surgery.head_plans(&shape);
    let after = |count: &dyn Fn(usize) -> usize| kept.iter().map(|&l| count(l)).collect();
    Ok(Applied {
        out: out.to_owned(),
        layers_before: shape.layers,
        layers_after: kept.len(),
        removed_heads: surgery.remove_heads.iter().collect::<BTreeSet<_>>().len(),
        heads_after: after(&|l| plans[l].as_ref().map_or(shape.heads[l], |p| p.query.len())),
        kv_heads_after: after(&|l| plans[l].as_ref().map_or(shape.kv_heads[l], |p| p.kv.len())),
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
