//! Every kernel against the CPU reference (`pio_gpu::reference`) on seeded random data, with
//! shapes that are not multiples of the tile or workgroup sizes, one and several tokens.

use pio_gpu::testing as common;

mod attention;
mod embed;
mod linear;
mod linear_bias;
mod norms;
mod sample;
