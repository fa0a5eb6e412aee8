//! Causal grouped-query attention over the KV cache (`shaders/llama/attention*.wgsl`), in three
//! variants chosen per adapter and per dispatch size (see [`AttentionPlan`]).

use crate::buffer::GpuBuffer;
use crate::device::{DeviceKind, Gpu};
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::kernels::kv_cache::{kv_kernels, KvKernels, KvLayer, KvType, KV_BLOCK_ROWS};
use crate::kernels::linear::Reduction;
use crate::layout::RowLayout;

/// An attention kernel in each size of its per-invocation arrays, for both cache types: `$path`
/// and its helpers followed by `llama/head_<values>.wgsl` (`MAX_HEAD_VEC4`).
macro_rules! head_kernels {
    ($name:literal, $path:literal $(, $helper:literal)*) => {
        HeadKernels([
            (64, kv_kernels!($name, $path $(, $helper)*, "llama/head_64.wgsl")),
            (128, kv_kernels!($name, $path $(, $helper)*, "llama/head_128.wgsl")),
            (256, kv_kernels!($name, $path $(, $helper)*, "llama/head_256.wgsl")),
        ])
    };
}

/// One attention kernel with arrays of each size, by the values per invocation they hold.
#[derive(Debug, Clone, Copy)]
struct HeadKernels([(u32, KvKernels); 3]);

impl HeadKernels {
    /// The kernels whose arrays hold `values` (at most [`MAX_HEAD_DIM`]) query and accumulator
    /// values per invocation: the smallest that do.
    fn holding(&self, values: u32) -> KvKernels {
        self.0
            .iter()
            .find(|&&(size, _)| values <= size)
            .map(|&(_, kernels)| kernels)
            .unwrap_or(self.0[self.0.len() - 1].1)
    }
}

const SERIAL: HeadKernels = head_kernels!(
    "attention",
    "llama/attention.wgsl",
    "llama/attention_serial.wgsl",
    "llama/attention_common.wgsl"
);
/// Compiled only on devices with subgroups (see [`SPLIT_SUBGROUP`]).
const SHARED_ROWS: HeadKernels = head_kernels!(
    "attention_shared",
    "llama/attention_shared.wgsl",
    "llama/attention_serial.wgsl",
    "llama/attention_common.wgsl"
);
const SPLIT: HeadKernels = head_kernels!(
    "attention_split",
    "llama/attention_split.wgsl",
    "llama/attention_common.wgsl",
    "llama/attention_merge_workgroup.wgsl"
);
/// The subgroup merge lives in a module of its own: naga rejects a module calling subgroup
/// operations on a device without [`wgpu::Features::SUBGROUP`].
const SPLIT_SUBGROUP: HeadKernels = head_kernels!(
    "attention_split_subgroup",
    "llama/attention_split.wgsl",
    "llama/attention_common.wgsl",
    "llama/attention_merge_subgroup.wgsl"
);
const FLASH: HeadKernels = head_kernels!(
    "attention_flash",
    "llama/attention_flash.wgsl",
    "llama/attention_common.wgsl"
);

/// Largest head width the shaders' arrays hold (`4 * MAX_HEAD_VEC4` of `llama/head_256.wgsl`).
pub const MAX_HEAD_DIM: u32 = 256;
/// Dispatches of at least this many tokens run [`AttentionPlan::prefill`], shorter ones
/// [`AttentionPlan::decode`]. A decode step has one token per sequence: batched, its tokens
/// belong to different sequences, which a flash workgroup can only serve one after the other
/// (it shares keys between tokens of one sequence), and a short prefill has few keys to share.
pub const PREFILL_MIN_TOKENS: u32 = 16;

