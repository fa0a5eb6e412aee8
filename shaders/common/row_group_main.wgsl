// The row-group entry point of every kernel that includes this file, which defines `params` and
// `store_tile(g, tok0, tile)` (its epilogue for row group g and tokens tok0 .. of its tile): one
// invocation per row group (global id x) and TOKENS_PER_INVOCATION tokens (global id y), see
// row_group.wgsl.

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let tok0 = id.y * TOKENS_PER_INVOCATION;
    if tok0 >= params.count {
        return;
    }
    let g = row_group_of(id.x);
    let tile = row_group_tile(g, params.first + tok0, params.first + params.count - 1u);
    if g == id.x {
        store_tile(g, tok0, tile);
    }
}
