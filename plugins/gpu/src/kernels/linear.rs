//! Fused linear kernels over row groups (`shaders/common/row_group.wgsl`): a quantized matrix
//! times the activations of several tokens, with an optional RMSNorm of the input fused in front
//! and an epilogue fused behind:
//!
//! - [`Linear`] with an [`Epilogue`]: store, or accumulate into the output (a residual add) —
//!   output projection, FFN down projection, final norm + LM head; or `silu(gate) * up` from one
//!   interleaved gate/up matrix ([`QuantMatrix::upload_gate_up`]) — the FFN's first half with
//!   its norm — or `gelu_tanh(gate) * up` (GeGLU);
//! - the bias epilogues (BERT's layers): `+ bias`, `gelu(. + bias)`, and
//!   `LayerNorm(. + bias + residual)` — one workgroup per token tile holding every row, so the
//!   LayerNorm's sums stay in workgroup memory;
//! - [`QkvRope`]: Q, K and V from one concatenated matrix, RoPE on Q and K, K and V written into
//!   the layer's cache — the attention block's input with its norm.
//!
//! One invocation computes the 8 rows of a row group for [`RowTile::tokens`] tokens, alone or
//! from weights and activations its workgroup staged ([`RowTile::staging`]).

use crate::buffer::GpuBuffer;
use crate::device::{ActivationReads, DeviceKind, Gpu};
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::kernels::kv_cache::{KvLayer, KvType};
use crate::kernels::rope::RopeTable;
use crate::layout::RowLayout;
use crate::quant::{QuantMatrix, WeightDtype, BLOCK_ELEMENTS, ROW_GROUP};
use crate::{kernel, Kernel};

/// A row-group kernel in two modules, and a third for its f16 staged variant: `own`, whose
/// invocations read their own activations (`x_own.wgsl`), with the f32 staged variant
/// (`staged.wgsl` over `staged_f32.wgsl`, which reads x its own way; run from this module) and
/// the workgroup-memory split variant where the kernel has them; `subgroup`, which may share
/// them (`x_shared.wgsl`, [`ActivationReads::Shared`]), with the subgroup split variant — only a
/// device with [`wgpu::Features::SUBGROUP`] compiles it; and `staged_f16` (`staged.wgsl` over
/// `staged_f16.wgsl`), for kernels with a staged variant — only a device with
/// [`wgpu::Features::SHADER_F16`] compiles it.
#[derive(Debug, Clone, Copy)]
struct RowGroupKernels {
    own: Kernel,
    subgroup: Kernel,
    staged_f16: Option<Kernel>,
}

impl RowGroupKernels {
    /// The module and entry point of `tile` reading the activations as `reads` says (shared
    /// ones only with [`Reduction::None`], unstaged), with the `SHARE_X` constant of
    /// `x_shared.wgsl` where the module includes it.
    fn get(
        self,
        tile: RowTile,
        reads: ActivationReads,
    ) -> (Kernel, &'static str, Option<(&'static str, f64)>) {
        match tile.staging {
            Staging::None => {}
            Staging::F32 => return (self.own, "main_staged", None),
            // A kernel without a staged variant runs unstaged (`LinearShape::unstaged`); were
            // it not, pipeline creation would name the missing entry point.
            Staging::F16 => return (self.staged_f16.unwrap_or(self.own), "main_staged", None),
        }
        match tile.reduction {
            Reduction::None if reads == ActivationReads::Shared => {
                (self.subgroup, "main", Some(("SHARE_X", 1.0)))
            }
            Reduction::None => (self.own, "main", None),
            Reduction::Workgroup { .. } => (self.own, "main_split", None),
            Reduction::Subgroup { .. } => (self.subgroup, "main_split", Some(("SHARE_X", 0.0))),
        }
    }
}

/// [`RowGroupKernels`] of `shaders/<path>` over the row-group helpers: with the entry points
/// of `row_group_main.wgsl` and the staged variants (`staged.wgsl`) when the first token is
/// `staged`, and with those the split variants (`split.wgsl`) when it is `split` (the kernel
/// then defines only its `store_tile`); without either, the kernel has entry points of its own.
/// (Every module includes `staged_f32.wgsl` or `staged_f16.wgsl` beside `staged.wgsl`.)
macro_rules! row_group_kernels {
    (split $name:literal, $path:literal $(, $helper:literal)*) => {
        RowGroupKernels {
            own: kernel!(
                $name, $path, "common/packed.wgsl", "common/row_group.wgsl", "common/x_own.wgsl",
                "common/row_group_main.wgsl", "common/staged_f32.wgsl", "common/staged.wgsl",
                "common/split.wgsl", "common/reduce_workgroup.wgsl" $(, $helper)*
            ),
            subgroup: kernel!(
                concat!($name, "_subgroup"), $path, "common/packed.wgsl",
                "common/row_group.wgsl", "common/x_shared.wgsl", "common/row_group_main.wgsl",
                "common/staged_f32.wgsl", "common/staged.wgsl", "common/split.wgsl",
                "common/reduce_subgroup.wgsl" $(, $helper)*
            ),
            staged_f16: Some(row_group_kernels!(@f16 $name, $path $(, $helper)*)),
        }
    };
    (staged $name:literal, $path:literal) => {
        RowGroupKernels {
            own: kernel!(
                $name, $path, "common/packed.wgsl", "common/row_group.wgsl", "common/x_own.wgsl",
                "common/row_group_main.wgsl", "common/staged_f32.wgsl", "common/staged.wgsl"
            ),
            subgroup: kernel!(
                concat!($name, "_subgroup"), $path, "common/packed.wgsl",
                "common/row_group.wgsl", "common/x_shared.wgsl", "common/row_group_main.wgsl",
                "common/staged_f32.wgsl", "common/staged.wgsl"
            ),
            staged_f16: Some(row_group_kernels!(@f16 $name, $path)),
        }
    };
    (@f16 $name:literal, $path:literal $(, $helper:literal)*) => {
        kernel!(
            concat!($name, "_staged_f16"), $path, "common/packed.wgsl", "common/row_group.wgsl",
            "common/x_own.wgsl", "common/row_group_main.wgsl", "common/staged_f16.wgsl",
            "common/staged.wgsl" $(, $helper)*
        )
    };
    ($name:literal, $path:literal) => {
        RowGroupKernels {
            own: kernel!(
                $name, $path, "common/packed.wgsl", "common/row_group.wgsl", "common/x_own.wgsl"
            ),
            subgroup: kernel!(
                concat!($name, "_subgroup"), $path, "common/packed.wgsl",
                "common/row_group.wgsl", "common/x_shared.wgsl"
            ),
            staged_f16: None,
        }
    };
}

