// Shared by the BERT-specific kernels (embed_norm, attention, pool; prepended by their Rust
// launchers). The linear layers run on pio-gpu's row-group kernels (shaders/common/).

// Shape of the batch being run, written once per forward pass. Sequences are packed without
// padding: sequence `b` is tokens `starts[b]..starts[b + 1]` (each kernel binds `starts`).
struct Params {
    tokens: u32,   // of all sequences together
    longest: u32,  // tokens of the longest sequence
    batch: u32,
    unused: u32,
}
