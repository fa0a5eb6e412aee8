// The serial variant (attention_serial.wgsl): one invocation per (head, token). What software
// adapters run fastest for decode (llvmpipe pays for barriers and cross-lane traffic, and a lane
// is a SIMD lane of one CPU thread, so splitting adds no hardware).

// The (token, head) pairs are numbered token by token and spread along x (rows of workgroups
// stacked along y past the device's largest x), WORKGROUP_SIZE consecutive pairs a workgroup:
// a batched step's tokens fill every lane even when N_HEADS is not a multiple of it (SmolLM2's
// 9 heads: 8 tokens in 9 full workgroups, not 16 of which 8 run one lane).
@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let pair = id.y * groups.x * WORKGROUP_SIZE + id.x;
    let t = pair / N_HEADS;
    if t < params.count {
        attend_serially(t, pair % N_HEADS);
    }
}
