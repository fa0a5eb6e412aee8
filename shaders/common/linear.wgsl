// out[t][r] = (W x[first + t])[r] (+= out[t][r] with ACCUMULATE, fusing a residual add), for
// t < params.count, with x optionally RMS-normalised on the fly (NORM). Used for the attention
// output and FFN down projections (accumulating into the residual stream) and for the final
// norm + LM head. One invocation per row group (8 rows) and TOKENS_PER_INVOCATION tokens (main,
// see row_group.wgsl), the same from weights and x its workgroup staged (main_staged, see
// staged.wgsl), or SPLIT_LANES invocations per row group and token (main_split, see
// split.wgsl).

// out[t][r] is element t * OUT_STRIDE + OUT_OFFSET + r (OUT_STRIDE = ROWS, OUT_OFFSET = 0 for
// rows back to back; a row shard of a larger matrix writes its part of each wider row).
override OUT_STRIDE: u32;
override OUT_OFFSET: u32;
override ACCUMULATE: bool;
override WORKGROUP_SIZE: u32;

@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

// Stores (or adds) the tile of row group g for tokens tok0 .. tok0 + TOKENS_PER_INVOCATION.
fn store_tile(g: u32, tok0: u32, tile: Tile) {
    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
        let tok = tok0 + t;
        for (var r = 0u; r < ROW_GROUP; r++) {
            let row = g * ROW_GROUP + r;
            if tok < params.count && row < ROWS {
                let i = tok * OUT_STRIDE + OUT_OFFSET + row;
                var value = tile_value(tile, t, r);
                if ACCUMULATE {
                    value += out[i];
                }
                out[i] = value;
            }
        }
    }
}
