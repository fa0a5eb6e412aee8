// The serial variant (attention_serial.wgsl): one invocation per (head, token). What software
// adapters run fastest for decode (llvmpipe pays for barriers and cross-lane traffic, and a lane
// is a SIMD lane of one CPU thread, so splitting adds no hardware).

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x < N_HEADS && id.y < params.count {
        attend_serially(id.y, id.x);
    }
}
