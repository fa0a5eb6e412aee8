// How kernels read 16 bytes of a storage buffer: as two 64-bit words (software adapters with
// SHADER_INT64). llvmpipe turns every storage load whose offset is not a compile-time constant
// into one bounds-checked scalar load per lane and per component, so a kernel's cost there is
// the number of components it loads: two 64-bit components instead of four 32-bit ones halve
// it. The split back into 32-bit words is register work. (The alternative, bytes16_u32.wgsl,
// is the one for GPUs, which load 16 bytes in one instruction either way.)
alias Bytes16 = vec2<u64>;

fn unpack_bytes16(v: Bytes16) -> vec4<u32> {
    return vec4<u32>(u32(v.x), u32(v.x >> 32u), u32(v.y), u32(v.y >> 32u));
}
