//! Rewrites a Llama-style GGUF as llama.cpp's Q4_K_M mix (see `pio_gguf::requantize::Q4KM`),
//! e.g. SmolLM2's Q4_1 file into a K-quant file for `pio bench`:
//!
//! ```sh
//! cargo run --release -p pio-gguf --example requantize -- \
//!     ~/.cache/pio/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/SmolLM2-135M-Instruct.Q4_K_M.gguf
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;

use pio_gguf::requantize::{requantize, Q4KM};
use pio_gguf::GgufFile;

fn run(input: &str, output: &str) -> pio_gguf::Result<()> {
    let file = GgufFile::open(input)?;
    let arch = file.architecture()?.to_owned();
    let layers = file.get_u32(&format!("{arch}.block_count"))? as usize;
    let plan = Q4KM::new(&file, layers);
    let mut counts = BTreeMap::new();
    let writer = requantize(&file, |info| {
        let dtype = plan.type_of(info);
        *counts.entry(dtype.name()).or_insert(0) += 1;
        dtype
    })?;
    writer.write_to(output)?;
    println!("{output}: tensors per type {counts:?}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: requantize INPUT.gguf OUTPUT.gguf");
        return ExitCode::FAILURE;
    };
    match run(input, output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("requantize: {error}");
            ExitCode::FAILURE
        }
    }
}
