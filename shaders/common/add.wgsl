// Residual add in place: acc[i] += x[i] for i < params.count.
// The flat index spans both dispatch dimensions so long inputs fit the workgroup-count limit.

override WORKGROUP_SIZE: u32;

struct Params {
    count: u32,
}

@group(0) @binding(0) var<storage, read_write> acc: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WORKGROUP_SIZE;
    if i < params.count {
        acc[i] += x[i];
    }
}