const LINEAR: RowGroupKernels = row_group_kernels!(split "linear", "common/linear.wgsl");
const SWIGLU: RowGroupKernels = row_group_kernels!(split "swiglu", "common/swiglu.wgsl");
const LINEAR_BIAS: RowGroupKernels =
    row_group_kernels!(staged "linear_bias", "common/linear_bias.wgsl");
const LINEAR_LAYER_NORM: RowGroupKernels =
    row_group_kernels!("linear_layer_norm", "common/linear_layer_norm.wgsl");
/// Most rows an [`Epilogue::BiasResidualLayerNorm`] kernel takes: its workgroup holds every
/// row group (`MAX_ROW_GROUPS` = 256 in `linear_layer_norm.wgsl`).
pub const MAX_LAYER_NORM_ROWS: u32 = 256 * ROW_GROUP as u32;
const QKV_ROPE: RowGroupKernels = row_group_kernels!(
    split "qkv_rope_kv_f32",
    "llama/qkv_rope.wgsl",
    "llama/kv_f32.wgsl"
);
const QKV_ROPE_KV_F16: RowGroupKernels = row_group_kernels!(
    split "qkv_rope_kv_f16",
    "llama/qkv_rope.wgsl",
    "llama/kv_f16.wgsl"
);

/// Largest [`RowTile::tokens`] (`MAX_TOKENS` in the WGSL).
pub const MAX_TILE_TOKENS: u32 = 8;

/// How the invocations of a matrix kernel share the rows of a row group (the 8 rows the packed
/// layout interleaves): the matrix-vector variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// One invocation computes a whole row group over the whole row, without barriers
    /// (`row_group.wgsl`): what llvmpipe runs fastest, and the only choice for tiles of several
    /// tokens.
    None,
    /// `lanes` invocations share a row group, each taking every `lanes`-th block of the row,
    /// and sum their partial products through workgroup memory (one barrier; `split.wgsl`,
    /// `reduce_workgroup.wgsl`): the GPU variant for adapters without subgroup operations.
    Workgroup {
        /// Invocations per row group: a power of two dividing the workgroup size.
        lanes: u32,
    },
    /// As [`Reduction::Workgroup`], summing through subgroup shuffles instead
    /// (`reduce_subgroup.wgsl`): needs [`wgpu::Features::SUBGROUP`] and `lanes` at most the
    /// adapter's smallest subgroup size; [`Linear::new`] falls back to
    /// [`Reduction::Workgroup`] (logged) otherwise.
    Subgroup {
        /// Invocations per row group: a power of two dividing the workgroup size.
        lanes: u32,
    },
}

impl Reduction {
    /// Invocations per row group (1 for [`Reduction::None`]).
    pub fn lanes(self) -> u32 {
        match self {
            Self::None => 1,
            Self::Workgroup { lanes } | Self::Subgroup { lanes } => lanes,
        }
    }

    /// The variant `gpu` can run: [`Reduction::Subgroup`] becomes [`Reduction::Workgroup`]
    /// where the device lacks subgroup operations or its subgroups may be narrower than the
    /// lanes of a row group (logged once per device and reason).
    pub fn supported_on(self, gpu: &Gpu) -> Self {
        match (self, self.unsupported_because(gpu)) {
            (Self::Subgroup { lanes }, Some(reason)) => {
                gpu.log_once(format!(
                    "matrix-vector kernels reduce through workgroup memory instead of \
                     subgroups: {reason}"
                ));
                Self::Workgroup { lanes }
            }
            _ => self,
        }
    }

    /// Whether `gpu` runs this variant as it is, without a fallback (nothing is logged).
    pub fn runs_on(self, gpu: &Gpu) -> bool {
        self.unsupported_because(gpu).is_none()
    }

    /// Why `gpu` cannot run this variant, if it cannot.
    fn unsupported_because(self, gpu: &Gpu) -> Option<String> {
        match self {
            Self::Subgroup { lanes } => {
                if !gpu.features().contains(wgpu::Features::SUBGROUP) {
                    Some("the device has no subgroup operations".to_owned())
                } else if gpu.subgroup_min_size() < lanes {
                    Some(format!(
                        "subgroups may have {} invocations, fewer than the {lanes} lanes of a row \
                         group",
                        gpu.subgroup_min_size()
                    ))
                } else {
                    None
                }
            }
            Self::None | Self::Workgroup { .. } => None,
        }
    }
}

/// Largest workgroup of a split kernel (`SPLIT_MAX_INVOCATIONS` in `reduce_workgroup.wgsl`).
const SPLIT_MAX_INVOCATIONS: u32 = 256;