/// Serial kernel: one invocation per (head, token), consecutive pairs in a workgroup. llvmpipe
/// runs a workgroup as 8 SIMD lanes; a full group measured faster than 1 or 4 invocations per
/// workgroup even with only 9 heads.
const SERIAL_WORKGROUP: u32 = 8;
/// Tokens of a shared-rows workgroup (`LANES` in `attention_shared.wgsl`): lanes of one
/// subgroup.
const SHARED_ROWS_LANES: u32 = 8;
/// Most query heads of one shared-rows invocation (`MAX_HEADS_PER_INVOCATION`).
const SHARED_ROWS_MAX_HEADS: u32 = 8;
/// Vec4s of query (and of accumulator) one invocation holds at most (`MAX_HEAD_VEC4` of the
/// largest arrays).
const MAX_HEAD_VEC4: u32 = MAX_HEAD_DIM / 4;
/// Lanes per (head, token) of the split-K decode on GPUs: enough to spread a long context over
/// a GPU's cores when a decode step has only `n_heads` pairs (9 for SmolLM2), and a whole
/// subgroup on NVIDIA and AMD (RDNA) hardware.
const GPU_SPLIT_LANES: u32 = 32;
/// Invocations per workgroup of the split-K kernel (or its lanes, if more).
const SPLIT_WORKGROUP: u32 = 64;
/// `MERGE_VEC4` of `attention_merge_workgroup.wgsl`: vec4s per lane per merge barrier.
const MERGE_VEC4: u32 = 4;
/// Query rows a flash workgroup aims for: each staged key and value row is used this many
/// times (fewer when the rows of the tokens' shared heads don't divide it).
const FLASH_QUERY_ROWS: u32 = 16;
/// Invocations per flash workgroup the row lanes aim for.
const FLASH_WORKGROUP: u32 = 64;
/// Keys per flash tile to start from; halved until the tiles fit the workgroup memory.
const FLASH_MAX_TILE: u32 = 32;
/// Fewer keys per tile than this would pay a barrier per handful of keys: fall back instead.
const FLASH_MIN_TILE: u32 = 4;

/// Shape of an [`Attention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionConfig {
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads; divides `n_heads`.
    pub n_kv_heads: u32,
    /// Values per head: a multiple of 4, at most [`MAX_HEAD_DIM`].
    pub head_dim: u32,
    /// Where each token's query heads are (stride and offset multiples of 4).
    pub q: RowLayout,
    /// Attend only to the last `n` positions, the token's own included (sliding-window
    /// attention; `n` > 0); `None`: to every earlier position.
    pub window: Option<u32>,
    /// How the cache stores keys and values.
    pub kv_type: KvType,
}

/// How the invocations of an attention dispatch divide the work. Every variant computes the
/// same function; they differ in parallelism and in how often a key or value row is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionVariant {
    /// One invocation per (query head, token) walks all the token's positions with one online
    /// softmax, barrier-free (`attention.wgsl`): what software adapters run fastest.
    Serial,
    /// Split-K: the reduction's `lanes` invocations share a (query head, token), each taking
    /// every `lanes`-th position with an online softmax of its own; the lanes' states are merged
    /// at the end through subgroup shuffles ([`Reduction::Subgroup`]) or workgroup memory
    /// ([`Reduction::Workgroup`]) in the same dispatch (`attention_split.wgsl`): decode on GPUs.
    /// `lanes` is a power of two from 2 to 64; [`Reduction::None`] is not a split.
    SplitK(Reduction),
    /// Flash attention: a workgroup takes a block of tokens and the query heads sharing a kv
    /// head, and walks their keys and values in tiles staged in workgroup memory, each row
    /// loaded once per workgroup (`attention_flash.wgsl`): prefill on GPUs. Its tile is sized
    /// to the head width and the adapter's workgroup memory.
    Flash,
    /// Serial, with the 8 lanes of a subgroup taking 8 consecutive tokens of one sequence and
    /// the query heads of a kv head: at each position every lane loads an eighth of the key and
    /// value rows and reads the rest through subgroup shuffles, so a row is loaded once per 8
    /// tokens and several heads (`attention_shared.wgsl`): prefill on software adapters, whose
    /// cost is the values loaded. A workgroup whose tokens belong to different sequences
    /// computes them lane by lane, as [`AttentionVariant::Serial`] does. Needs
    /// [`wgpu::Features::SUBGROUP`] with subgroups of at least 8 lanes.
    SharedRows,
}

