// How kernels read 16 bytes of a storage buffer: as four 32-bit words, one 16-byte vector load
// (GPUs; devices without 64-bit integers). pio-gpu prepends this file or bytes16_u64.wgsl to
// every kernel, as `Gpu::load_width` says; kernels declare their hot storage arrays as
// `array<Bytes16>` and read them through `unpack_bytes16`.
alias Bytes16 = vec4<u32>;

fn unpack_bytes16(v: Bytes16) -> vec4<u32> {
    return v;
}