/// Row groups of a staged workgroup (`STAGED_ROW_GROUPS` in `staged.wgsl`).
const STAGED_ROW_GROUPS: u32 = 8;
/// Most tokens of a staged workgroup (`STAGED_MAX_TOKENS` in `staged.wgsl`).
const STAGED_MAX_TOKENS: u32 = 64;

/// Whether a tile stages its blocks in workgroup memory — the matrix-matrix variant,
/// `staged.wgsl` — and in which arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Staging {
    /// Unstaged: each invocation dequantizes the weights it uses and reads its own activations.
    None,
    /// Weights and activations staged as f32 and multiplied in f32 (`staged_f32.wgsl`): 16 KiB
    /// of workgroup memory.
    F32,
    /// Staged as f16, each 32-column block's products summed in f16 and the blocks in f32, the
    /// activations staged divided by their block's largest magnitude and quantized weights by
    /// their block's bound, so no staged value or block sum leaves f16's range
    /// (`staged_f16.wgsl`): half the workgroup memory (8.5 KiB) and its traffic, and f16
    /// arithmetic, which GPUs run at twice the f32 rate. Needs [`wgpu::Features::SHADER_F16`]
    /// and weights other than F32 ([`Staging::for_weights`]); results err by f16's epsilon
    /// where the others err by f32's (see the shader).
    F16,
}

impl Staging {
    /// Whether this is a staged variant.
    pub fn is_staged(self) -> bool {
        self != Self::None
    }

    /// Workgroup memory of the staged kernel, in bytes: two arrays of 512 `vec4`s of the staged
    /// type (f16: and an f32 scale per token and per row).
    fn workgroup_bytes(self) -> u32 {
        match self {
            Self::None => 0,
            Self::F32 => 2 * 512 * 16,
            Self::F16 => 2 * 512 * 8 + (STAGED_MAX_TOKENS + STAGED_ROW_GROUPS * 8) * 4,
        }
    }

    /// The variant for weights stored as `dtype`: [`Staging::F16`] becomes [`Staging::F32`]
    /// for F32 weights, which have no block scale to bound them by (f16 staging could overflow)
    /// and were stored at a precision the model's owner chose over f16's.
    pub fn for_weights(self, dtype: WeightDtype) -> Self {
        match (self, dtype) {
            (Self::F16, WeightDtype::F32) => Self::F32,
            _ => self,
        }
    }

    /// The variant `gpu` runs: [`Staging::F16`] becomes [`Staging::F32`] without
    /// [`wgpu::Features::SHADER_F16`], and a staged variant [`Staging::None`] where the
    /// workgroup memory is too small (each fallback logged once per device and reason).
    pub fn supported_on(self, gpu: &Gpu) -> Self {
        let mut staging = self;
        while let Some(reason) = staging.unsupported_because(gpu) {
            let fallback = match staging {
                Self::F16 => Self::F32,
                Self::F32 | Self::None => Self::None,
            };
            gpu.log_once(format!(
                "matrix-matrix kernels run {} instead of {}: {reason}",
                fallback.describe(),
                staging.describe()
            ));
            staging = fallback;
        }
        staging
    }

    /// Whether `gpu` runs this variant as it is, without a fallback (nothing is logged).
    pub fn runs_on(self, gpu: &Gpu) -> bool {
        self.unsupported_because(gpu).is_none()
    }

    /// Why `gpu` cannot run this variant, if it cannot.
    fn unsupported_because(self, gpu: &Gpu) -> Option<String> {
        if self == Self::F16 && !gpu.features().contains(wgpu::Features::SHADER_F16) {
            return Some("the device has no f16 arithmetic (SHADER_F16)".to_owned());
        }
        let available = gpu.limits().max_compute_workgroup_storage_size;
        (available < self.workgroup_bytes()).then(|| {
            format!(
                "the device has {available} bytes of workgroup memory, the variant takes {}",
                self.workgroup_bytes()
            )
        })
    }

    /// How logs, profiles and tuning reports name the variant.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::None => "unstaged",
            Self::F32 => "staged f32",
            Self::F16 => "staged f16",
        }
    }
}

/// How one invocation and one workgroup divide the work; the best choice differs between
/// adapter classes (see [`RowTile::decode`] and [`RowTile::prefill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowTile {
    /// Tokens per invocation (1..=8): each dequantized weight is used this many times.
    pub tokens: u32,
    /// Invocations per workgroup (row groups per workgroup times [`Reduction::lanes`]).
    pub workgroup_size: u32,
    /// How the invocations share a row group; anything but [`Reduction::None`] needs one token
    /// per invocation.
    pub reduction: Reduction,
    /// The matrix-matrix variant (`staged.wgsl`), when not [`Staging::None`]: a workgroup of 8
    /// row groups and `workgroup_size / 8` token tiles stages each block of 32 columns — its
    /// 64 rows' weights, dequantized, and its tokens' activations — in workgroup memory before
    /// its invocations multiply them, so that each weight is dequantized once per workgroup's
    /// tokens (up to 64) and each activation loaded once per 64 rows. Needs
    /// [`Reduction::None`] and at most 64 tokens per workgroup; kernels without a staged
    /// variant run unstaged, devices without what the variant needs fall back
    /// ([`Staging::supported_on`]; logged).
    pub staging: Staging,
}