/// Which variant an [`Attention`] runs for short dispatches (decode) and long ones (prefill):
/// `decode` below [`PREFILL_MIN_TOKENS`] tokens, `prefill` from there on. The choice depends
/// only on the configuration, the device and the token count, so equal dispatches always run
/// the same kernel (bit-identical results across runs of the same shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttentionPlan {
    /// Dispatches of fewer than [`PREFILL_MIN_TOKENS`] tokens.
    pub decode: AttentionVariant,
    /// Dispatches of at least [`PREFILL_MIN_TOKENS`] tokens.
    pub prefill: AttentionVariant,
}

impl AttentionPlan {
    /// The default for an adapter of `kind` and a layer attending to `window` positions.
    ///
    /// Software adapters (llvmpipe) decode with [`AttentionVariant::Serial`] and prefill with
    /// [`AttentionVariant::SharedRows`]: each lane is a SIMD lane of one CPU thread, so
    /// splitting adds merges and barriers but no hardware, and workgroup-memory tiles save no
    /// loads there (every lane still loads each value itself); subgroup shuffles do.
    /// GPUs decode with [`AttentionVariant::SplitK`] (32 lanes, through subgroups, falling back
    /// to workgroup memory where [`Attention::with_plan`] finds none) whenever a token may see
    /// more positions than that (global attention, or a window longer than 32): with fewer,
    /// a lane gets at most one position and there is nothing to split. They prefill with
    /// [`AttentionVariant::Flash`].
    pub fn for_adapter(kind: DeviceKind, window: Option<u32>) -> Self {
        if !kind.is_hardware() {
            return Self {
                decode: AttentionVariant::Serial,
                prefill: AttentionVariant::SharedRows,
            };
        }
        let decode = if window.is_some_and(|n| n <= GPU_SPLIT_LANES) {
            AttentionVariant::Serial
        } else {
            AttentionVariant::SplitK(Reduction::Subgroup {
                lanes: GPU_SPLIT_LANES,
            })
        };
        Self {
            decode,
            prefill: AttentionVariant::Flash,
        }
    }
}

/// `out[t][h] = softmax(q[t][h] · K[row_t(0..=p_t)] / sqrt(head_dim)) · V[row_t(0..=p_t)]`
/// (with a window of `n`, only the last `n` of these positions) for each query head `h`,
/// reading kv head `h / (n_heads / n_kv_heads)`, where `p_t` is token `t`'s position and
/// `row_t(j)` the cache row of its position `j` through its sequence's block table (see
/// [`KvCache`](crate::KvCache)); out is `[T][n_heads * head_dim]`.
///
/// One type for every variant: [`Attention::new`] takes the adapter's [`AttentionPlan`],
/// [`Attention::with_plan`] a given one, and [`Attention::bind`] picks the decode or prefill
/// kernel by the dispatch's token count; [`Attention::plan`] tells what runs.
#[derive(Debug)]
pub struct Attention {
    config: AttentionConfig,
    decode: Launch,
    prefill: Launch,
}

/// One compiled variant and how its grid covers a dispatch.
#[derive(Debug, Clone)]
struct Launch {
    variant: AttentionVariant,
    pipeline: wgpu::ComputePipeline,
    grid: Grid,
}

/// How a variant's workgroups cover a dispatch.
#[derive(Debug, Clone, Copy)]
enum Grid {
    /// `heads` (query heads, or kv heads for flash) along x, `heads_per_group` to a workgroup,
    /// and `tokens_per_group` tokens along y.
    HeadsByTokens {
        heads: u32,
        heads_per_group: u32,
        tokens_per_group: u32,
    },
    /// The (token, head) pairs of `heads` heads, numbered token by token, `per_group` to a
    /// workgroup along x (rows of as many workgroups as the device allows, stacked along y):
    /// a batched step's tokens fill every lane when the heads are not a multiple of a
    /// workgroup.
    Pairs { heads: u32, per_group: u32 },
}

impl Grid {
    /// Workgroups in x, y and z for `n_tokens` tokens on a device allowing `max` per dimension.
    fn workgroups(self, n_tokens: u32, max: u32) -> [u32; 3] {
        match self {
            Self::HeadsByTokens {
                heads,
                heads_per_group,
                tokens_per_group,
            } => [
                groups(heads, heads_per_group),
                groups(n_tokens, tokens_per_group),
                1,
            ],
            Self::Pairs { heads, per_group } => {
                let total = groups(n_tokens * heads, per_group);
                let x = total.clamp(1, max);
                [x, groups(total, x), 1]
            }
        }
    }
}

