//! Writer → reader round trips for metadata, tensors and typed getters.

mod common;

use pio_gguf::{dequantize, GgufError, GgufFile, GgufWriter, MetadataValue, TensorType};

fn reopen(writer: &GgufWriter) -> GgufFile {
    GgufFile::from_bytes(writer.to_bytes().unwrap()).unwrap()
}

#[test]
fn every_metadata_value_type_round_trips() {
    let file = reopen(&common::sample_writer());
    assert_eq!(file.version(), 3);
    for (key, value) in common::every_value_type() {
        assert_eq!(file.get(key), Some(&value), "{key}");
    }
    // general.architecture plus the fixture entries.
    assert_eq!(file.metadata().len(), common::every_value_type().len() + 1);
    assert_eq!(file.architecture().unwrap(), "llama");
}

#[test]
fn file_on_disk_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let writer = common::sample_writer();
    writer.write_to(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.path(), path);
    let in_memory = reopen(&writer);
    assert_eq!(file.metadata(), in_memory.metadata());
    assert_eq!(file.tensors(), in_memory.tensors());
}

#[test]
fn typed_getters_convert_and_name_the_key() {
    let file = reopen(&common::sample_writer());
    assert_eq!(file.get_u32("t.u8").unwrap(), 200);
    assert_eq!(file.get_u32("t.u16").unwrap(), 60_000);
    assert_eq!(file.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get_i32("t.i16").unwrap(), -30_000);
    assert_eq!(file.get_u64("t.u64").unwrap(), u64::MAX - 1);
    assert_eq!(file.get_f32("t.f32").unwrap(), -1.5e-3);
    assert_eq!(file.get_f32("t.f64").unwrap(), std::f32::consts::PI);
    assert!(file.get_bool("t.bool").unwrap());
    assert_eq!(file.get_str("t.string").unwrap(), "héllo, 世界 🙂");
    assert_eq!(
        file.get_string_array("t.array_str").unwrap(),
        ["a", "", "ü"]
    );
    assert_eq!(file.get_f32_array("t.array_f32").unwrap(), [1.0, -2.5, 0.0]);
    assert_eq!(file.get_i32_array("t.array_i32").unwrap(), [3, -4, 5]);
    assert_eq!(file.get_u32_array("t.array_u8").unwrap(), [0, 255]);
    assert_eq!(
        file.get_string_array("t.array_empty").unwrap(),
        Vec::<&str>::new()
    );

    assert_eq!(file.opt_u32("no.such.key").unwrap(), None);
    assert_eq!(file.opt_str("t.string").unwrap(), Some("héllo, 世界 🙂"));

    let missing = file.get_u32("no.such.key").unwrap_err();
    assert!(matches!(missing, GgufError::MissingKey { .. }));
    assert!(missing.to_string().contains("`no.such.key`"), "{missing}");

    for (key, expected) in [
        ("t.i32", "u32"),           // negative
        ("t.u64", "u32"),           // too large
        ("t.string", "u32"),        // not an integer
        ("t.array_f32", "strings"), // wrong element type
    ] {
        let err = if expected == "strings" {
            file.get_string_array(key).unwrap_err()
        } else {
            file.get_u32(key).unwrap_err()
        };
        let text = err.to_string();
        assert!(matches!(err, GgufError::MetadataType { .. }), "{text}");
        assert!(
            text.contains(&format!("`{key}`")) && text.contains(expected),
            "{text}"
        );
    }
    // A wrong type is an error even for the optional getter.
    assert!(file.opt_bool("t.u8").is_err());
}