impl RowTile {
    /// The tile for one token (decode). Software rasterizers (llvmpipe) run a workgroup's
    /// invocations on one thread, 8 lanes at a time, so small workgroups of one row group per
    /// invocation spread the few row groups of a decode step over all threads, with no barrier
    /// or cross-lane traffic (which llvmpipe pays dearly for). GPUs get the split variant:
    /// 64-wide workgroups of 8 row groups, 8 lanes each striding along the row and summing
    /// through subgroup shuffles (8 lanes fit the smallest subgroups of common GPUs, Intel's;
    /// [`Linear::new`] falls back to workgroup memory where subgroups are missing).
    pub fn decode(kind: DeviceKind) -> Self {
        if kind.is_hardware() {
            Self {
                tokens: 1,
                workgroup_size: 64,
                reduction: Reduction::Subgroup { lanes: 8 },
                staging: Staging::None,
            }
        } else {
            Self {
                tokens: 1,
                workgroup_size: 8,
                reduction: Reduction::None,
                staging: Staging::None,
            }
        }
    }

    /// The tile for many tokens (prefill): 8 tokens per invocation. GPUs get the staged
    /// matrix-matrix variant in f16 in workgroups of 64 invocations (64 rows x 64 tokens, each
    /// weight dequantized once per 64 tokens; f32 where the device lacks f16 arithmetic);
    /// software adapters one invocation per row group in workgroups of 8 (one llvmpipe thread's
    /// lanes), where workgroup memory is no cheaper than storage and the barriers cost.
    pub fn prefill(kind: DeviceKind) -> Self {
        let hardware = kind.is_hardware();
        Self {
            tokens: 8,
            workgroup_size: if hardware { 64 } else { 8 },
            reduction: Reduction::None,
            staging: if hardware {
                Staging::F16
            } else {
                Staging::None
            },
        }
    }

    /// This tile with the staging it runs with over weights stored as `dtype`
    /// ([`Staging::for_weights`]).
    pub fn for_weights(self, dtype: WeightDtype) -> Self {
        Self {
            staging: self.staging.for_weights(dtype),
            ..self
        }
    }

    /// Token tiles per workgroup of a staged tile.
    fn token_tiles(self) -> u32 {
        self.workgroup_size / STAGED_ROW_GROUPS
    }

    /// Checks that the kernels can run this tile (token count, lanes, workgroup size).
    pub(crate) fn check(self, context: &'static str) -> Result<()> {
        let lanes = self.reduction.lanes();
        let split_ok = self.reduction == Reduction::None
            || self.tokens == 1
                && lanes.is_power_of_two()
                && self.workgroup_size % lanes == 0
                && self.workgroup_size <= SPLIT_MAX_INVOCATIONS;
        let staged_ok = !self.staging.is_staged()
            || self.reduction == Reduction::None
                && self.workgroup_size % STAGED_ROW_GROUPS == 0
                && self.token_tiles() * self.tokens <= STAGED_MAX_TOKENS;
        if !(1..=MAX_TILE_TOKENS).contains(&self.tokens)
            || self.workgroup_size == 0
            || !split_ok
            || !staged_ok
        {
            return Err(GpuError::shape(
                context,
                format!(
                    "unsupported tile {self:?} (split reductions take one token per \
                     invocation, a power-of-two lane count dividing a workgroup of at most \
                     {SPLIT_MAX_INVOCATIONS}; staged tiles no reduction, workgroups of whole \
                     {STAGED_ROW_GROUPS}-invocation token tiles and at most \
                     {STAGED_MAX_TOKENS} tokens)"
                ),
            ));
        }
        Ok(())
    }
}

/// The tokens a launch processes: rows `first .. first + count` of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRange {
    /// First input row.
    pub first: u32,
    /// Number of rows.
    pub count: u32,
}

impl TokenRange {
    /// Rows `0..count`.
    pub fn all(count: u32) -> Self {
        Self { first: 0, count }
    }

    /// Only row `index` (e.g. the last token of a prompt for the LM head).
    pub fn one(index: u32) -> Self {
        Self {
            first: index,
            count: 1,
        }
    }

    fn end(self) -> u64 {
        u64::from(self.first) + u64::from(self.count)
    }
}

/// The matrix and input side shared by every fused linear kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearShape {
    /// Storage type of the weights.
    pub dtype: WeightDtype,
    /// Rows of the weight matrix.
    pub rows: u32,
    /// Columns (input width, a multiple of 32).
    pub cols: u32,
    /// Fuse an RMSNorm with this epsilon in front of the product (the norm weight is bound at
    /// launch); `None` uses the input as is.
    pub norm_eps: Option<f32>,
    /// Work division.
    pub tile: RowTile,
}

impl LinearShape {
    /// The override constants of `row_group.wgsl`.
    fn constants(&self) -> Vec<(&'static str, f64)> {
        let [dtype, block_words] = self.dtype.shader_constants();
        vec![
            dtype,
            block_words,
            ("ROWS", f64::from(self.rows)),
            ("COLS", f64::from(self.cols)),
            ("TOKENS_PER_INVOCATION", f64::from(self.tile.tokens)),
            ("NORM", if self.norm_eps.is_some() { 1.0 } else { 0.0 }),
            ("NORM_EPS", f64::from(self.norm_eps.unwrap_or(1e-5))),
            ("WORKGROUP_SIZE", f64::from(self.tile.workgroup_size)),
        ]
        .into_iter()
        .chain(match self.tile.reduction {
            Reduction::None => None,
            split => Some(("SPLIT_LANES", f64::from(split.lanes()))),
        })
        .collect()
    }