/// The flash kernel's work division for one configuration (see `attention_flash.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlashTile {
    query_tokens: u32,
    query_rows: u32,
    row_lanes: u32,
    tile: u32,
}

impl FlashTile {
    /// The largest tile (up to [`FLASH_MAX_TILE`] keys) whose workgroup memory fits
    /// `max_bytes` for heads of `config`, with about [`FLASH_QUERY_ROWS`] query rows of
    /// row lanes in a workgroup of about [`FLASH_WORKGROUP`] (at most `max_invocations`);
    /// or why there is none.
    fn choose(
        config: &AttentionConfig,
        max_bytes: u32,
        max_invocations: u32,
    ) -> std::result::Result<Self, String> {
        let heads = config.n_heads / config.n_kv_heads;
        let d4 = config.head_dim / 4;
        let query_tokens = (FLASH_QUERY_ROWS / heads).clamp(1, 32);
        let query_rows = query_tokens * heads;
        let mut row_lanes = 1;
        while d4 % (2 * row_lanes) == 0 && query_rows * 2 * row_lanes <= FLASH_WORKGROUP {
            row_lanes *= 2;
        }
        if query_rows * row_lanes > max_invocations {
            return Err(format!(
                "{query_rows} query rows (heads sharing a kv head) need more than the device's \
                 {max_invocations} invocations per workgroup"
            ));
        }
        let bytes = |tile: u32| 16 * (query_rows + tile) * d4 + 4 * query_rows * (tile + 1) + 16;
        let mut tile = FLASH_MAX_TILE;
        while bytes(tile) > max_bytes && tile > FLASH_MIN_TILE {
            tile /= 2;
        }
        if bytes(tile) > max_bytes {
            return Err(format!(
                "tiles of {tile} keys of head_dim {} for {query_rows} query rows need {} bytes \
                 of workgroup memory, the device has {max_bytes}",
                config.head_dim,
                bytes(tile)
            ));
        }
        Ok(Self {
            query_tokens,
            query_rows,
            row_lanes,
            tile,
        })
    }
}

impl Attention {
    /// Compiles (or looks up) the pipelines for `config` with the adapter's
    /// [`AttentionPlan::for_adapter`].
    pub fn new(gpu: &Gpu, config: AttentionConfig) -> Result<Self> {
        let plan = AttentionPlan::for_adapter(gpu.adapter_info().device_type, config.window);
        Self::with_plan(gpu, config, plan)
    }

