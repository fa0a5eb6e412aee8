//! Every kernel against the CPU reference (`pio_gpu::reference`) on seeded random data, with
//! shapes that are not multiples of the tile or workgroup sizes, one and several tokens.

#[path = "../common/mod.rs"]
mod common;

mod attention;
mod embed;
mod linear;
mod sample;