    /// How this shape's kernel reads the activations on `gpu`: the device's choice, but
    /// [`ActivationReads::Own`] for the split variants (whose lanes take different blocks) and
    /// for workgroups that are not whole subgroups (their last subgroup would have idle lanes to
    /// read from; logged).
    fn activation_reads(&self, gpu: &Gpu) -> ActivationReads {
        let reads = gpu.activation_reads();
        if reads != ActivationReads::Shared
            || self.tile.reduction != Reduction::None
            || self.tile.staging.is_staged()
        {
            return ActivationReads::Own;
        }
        if self.tile.workgroup_size % gpu.subgroup_max_size() != 0 {
            gpu.log_once(format!(
                "workgroups of {} invocations are not whole subgroups of {}: their invocations \
                 read their own activations",
                self.tile.workgroup_size,
                gpu.subgroup_max_size()
            ));
            return ActivationReads::Own;
        }
        reads
    }

    /// This shape with its reduction and staging ones that `gpu` runs for its weights
    /// ([`Reduction::supported_on`], [`Staging::for_weights`], [`Staging::supported_on`];
    /// device fallbacks logged).
    fn supported_on(mut self, gpu: &Gpu) -> Self {
        self.tile.reduction = self.tile.reduction.supported_on(gpu);
        self.tile = self.tile.for_weights(self.dtype);
        self.tile.staging = self.tile.staging.supported_on(gpu);
        self
    }

    /// This shape unstaged, logged once per kernel, for kernels without a staged variant.
    fn unstaged(mut self, gpu: &Gpu, label: &str) -> Self {
        if self.tile.staging.is_staged() {
            gpu.log_once(format!(
                "the {label} kernel has no staged variant: it runs one invocation per row group"
            ));
            self.tile.staging = Staging::None;
        }
        self
    }

    fn check(&self, context: &'static str) -> Result<()> {
        self.tile.check(context)?;
        if self.rows == 0 || self.cols == 0 || self.cols as usize % BLOCK_ELEMENTS != 0 {
            return Err(GpuError::shape(
                context,
                format!(
                    "{}x{}: rows must be positive, columns a positive multiple of 32",
                    self.rows, self.cols
                ),
            ));
        }
        Ok(())
    }

    /// Checks the weights, the input rows and the norm weight of a launch; returns the buffer
    /// to bind as norm weight (the input itself when there is no norm: bound, never read).
    fn check_inputs<'a>(
        &self,
        context: &'static str,
        weights: &QuantMatrix,
        x: &'a GpuBuffer,
        norm: Option<&'a GpuBuffer>,
        tokens: TokenRange,
    ) -> Result<&'a GpuBuffer> {
        let (dtype, rows, cols) = (self.dtype, self.rows, self.cols);
        if (weights.dtype(), weights.rows(), weights.cols()) != (dtype, rows, cols) {
            return Err(GpuError::shape(
                context,
                format!(
                    "kernel built for {dtype:?} {rows}x{cols}, weights are {:?} {}x{}",
                    weights.dtype(),
                    weights.rows(),
                    weights.cols()
                ),
            ));
        }
        if tokens.count == 0 {
            return Err(GpuError::shape(
                context,
                "a launch over no tokens".to_owned(),
            ));
        }
        require_len(context, "input", x, tokens.end() * u64::from(cols))?;
        match (self.norm_eps, norm) {
            (Some(_), Some(weight)) => {
                require_len(context, "norm weight", weight, cols.into())?;
                Ok(weight)
            }
            (None, None) => Ok(x),
            (Some(_), None) => Err(GpuError::shape(
                context,
                "kernel built with a fused norm, launched without its weight".to_owned(),
            )),
            (None, Some(_)) => Err(GpuError::shape(
                context,
                "kernel built without a norm, launched with a norm weight".to_owned(),
            )),
        }
    }

    /// Workgroup counts for `row_groups` row groups and `count` tokens.
    fn grid(&self, row_groups: u32, count: u32) -> [u32; 3] {
        let tile = self.tile;
        if tile.staging.is_staged() {
            return [
                groups(row_groups, STAGED_ROW_GROUPS),
                groups(count, tile.token_tiles() * tile.tokens),
                1,
            ];
        }
        let per_workgroup = tile.workgroup_size / tile.reduction.lanes();
        [
            groups(row_groups, per_workgroup),
            groups(count, tile.tokens),
            1,
        ]
    }

    /// How profiles tell launches of this shape from others: dtype, rows x columns, and the
    /// split or staged variant where one runs (e.g. `q4_1 576x1536 subgroup/8`).
    fn detail(&self) -> String {
        let shape = format!("{} {}x{}", self.dtype.name(), self.rows, self.cols);
        match self.tile.reduction {
            Reduction::None if self.tile.staging.is_staged() => {
                format!("{shape} {}", self.tile.staging.describe())
            }
            Reduction::None => shape,
            Reduction::Workgroup { lanes } => format!("{shape} workgroup/{lanes}"),
            Reduction::Subgroup { lanes } => format!("{shape} subgroup/{lanes}"),
        }
    }

    fn row_groups(&self) -> u32 {
        self.rows.div_ceil(ROW_GROUP as u32)
    }
}

/// What a [`Linear`] does with its product `W h` (`h = norm?(x[first + t])`). `out` is
/// `[count][rows]` unless said otherwise; the bias epilogues read their per-row vectors from
/// the [`EpilogueParams`] given to [`Linear::bind_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epilogue {
    /// `out[t] = W h`.
    Store,
    /// `out[t] += W h`: a fused residual add.
    Accumulate,
    /// `out[t] = silu(Wgate h) * (Wup h)` from a gate/up matrix built by
    /// [`QuantMatrix::upload_gate_up`] (`rows` = 2 × the FFN width, a multiple of 8); `out` is
    /// `[count][rows / 2]`.
    SwiGlu,
    /// [`Epilogue::SwiGlu`] with GELU (its tanh approximation) in place of SiLU: GeGLU.
    GeGlu,
    /// `out[t] = W h + bias`.
    Bias,
    /// `out[t] = gelu(W h + bias)`, GELU in its erf form (BERT's `gelu`).
    BiasGelu,
    /// `out[t] = LayerNorm(W h + bias + out[t]) * gamma + beta`: the residual add and the
    /// LayerNorm after it (BERT's post-norm), fused. One workgroup holds every row of its
    /// tokens (the [`RowTile::workgroup_size`] is not used), so `rows` is at most 2048.
    BiasResidualLayerNorm {
        /// The LayerNorm's epsilon.
        eps: f32,
    },
}