    /// Compiles (or looks up) the pipelines of `plan` for `config`. A variant the device
    /// cannot run falls back, logged once per device: [`Reduction::Subgroup`] to
    /// [`Reduction::Workgroup`] where subgroups are missing or narrower than its lanes, and
    /// [`AttentionVariant::Flash`] to the plan's decode variant (to [`AttentionVariant::Serial`]
    /// for the decode variant itself) where its smallest tile does not fit the device's
    /// workgroup memory or invocations.
    pub fn with_plan(gpu: &Gpu, config: AttentionConfig, plan: AttentionPlan) -> Result<Self> {
        let AttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim,
            q,
            window,
            ..
        } = config;
        let valid = n_kv_heads > 0
            && window != Some(0)
            && n_heads % n_kv_heads == 0
            && head_dim > 0
            && head_dim % 4 == 0
            && head_dim <= MAX_HEAD_DIM
            && q.stride % 4 == 0
            && q.offset % 4 == 0;
        if !valid {
            return Err(GpuError::shape(
                "attention",
                format!("unsupported shape {config:?}"),
            ));
        }
        let decode = Launch::new(gpu, &config, plan.decode, AttentionVariant::Serial)?;
        let prefill = match plan.prefill == plan.decode {
            true => decode.clone(),
            false => Launch::new(gpu, &config, plan.prefill, decode.variant)?,
        };
        Ok(Self {
            config,
            decode,
            prefill,
        })
    }

    /// The variants this kernel runs, after any fallback (see [`Attention::with_plan`]).
    pub fn plan(&self) -> AttentionPlan {
        AttentionPlan {
            decode: self.decode.variant,
            prefill: self.prefill.variant,
        }
    }

    /// The variant a dispatch of `n_tokens` tokens runs.
    pub fn variant(&self, n_tokens: u32) -> AttentionVariant {
        self.launch(n_tokens).variant
    }

    fn launch(&self, n_tokens: u32) -> &Launch {
        if n_tokens < PREFILL_MIN_TOKENS {
            &self.decode
        } else {
            &self.prefill
        }
    }

    /// Binds `n_tokens` query rows of `q`, their u32 `positions` and `table_starts` (where each
    /// token's block table starts in `blocks`), the u32 `blocks` of the tables, the layer's
    /// caches (which must already hold each token's positions `0..=positions[t]`) and `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        q: &GpuBuffer,
        positions: &GpuBuffer,
        table_starts: &GpuBuffer,
        blocks: &GpuBuffer,
        cache: KvLayer<'_>,
        out: &GpuBuffer,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        let AttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim,
            q: q_layout,
            kv_type,
            ..
        } = self.config;
        cache.expect("attention", n_kv_heads * head_dim, kv_type)?;
        let width = n_heads * head_dim;
        require_len(
            "attention",
            "query",
            q,
            q_layout.required_len(n_tokens, width),
        )?;
        require_len("attention", "position", positions, n_tokens.into())?;
        require_len(
            "attention",
            "block table start",
            table_starts,
            n_tokens.into(),
        )?;
        require_len("attention", "block table", blocks, 1)?;
        require_len(
            "attention",
            "output",
            out,
            u64::from(n_tokens) * u64::from(width),
        )?;
        let launch = self.launch(n_tokens);
        let grid = launch
            .grid
            .workgroups(n_tokens, gpu.limits().max_compute_workgroups_per_dimension);
        gpu.dispatch(
            "attention",
            &launch.pipeline,
            &[
                q,
                positions,
                table_starts,
                blocks,
                cache.keys,
                cache.values,
                out,
            ],
            Params::count(n_tokens),
            grid,
        )
    }
}

