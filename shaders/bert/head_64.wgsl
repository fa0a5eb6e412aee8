// Heads of at most 64 values: the size of the attention kernels' per-invocation arrays (Rust
// picks the smallest of head_32/64/128.wgsl that holds the model's heads). Arrays sized to the
// widest head any model has cost MiniLM's 32-wide heads 1.5-2.5x on llvmpipe (shaders/README.md).
const MAX_HEAD_VEC4: u32 = 16u;