impl Epilogue {
    fn label(self) -> &'static str {
        match self {
            Epilogue::Store | Epilogue::Accumulate => "linear",
            Epilogue::SwiGlu | Epilogue::GeGlu => "swiglu",
            Epilogue::Bias | Epilogue::BiasGelu => "linear_bias",
            Epilogue::BiasResidualLayerNorm { .. } => "linear_layer_norm",
        }
    }

    /// Whether the epilogue reads a bias, and LayerNorm weights (see [`EpilogueParams`]).
    fn row_vectors(self) -> (bool, bool) {
        match self {
            Epilogue::Store | Epilogue::Accumulate | Epilogue::SwiGlu | Epilogue::GeGlu => {
                (false, false)
            }
            Epilogue::Bias | Epilogue::BiasGelu => (true, false),
            Epilogue::BiasResidualLayerNorm { .. } => (true, true),
        }
    }

    /// Width of one token's output row for a matrix of `rows` rows.
    fn out_width(self, rows: u32) -> u32 {
        match self {
            Epilogue::SwiGlu | Epilogue::GeGlu => rows / 2,
            _ => rows,
        }
    }
}

/// The per-row vectors of the bias epilogues ([`Epilogue::Bias`], [`Epilogue::BiasGelu`],
/// [`Epilogue::BiasResidualLayerNorm`]).
#[derive(Debug, Clone, Copy)]
pub struct EpilogueParams<'a> {
    /// `[rows]`, added to the product.
    pub bias: &'a GpuBuffer,
    /// The LayerNorm's gamma then beta, `[2][rows]`: exactly for
    /// [`Epilogue::BiasResidualLayerNorm`].
    pub layer_norm: Option<&'a GpuBuffer>,
}

/// A quantized matrix times the (optionally RMS-normalised) activations of several tokens,
/// followed by its [`Epilogue`].
#[derive(Debug)]
pub struct Linear {
    shape: LinearShape,
    epilogue: Epilogue,
    /// Where each token's output row is in `out`.
    output: RowLayout,
    /// How the invocations read the activations (never [`ActivationReads::Auto`]).
    activation_reads: ActivationReads,
    pipeline: wgpu::ComputePipeline,
}

impl Linear {
    /// Compiles (or looks up) the pipeline; each token's output row is `out[t]`, back to back.
    pub fn new(gpu: &Gpu, shape: LinearShape, epilogue: Epilogue) -> Result<Self> {
        let output = RowLayout::contiguous(epilogue.out_width(shape.rows));
        Self::with_output(gpu, shape, epilogue, output)
    }

    /// [`Linear::new`] writing token `t`'s `rows` outputs at element `t * stride + offset` of
    /// `out` (`output`; `stride` ≥ `offset` + `rows`): a row shard of a matrix too large for one
    /// buffer writes its columns of the whole output. Only [`Epilogue::Store`] and
    /// [`Epilogue::Accumulate`] take a layout other than contiguous.
    pub fn with_output(
        gpu: &Gpu,
        shape: LinearShape,
        epilogue: Epilogue,
        output: RowLayout,
    ) -> Result<Self> {
        let label = epilogue.label();
        shape.check(label)?;
        let split = matches!(
            epilogue,
            Epilogue::Store | Epilogue::Accumulate | Epilogue::SwiGlu | Epilogue::GeGlu
        );
        let mut shape = shape.supported_on(gpu);
        if matches!(epilogue, Epilogue::BiasResidualLayerNorm { .. }) {
            shape = shape.unstaged(gpu, label);
        }
        if !split && shape.tile.reduction != Reduction::None {
            gpu.log_once(format!(
                "the {label} kernel has no split variant: it runs one invocation per row group"
            ));
            shape.tile.reduction = Reduction::None;
        }
        let plain = matches!(epilogue, Epilogue::Store | Epilogue::Accumulate);
        let contiguous = output == RowLayout::contiguous(epilogue.out_width(shape.rows));
        if !(contiguous || plain && output.stride >= output.offset + shape.rows) {
            return Err(GpuError::shape(
                label,
                format!(
                    "output layout {output:?} for {} rows with epilogue {epilogue:?}",
                    shape.rows
                ),
            ));
        }
        let mut constants = shape.constants();
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        let kernels = match epilogue {
            Epilogue::Store | Epilogue::Accumulate => {
                constants.extend([
                    ("ACCUMULATE", flag(epilogue == Epilogue::Accumulate)),
                    ("OUT_STRIDE", f64::from(output.stride)),
                    ("OUT_OFFSET", f64::from(output.offset)),
                ]);
                LINEAR
            }
            Epilogue::SwiGlu | Epilogue::GeGlu => {
                constants.push(("GELU", flag(epilogue == Epilogue::GeGlu)));
                if shape.rows % 8 != 0 {
                    return Err(GpuError::shape(
                        label,
                        format!("{} gate/up rows is not twice a multiple of 4", shape.rows),
                    ));
                }
                SWIGLU
            }
            Epilogue::Bias | Epilogue::BiasGelu => {
                constants.push(("GELU", flag(epilogue == Epilogue::BiasGelu)));
                LINEAR_BIAS
            }
            Epilogue::BiasResidualLayerNorm { eps } => {
                let groups = shape.row_groups();
                let limit = (MAX_LAYER_NORM_ROWS / ROW_GROUP as u32)
                    .min(gpu.limits().max_compute_invocations_per_workgroup);
                if groups > limit {
                    return Err(GpuError::shape(
                        label,
                        format!(
                            "{} rows need a workgroup of {groups} row groups; the kernel and \
                             device allow {limit} ({} rows)",
                            shape.rows,
                            limit * ROW_GROUP as u32
                        ),
                    ));
                }
                shape.tile.workgroup_size = groups;
                constants.retain(|&(name, _)| name != "WORKGROUP_SIZE");
                constants.extend([
                    ("WORKGROUP_SIZE", f64::from(groups)),
                    ("LN_EPS", f64::from(eps)),
                ]);
                LINEAR_LAYER_NORM
            }
        };
        let reads = shape.activation_reads(gpu);
        let (kernel, entry, share_x) = kernels.get(shape.tile, reads);
        constants.extend(share_x);
        Ok(Self {
            shape,
            epilogue,
            output,
            activation_reads: reads,
            pipeline: gpu.pipeline(kernel, entry, &constants)?,
        })
    }