impl Launch {
    /// `variant`'s pipeline for `config`, or `fallback`'s (a variant that always runs) where
    /// the device cannot run flash attention or shared rows; a subgroup split without
    /// subgroups becomes a workgroup split. Falling back is logged once per device and reason.
    fn new(
        gpu: &Gpu,
        config: &AttentionConfig,
        variant: AttentionVariant,
        fallback: AttentionVariant,
    ) -> Result<Self> {
        let AttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim,
            q,
            window,
            kv_type,
        } = *config;
        let mut constants = vec![
            ("HEAD_DIM", f64::from(head_dim)),
            ("N_HEADS", f64::from(n_heads)),
            ("N_KV_HEADS", f64::from(n_kv_heads)),
            ("Q_STRIDE", f64::from(q.stride)),
            ("Q_OFFSET", f64::from(q.offset)),
            ("SCALE", 1.0 / f64::from(head_dim).sqrt()),
            ("WINDOW", f64::from(window.unwrap_or(0))),
            ("BLOCK", f64::from(KV_BLOCK_ROWS)),
        ];
        let per_head = |heads_per_group| Grid::HeadsByTokens {
            heads: n_heads,
            heads_per_group,
            tokens_per_group: 1,
        };
        // Each variant's kernels with the smallest arrays holding an invocation's query and
        // accumulator values: one head, or (shared rows) several.
        let (variant, kernels, grid, workgroup) = match variant {
            AttentionVariant::Serial => (
                variant,
                SERIAL.holding(head_dim),
                Grid::Pairs {
                    heads: n_heads,
                    per_group: SERIAL_WORKGROUP,
                },
                SERIAL_WORKGROUP,
            ),
            AttentionVariant::SplitK(reduction) => {
                let reduction = split_reduction(gpu, reduction)?;
                let lanes = reduction.lanes();
                let workgroup = SPLIT_WORKGROUP.max(lanes);
                constants.push(("SPLIT_LANES", f64::from(lanes)));
                let kernels = match reduction {
                    Reduction::Subgroup { .. } => SPLIT_SUBGROUP.holding(head_dim),
                    _ => {
                        constants.push(("MERGE_SLOTS", f64::from(workgroup * MERGE_VEC4)));
                        SPLIT.holding(head_dim)
                    }
                };
                let grid = per_head(workgroup / lanes);
                (
                    AttentionVariant::SplitK(reduction),
                    kernels,
                    grid,
                    workgroup,
                )
            }
            AttentionVariant::SharedRows => {
                let lanes = Reduction::Subgroup {
                    lanes: SHARED_ROWS_LANES,
                };
                if !lanes.runs_on(gpu) {
                    gpu.log_once(format!(
                        "shared-rows attention falls back to {fallback:?}: the device's \
                         subgroups are missing or narrower than {SHARED_ROWS_LANES} lanes"
                    ));
                    return Self::new(gpu, config, fallback, fallback);
                }
                let heads = shared_rows_heads(config);
                constants.push(("HEADS_PER_INVOCATION", f64::from(heads)));
                let grid = Grid::HeadsByTokens {
                    heads: n_heads / heads,
                    heads_per_group: 1,
                    tokens_per_group: SHARED_ROWS_LANES,
                };
                let kernels = SHARED_ROWS.holding(heads * head_dim);
                (variant, kernels, grid, SHARED_ROWS_LANES)
            }
            AttentionVariant::Flash => {
                let limits = gpu.limits();
                let flash = match FlashTile::choose(
                    config,
                    limits.max_compute_workgroup_storage_size,
                    limits.max_compute_invocations_per_workgroup,
                ) {
                    Ok(flash) => flash,
                    Err(reason) => {
                        gpu.log_once(format!(
                            "flash attention falls back to {fallback:?}: {reason}"
                        ));
                        return Self::new(gpu, config, fallback, fallback);
                    }
                };
                let d4 = head_dim / 4;
                constants.extend([
                    ("QUERY_TOKENS", f64::from(flash.query_tokens)),
                    ("QUERY_ROWS", f64::from(flash.query_rows)),
                    ("ROW_LANES", f64::from(flash.row_lanes)),
                    ("TILE", f64::from(flash.tile)),
                    ("QUERY_SLOTS", f64::from(flash.query_rows * d4)),
                    ("TILE_SLOTS", f64::from(flash.tile * d4)),
                    ("SCORE_SLOTS", f64::from(flash.query_rows * flash.tile)),
                ]);
                let grid = Grid::HeadsByTokens {
                    heads: n_kv_heads,
                    heads_per_group: 1,
                    tokens_per_group: flash.query_tokens,
                };
                let kernels = FLASH.holding(head_dim);
                (variant, kernels, grid, flash.query_rows * flash.row_lanes)
            }
        };
        constants.push(("WORKGROUP_SIZE", f64::from(workgroup)));
        Ok(Self {
            variant,
            pipeline: gpu.pipeline(kernels.get(kv_type), "main", &constants)?,
            grid,
        })
    }
}

/// Query heads per shared-rows invocation for `config`: the most of the heads sharing a kv head
/// (a divisor of them) that one invocation's registers hold.
fn shared_rows_heads(config: &AttentionConfig) -> u32 {
    let group = config.n_heads / config.n_kv_heads;
    let d4 = config.head_dim / 4;
    (1..=group.min(SHARED_ROWS_MAX_HEADS))
        .rev()
        .find(|&heads| group % heads == 0 && heads * d4 <= MAX_HEAD_VEC4)
        .unwrap_or(1)
}

