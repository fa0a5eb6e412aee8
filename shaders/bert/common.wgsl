// Shared by the BERT-specific kernels (embed_norm, attention, pool; prepended by their Rust
// launchers). The linear layers run on pio-gpu's row-group kernels (shaders/common/).

// Shape of the batch being run, written once per forward pass. Sequences are padded to
// `seq_len` tokens; token `t` is position `t % seq_len` of sequence `t / seq_len`.
struct Params {
    tokens: u32,
    seq_len: u32,
    batch: u32,
    unused: u32,
}
