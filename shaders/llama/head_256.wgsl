// Attention arrays for at most 256 values per invocation (the kernel's heads), appended by
// attention.rs, which picks the smallest of head_64/128/256.wgsl that holds them. Arrays sized
// to the widest head supported made SmolLM2's serial decode 1.6-1.9x slower at 1024 positions
// of an f32 cache on llvmpipe (shaders/README.md), and take a GPU thread's registers.
const MAX_HEAD_VEC4: u32 = 64u;