#[test]
fn tensors_round_trip_bytes_and_values() {
    let writer = common::sample_writer();
    let file = reopen(&writer);
    assert_eq!(file.tensors().len(), 11);
    for (i, info) in file.tensors().iter().enumerate() {
        let cols = info.dtype.block_size().unwrap().max(64);
        let original = common::values(3 * cols as usize, i as u64, 2.0);
        let view = file.tensor(&info.name).unwrap();
        assert_eq!(view.info.dims, vec![cols, 3]);
        assert_eq!(
            view.data,
            pio_gguf::writer::quantize(info.dtype, &original).unwrap()
        );
        assert_eq!(info.offset % file.alignment(), 0);
        assert_eq!(info.n_rows(), Some(3));

        let decoded = view.to_f32().unwrap();
        let mut expected = vec![0.0; original.len()];
        dequantize(info.dtype, view.data, &mut expected).unwrap();
        assert_eq!(decoded, expected);
        if info.dtype == TensorType::F32 {
            assert_eq!(decoded, original);
        }

        // Row access returns exactly the bytes of that row.
        let row_bytes = view.data.len() / 3;
        assert_eq!(view.row(1).unwrap(), &view.data[row_bytes..2 * row_bytes]);
        assert_eq!(view.row(3), None);
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let mut writer = GgufWriter::new();
    writer.add_metadata("general.alignment", 256u32);
    writer
        .add_tensor("a", &[3], TensorType::F32, vec![0u8; 12])
        .unwrap();
    writer
        .add_tensor("b", &[5], TensorType::F16, vec![7u8; 10])
        .unwrap();
    let file = reopen(&writer);
    assert_eq!(file.alignment(), 256);
    assert_eq!(file.data_offset() % 256, 0);
    assert_eq!(file.tensor_info("b").unwrap().offset, 256);
    assert_eq!(file.tensor("b").unwrap().data, [7u8; 10]);
}

#[test]
fn unknown_tensor_type_is_named_in_the_error() {
    let mut writer = GgufWriter::new();
    writer
        .add_tensor("mystery", &[8], TensorType::from_id(99), vec![1u8; 8])
        .unwrap();
    let file = reopen(&writer);
    assert_eq!(file.tensors()[0].dtype, TensorType::Other(99));
    let err = file.tensor("mystery").unwrap_err().to_string();
    assert!(err.contains("mystery") && err.contains("99"), "{err}");
}

#[test]
fn tensor_type_table() {
    for (dtype, id, block, size) in [
        (TensorType::F32, 0, 1, 4),
        (TensorType::F16, 1, 1, 2),
        (TensorType::Q4_0, 2, 32, 18),
        (TensorType::Q4_1, 3, 32, 20),
        (TensorType::Q8_0, 8, 32, 34),
        (TensorType::Q6_K, 14, 256, 210),
        (TensorType::BF16, 30, 1, 2),
    ] {
        assert_eq!(TensorType::from_id(id), dtype);
        assert_eq!(dtype.id(), id);
        assert_eq!(dtype.block_size(), Some(block));
        assert_eq!(dtype.type_size(), Some(size));
    }
    assert_eq!(TensorType::Q4_1.name(), "Q4_1");
    assert_eq!(TensorType::from_id(4), TensorType::Other(4)); // retired Q4_2
    assert_eq!(TensorType::Other(4).block_size(), None);
}

#[test]
fn missing_tensor_is_named() {
    let file = reopen(&common::sample_writer());
    let err = file.tensor("output.weight").unwrap_err();
    assert!(matches!(err, GgufError::MissingTensor { .. }));
    assert!(err.to_string().contains("`output.weight`"));
}

#[test]
fn writer_rejects_inconsistent_input() {
    let mut writer = GgufWriter::new();
    let err = writer
        .add_tensor("w", &[32, 2], TensorType::Q8_0, vec![0u8; 34])
        .err()
        .unwrap();
    assert!(err.to_string().contains("needs 68 bytes"), "{err}");
    let err = writer
        .add_tensor("w", &[30], TensorType::Q8_0, vec![0u8; 34])
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a multiple"), "{err}");
    writer
        .add_tensor("w", &[1], TensorType::F32, vec![0u8; 4])
        .unwrap();
    assert!(writer
        .add_tensor("w", &[1], TensorType::F32, vec![0u8; 4])
        .is_err());

    let mut writer = GgufWriter::new();
    writer.add_metadata(
        "bad",
        MetadataValue::array(pio_gguf::ValueType::U32, vec![MetadataValue::I32(1)]),
    );
    let err = writer.to_bytes().unwrap_err().to_string();
    assert!(err.contains("`bad`") && err.contains("i32"), "{err}");

    let mut writer = GgufWriter::new();
    writer.add_metadata("general.alignment", 24u32);
    assert!(writer.to_bytes().is_err());
}

#[test]
fn add_metadata_replaces_earlier_value() {
    let mut writer = GgufWriter::new();
    writer.add_metadata("k", 1u32).add_metadata("k", "two");
    let file = reopen(&writer);
    assert_eq!(file.metadata().len(), 1);
    assert_eq!(file.get_str("k").unwrap(), "two");
}
