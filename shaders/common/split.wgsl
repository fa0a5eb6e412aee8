// The split matrix-vector kernels (decode: one token per workgroup row of the grid): SPLIT_LANES
// invocations share a row group, lane l taking blocks l, l + SPLIT_LANES, ... of its 8 rows.
// Each block of a row group is BLOCK_WORDS * 32 contiguous bytes of the packed layout, read with
// 16-byte loads, so the lanes of a row group stream one contiguous run of memory, and a narrow
// matrix (few row groups) still gives a GPU SPLIT_LANES times more invocations than row groups.
// The lanes' partial products are summed by reduce_lanes: reduce_subgroup.wgsl (subgroup
// shuffles) or reduce_workgroup.wgsl (workgroup memory, one barrier). Lane 0 of a row group then
// holds the whole tile and runs the kernel's epilogue.
//
// Every invocation reaches reduce_lanes (no early return: barriers and subgroup operations need
// uniform control flow); invocations past the last row group compute the last one again and
// store nothing. The tile's token 0 is the only one used (TOKENS_PER_INVOCATION = 1).

// Invocations per row group: a power of two dividing WORKGROUP_SIZE (for the subgroup
// reduction, at most the adapter's smallest subgroup size, so that a row group's lanes are in
// one subgroup).
override SPLIT_LANES: u32 = 8u;

// What the lanes of a row group sum: products of rows 0-3 and 4-7, and (NORM) x's squares.
struct LaneSums {
    lo: vec4<f32>,
    hi: vec4<f32>,
    sum_sq: f32,
}

// Where an invocation works: its row group (clamped to the last), its lane, and whether it
// stores the result (lane 0 of a row group of the matrix).
struct SplitPlace {
    g: u32,
    lane: u32,
    stores: bool,
}

// The place of invocation `local` (local_invocation_index) of workgroup `group` (x) when the
// matrix has `row_groups` row groups.
fn split_place(local: u32, group: u32, row_groups: u32) -> SplitPlace {
    let g = group * (WORKGROUP_SIZE / SPLIT_LANES) + local / SPLIT_LANES;
    let lane = local % SPLIT_LANES;
    return SplitPlace(min(g, row_groups - 1u), lane, lane == 0u && g < row_groups);
}

// Row group g times x[token] (as token 0 of the tile), complete in lane 0 of the row group.
fn split_tile(g: u32, token: u32, lane: u32, local: u32) -> Tile {
    let partial = row_group_partial(g, token, token, lane, SPLIT_LANES);
    let sums = reduce_lanes(LaneSums(partial.tile.lo[0], partial.tile.hi[0], partial.sum_sq[0]), local);
    var total: Partial;
    total.tile.lo[0] = sums.lo;
    total.tile.hi[0] = sums.hi;
    total.sum_sq[0] = sums.sum_sq;
    return finish_tile(total);
}

// The split entry point of every kernel that includes this file, which defines `params` and
// `store_tile(g, tok0, tile)`: SPLIT_LANES invocations per row group, token = workgroup y.
@compute @workgroup_size(WORKGROUP_SIZE)
fn main_split(@builtin(local_invocation_index) local: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let at = split_place(local, group.x, (ROWS + ROW_GROUP - 1u) / ROW_GROUP);
    let tile = split_tile(at.g, params.first + min(group.y, params.count - 1u), at.lane, local);
    if at.stores {
        store_tile(at.g, group.y, tile);
    }
}