    /// How this kernel's invocations read the activations: the device's choice where the tile
    /// allows it (see [`ActivationReads`]).
    pub fn activation_reads(&self) -> ActivationReads {
        self.activation_reads
    }

    /// The matrix-vector variant this kernel runs: its tile's, or the fallback the device or
    /// the epilogue required (see [`Reduction::supported_on`]).
    pub fn reduction(&self) -> Reduction {
        self.shape.tile.reduction
    }

    /// The staging this kernel runs ([`RowTile::staging`]): as its tile asks, unless the
    /// device or the epilogue required otherwise.
    pub fn staging(&self) -> Staging {
        self.shape.tile.staging
    }

    /// Binds `weights`, the input rows `tokens` of `x`, the norm weight (exactly when the
    /// kernel fuses a norm) and `out`, for the epilogues without per-row vectors ([`Store`],
    /// [`Accumulate`], [`SwiGlu`], [`GeGlu`]; the others take [`Linear::bind_with`]).
    ///
    /// [`Store`]: Epilogue::Store
    /// [`Accumulate`]: Epilogue::Accumulate
    /// [`SwiGlu`]: Epilogue::SwiGlu
    /// [`GeGlu`]: Epilogue::GeGlu
    pub fn bind(
        &self,
        gpu: &Gpu,
        weights: &QuantMatrix,
        x: &GpuBuffer,
        norm: Option<&GpuBuffer>,
        out: &GpuBuffer,
        tokens: TokenRange,
    ) -> Result<Dispatch> {
        self.bind_inner(gpu, weights, x, norm, out, None, tokens)
    }

    /// [`Linear::bind`] for the bias epilogues, with their per-row vectors `params`.
    #[allow(clippy::too_many_arguments)]
    pub fn bind_with(
        &self,
        gpu: &Gpu,
        weights: &QuantMatrix,
        x: &GpuBuffer,
        norm: Option<&GpuBuffer>,
        out: &GpuBuffer,
        params: EpilogueParams<'_>,
        tokens: TokenRange,
    ) -> Result<Dispatch> {
        self.bind_inner(gpu, weights, x, norm, out, Some(params), tokens)
    }

    #[allow(clippy::too_many_arguments)]
    fn bind_inner(
        &self,
        gpu: &Gpu,
        weights: &QuantMatrix,
        x: &GpuBuffer,
        norm: Option<&GpuBuffer>,
        out: &GpuBuffer,
        params: Option<EpilogueParams<'_>>,
        tokens: TokenRange,
    ) -> Result<Dispatch> {
        let (s, label) = (&self.shape, self.epilogue.label());
        let norm = s.check_inputs(label, weights, x, norm, tokens)?;
        let width = self.epilogue.out_width(s.rows);
        require_len(
            label,
            "output",
            out,
            self.output.required_len(tokens.count, width),
        )?;
        let given = (
            params.is_some(),
            params.is_some_and(|p| p.layer_norm.is_some()),
        );
        if given != self.epilogue.row_vectors() {
            let names = |(bias, layer_norm): (bool, bool)| match (bias, layer_norm) {
                (false, _) => "no per-row vectors",
                (true, false) => "a bias",
                (true, true) => "a bias and LayerNorm weights",
            };
            return Err(GpuError::shape(
                label,
                format!(
                    "epilogue {:?} reads {}, the launch gives {}",
                    self.epilogue,
                    names(self.epilogue.row_vectors()),
                    names(given)
                ),
            ));
        }
        let mut buffers = vec![weights.buffer(), x, norm, out];
        if let Some(p) = params {
            require_len(label, "bias", p.bias, u64::from(s.rows))?;
            buffers.push(p.bias);
            if let Some(gamma_beta) = p.layer_norm {
                require_len(
                    label,
                    "LayerNorm gamma/beta",
                    gamma_beta,
                    2 * u64::from(s.rows),
                )?;
                buffers.push(gamma_beta);
            }
        }
        let grid = match self.epilogue {
            // One workgroup holds every row group of its tokens.
            Epilogue::BiasResidualLayerNorm { .. } => [1, groups(tokens.count, s.tile.tokens), 1],
            _ => s.grid(s.row_groups(), tokens.count),
        };
        Ok(gpu
            .dispatch(
                label,
                &self.pipeline,
                &buffers,
                Params::range(tokens.first, tokens.count),
                grid,
            )?
            .with_detail(s.detail()))
    }
}