/// The merge a split-K over `reduction` runs on `gpu`: [`Reduction::Subgroup`] becomes
/// [`Reduction::Workgroup`] (logged) where the device's subgroups are missing or may be
/// narrower than its lanes. Lanes must be a power of two from 2 to 64.
fn split_reduction(gpu: &Gpu, reduction: Reduction) -> Result<Reduction> {
    let lanes = reduction.lanes();
    if reduction == Reduction::None || !lanes.is_power_of_two() || !(2..=64).contains(&lanes) {
        return Err(GpuError::shape(
            "attention",
            format!("split-K over {reduction:?}: lanes must be a power of two from 2 to 64"),
        ));
    }
    if reduction.runs_on(gpu) {
        return Ok(reduction);
    }
    gpu.log_once(format!(
        "split-K attention merges through workgroup memory: the device's subgroups are \
         missing or narrower than {lanes} lanes"
    ));
    Ok(Reduction::Workgroup { lanes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_grid_covers_every_pair_in_rows_the_device_allows() {
        let grid = Grid::Pairs {
            heads: 9,
            per_group: 8,
        };
        // 8 tokens of 9 heads: 72 pairs in 9 full workgroups (not 16 by heads and tokens).
        assert_eq!(grid.workgroups(8, 65535), [9, 1, 1]);
        assert_eq!(grid.workgroups(1, 65535), [2, 1, 1]);
        // Past the device's largest x, rows stacked along y cover every pair (the shader
        // numbers them row by row and skips those past the last).
        for (tokens, max) in [(8, 4), (37, 7), (1000, 40)] {
            let [x, y, z] = grid.workgroups(tokens, max);
            assert!(
                x <= max && y <= max && z == 1,
                "{tokens} tokens, max {max}: {x}x{y}"
            );
            assert!(
                x * y * 8 >= tokens * 9,
                "{tokens} tokens, max {max}: {x}x{y}"
            );
            assert!(
                (x * (y - 1)) * 8 < tokens * 9,
                "a whole row of nothing: {x}x{y}"
            );
        }
    }

    fn config(n_heads: u32, n_kv_heads: u32, head_dim: u32) -> AttentionConfig {
        AttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim,
            q: RowLayout::contiguous(n_heads * head_dim),
            window: None,
            kv_type: KvType::F32,
        }
    }

    #[test]
    fn shared_rows_take_the_most_heads_of_a_kv_head_that_fit() {
        // SmolLM2: 3 heads of 64 per kv head, 48 vec4s.
        assert_eq!(shared_rows_heads(&config(9, 3, 64)), 3);
        // Gemma 3: head_dim 256 fills an invocation alone.
        assert_eq!(shared_rows_heads(&config(4, 1, 256)), 1);
        // 16 heads of 64 per kv head: 4 fit (a divisor); 6 of 128: 2; 8 of 8: all 8.
        assert_eq!(shared_rows_heads(&config(16, 1, 64)), 4);
        assert_eq!(shared_rows_heads(&config(12, 2, 128)), 2);
        assert_eq!(shared_rows_heads(&config(8, 1, 8)), 8);
        // More heads per kv head than an invocation takes.
        assert_eq!(shared_rows_heads(&config(32, 2, 4)), 8);
    }

    #[test]
    fn flash_tiles_shrink_to_the_workgroup_memory_or_give_up() {
        let tile = |n_heads, n_kv_heads, head_dim, bytes, invocations| {
            FlashTile::choose(&config(n_heads, n_kv_heads, head_dim), bytes, invocations)
        };
        // SmolLM2: 5 tokens of 3 heads, 4 lanes a row (60 invocations), 32 keys in ~14 KiB:
        // within WebGPU's minimum of 16 KiB.
        let smollm2 = FlashTile {
            query_tokens: 5,
            query_rows: 15,
            row_lanes: 4,
            tile: 32,
        };
        assert_eq!(tile(9, 3, 64, 16384, 256), Ok(smollm2));
        // Gemma 3 (4 heads of 256 on one kv head): 8 keys fit lavapipe's 32 KiB, none 16 KiB.
        let gemma3 = tile(4, 1, 256, 32768, 256).unwrap();
        assert_eq!(
            (gemma3.query_rows, gemma3.row_lanes, gemma3.tile),
            (16, 4, 8)
        );
        let error = tile(4, 1, 256, 16384, 256).unwrap_err();
        assert!(error.contains("workgroup memory"), "{error}");
        // A kv head shared by more query heads than a workgroup's invocations.
        let error = tile(64, 1, 64, 32768, 32).unwrap_err();
        assert!(error.contains("invocations"), "{error}");
    }
}
