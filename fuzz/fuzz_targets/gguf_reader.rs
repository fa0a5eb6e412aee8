//! Arbitrary bytes as a GGUF file: parsing must fail cleanly or give a file whose every
//! metadata value, tensor descriptor and (small) tensor can be read without a panic, a huge
//! allocation or a hang.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pio_gguf::{dequantize, GgufFile, MetadataValue};

/// Tensors up to this many bytes are dequantized; the reader already checks that every tensor
/// lies inside the file, so this only keeps each run fast.
const MAX_DEQUANTIZED_BYTES: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = (
        file.version(),
        file.alignment(),
        file.data_offset(),
        file.path(),
    );
    let _ = file.architecture();
    for (key, value) in file.metadata() {
        walk(value);
        // The typed getters convert or refuse every value type.
        let _ = file.opt_u32(key);
        let _ = file.opt_u64(key);
        let _ = file.opt_i32(key);
        let _ = file.opt_f32(key);
        let _ = file.opt_bool(key);
        let _ = file.opt_str(key);
        let _ = file.opt_string_array(key);
        let _ = file.opt_f32_array(key);
        let _ = file.opt_i32_array(key);
        let _ = file.opt_u32_array(key);
    }
    for info in file.tensors() {
        let _ = (
            info.n_elements(),
            info.n_rows(),
            info.byte_size(),
            info.row_bytes(),
        );
        let _ = info.dtype.to_string();
        assert!(file.tensor_info(&info.name).is_some());
        let Ok(view) = file.tensor(&info.name) else {
            continue;
        };
        // `tensor` promises exactly `byte_size` bytes.
        assert_eq!(Ok(view.data.len() as u64), info.byte_size());
        let _ = view.row(0);
        if let Some(rows) = info.n_rows() {
            let _ = view.row(rows.saturating_sub(1));
            let _ = view.row(rows);
        }
        if view.data.len() <= MAX_DEQUANTIZED_BYTES {
            if let Ok(values) = view.to_f32() {
                assert_eq!(Some(values.len() as u64), info.n_elements());
            }
            // A mismatched output length must be an error, not a panic.
            let mut short = vec![0.0; (info.n_elements().unwrap_or(0) as usize).saturating_sub(1)];
            let _ = dequantize(info.dtype, view.data, &mut short);
        }
    }
});

/// Visits a value and every array item in it.
fn walk(value: &MetadataValue) {
    let _ = value.describe();
    let _ = (
        value.value_type(),
        value.as_integer(),
        value.as_f64(),
        value.as_str(),
    );
    if let Some(items) = value.as_array() {
        items.iter().for_each(walk);
    }
}