/// Shape of a [`QkvRope`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QkvRopeConfig {
    /// The concatenated `[Wq; Wk; Wv]` matrix: `rows` = `q_rows + 2 * kv_rows`.
    pub shape: LinearShape,
    /// Query rows: `n_heads * head_dim`.
    pub q_rows: u32,
    /// Key (and value) rows: `n_kv_heads * head_dim`.
    pub kv_rows: u32,
    /// Values per head (a multiple of 8).
    pub head_dim: u32,
    /// Rotate q and k; off when a per-head norm must come first ([`QkNormRope`] then rotates).
    ///
    /// [`QkNormRope`]: crate::QkNormRope
    pub rope: bool,
    /// How the cache stores keys and values.
    pub kv_type: KvType,
}

/// `[q; k; v] = Wqkv norm?(x[t])`, RoPE on q and k at `positions[t]` (unless
/// [`QkvRopeConfig::rope`] is off), q to `q_out[t]`, k and v
/// into row `cache_rows[t]` of the layer's cache (the token's position when the cache holds one
/// sequence). A token past the RoPE table or the cache writes nothing.
#[derive(Debug)]
pub struct QkvRope {
    config: QkvRopeConfig,
    /// How the invocations read the activations (never [`ActivationReads::Auto`]).
    activation_reads: ActivationReads,
    pipeline: wgpu::ComputePipeline,
}

impl QkvRope {
    /// Compiles (or looks up) the pipeline.
    pub fn new(gpu: &Gpu, config: QkvRopeConfig) -> Result<Self> {
        let QkvRopeConfig {
            shape,
            q_rows,
            kv_rows,
            head_dim,
            rope,
            kv_type,
        } = config;
        shape.check("qkv_rope")?;
        let shape = shape.supported_on(gpu);
        let aligned = |n: u32| n > 0 && n % ROW_GROUP as u32 == 0;
        if !aligned(head_dim)
            || q_rows % head_dim != 0
            || kv_rows % head_dim != 0
            || shape.rows != q_rows + 2 * kv_rows
        {
            return Err(GpuError::shape(
                "qkv_rope",
                format!(
                    "unsupported shape {config:?}: head_dim must be a multiple of 8 dividing \
                     q_rows and kv_rows, and rows = q_rows + 2 * kv_rows"
                ),
            ));
        }
        let mut constants = shape.constants();
        constants.extend([
            ("Q_ROWS", f64::from(q_rows)),
            ("KV_ROWS", f64::from(kv_rows)),
            ("HEAD_DIM", f64::from(head_dim)),
            ("ROPE", if rope { 1.0 } else { 0.0 }),
        ]);
        let kernels = match kv_type {
            KvType::F32 => QKV_ROPE,
            KvType::F16 => QKV_ROPE_KV_F16,
        };
        let reads = shape.activation_reads(gpu);
        let (kernel, entry, share_x) = kernels.get(shape.tile, reads);
        constants.extend(share_x);
        Ok(Self {
            config: QkvRopeConfig { shape, ..config },
            activation_reads: reads,
            pipeline: gpu.pipeline(kernel, entry, &constants)?,
        })
    }

    /// How this kernel's invocations read the activations (see [`Linear::activation_reads`]).
    pub fn activation_reads(&self) -> ActivationReads {
        self.activation_reads
    }

    /// The matrix-vector variant this kernel runs (see [`Linear::reduction`]).
    pub fn reduction(&self) -> Reduction {
        self.config.shape.tile.reduction
    }

    /// The staging this kernel runs (see [`Linear::staging`]).
    pub fn staging(&self) -> Staging {
        self.config.shape.tile.staging
    }

    /// Binds the `[Wq; Wk; Wv]` `weights`, the input rows `tokens` of `x`, the norm weight
    /// (exactly when the kernel fuses a norm), the tokens' u32 `positions` and `cache_rows`, the
    /// RoPE `table`, `q_out` (`[count][q_rows]`) and the layer's `cache`.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        weights: &QuantMatrix,
        x: &GpuBuffer,
        norm: Option<&GpuBuffer>,
        positions: &GpuBuffer,
        cache_rows: &GpuBuffer,
        table: &RopeTable,
        q_out: &GpuBuffer,
        cache: KvLayer<'_>,
        tokens: TokenRange,
    ) -> Result<Dispatch> {
        let c = &self.config;
        let norm = c.shape.check_inputs("qkv_rope", weights, x, norm, tokens)?;
        cache.expect("qkv_rope", c.kv_rows, c.kv_type)?;
        if table.head_dim() != c.head_dim {
            return Err(GpuError::shape(
                "qkv_rope",
                format!(
                    "RoPE table for head_dim {}, kernel built for {}",
                    table.head_dim(),
                    c.head_dim
                ),
            ));
        }
        require_len("qkv_rope", "position", positions, tokens.end())?;
        require_len("qkv_rope", "cache row", cache_rows, tokens.end())?;
        require_len(
            "qkv_rope",
            "query output",
            q_out,
            u64::from(tokens.count) * u64::from(c.q_rows),
        )?;
        gpu.dispatch(
            "qkv_rope",
            &self.pipeline,
            &[
                weights.buffer(),
                x,
                norm,
                positions,
                cache_rows,
                table.buffer(),
                q_out,
                cache.keys,
                cache.values,
            ],
            Params::range(tokens.first, tokens.count),
            c.shape.grid(c.shape.row_groups(), tokens.count),
        )
        .map(|d| d.with_detail(c.shape.detail()))
    }
}
