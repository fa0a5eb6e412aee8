//! Shared fixtures for the integration tests.

use pio_gguf::{GgufWriter, MetadataValue, TensorType, ValueType};

/// One metadata entry of every value type, including nested and empty arrays.
pub fn every_value_type() -> Vec<(&'static str, MetadataValue)> {
    use MetadataValue as V;
    vec![
        ("t.u8", V::U8(200)),
        ("t.i8", V::I8(-100)),
        ("t.u16", V::U16(60_000)),
        ("t.i16", V::I16(-30_000)),
        ("t.u32", V::U32(4_000_000_000)),
        ("t.i32", V::I32(-2_000_000_000)),
        ("t.f32", V::F32(-1.5e-3)),
        ("t.bool", V::Bool(true)),
        ("t.bool_false", V::Bool(false)),
        ("t.string", V::from("héllo, 世界 🙂")),
        ("t.empty_string", V::from("")),
        ("t.u64", V::U64(u64::MAX - 1)),
        ("t.i64", V::I64(i64::MIN + 1)),
        ("t.f64", V::F64(std::f64::consts::PI)),
        ("t.array_str", V::from(vec!["a", "", "ü"])),
        ("t.array_f32", V::from(vec![1.0f32, -2.5, 0.0])),
        ("t.array_i32", V::from(vec![3i32, -4, 5])),
        ("t.array_u8", V::from(vec![0u8, 255])),
        ("t.array_bool", V::from(vec![true, false])),
        ("t.array_u64", V::from(vec![u64::MAX])),
        ("t.array_empty", V::array(ValueType::String, vec![])),
        (
            "t.array_nested",
            V::array(
                ValueType::Array,
                vec![
                    V::from(vec![1u16, 2]),
                    V::from(vec!["x"]),
                    V::array(ValueType::Array, vec![V::from(vec![-1i64])]),
                ],
            ),
        ),
    ]
}

/// Deterministic pseudo-random values in [-scale, scale).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A small file with metadata of every type and one tensor of each supported type.
pub fn sample_writer() -> GgufWriter {
    let mut writer = GgufWriter::new();
    writer.add_metadata("general.architecture", "llama");
    for (key, value) in every_value_type() {
        writer.add_metadata(key, value);
    }
    for (i, dtype) in [
        TensorType::F32,
        TensorType::F16,
        TensorType::BF16,
        TensorType::Q4_0,
        TensorType::Q4_1,
        TensorType::Q5_0,
        TensorType::Q5_1,
        TensorType::Q8_0,
        TensorType::Q4_K,
        TensorType::Q5_K,
        TensorType::Q6_K,
    ]
    .into_iter()
    .enumerate()
    {
        let cols = dtype.block_size().unwrap().max(64);
        writer
            .add_f32_tensor(
                format!("t.{}", dtype.name()),
                &[cols, 3],
                dtype,
                &values(3 * cols as usize, i as u64, 2.0),
            )
            .unwrap();
    }
    writer
}
