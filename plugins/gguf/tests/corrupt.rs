//! Truncated, corrupted and hostile files give errors, never panics or huge allocations.

mod common;

use pio_gguf::{GgufError, GgufFile, GgufWriter, TensorType};

/// Bytes of a minimal header: magic, version, tensor count, metadata count.
fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(version.to_le_bytes());
    out.extend(n_tensors.to_le_bytes());
    out.extend(n_kv.to_le_bytes());
    out
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn malformed(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes) {
        Err(err @ GgufError::Malformed { .. }) => err.to_string(),
        other => panic!("expected a Malformed error, got {other:?}"),
    }
}

/// Exercises every accessor, so a file that parses must also be safe to use.
fn use_everything(file: &GgufFile) {
    for info in file.tensors() {
        if let Ok(view) = file.tensor(&info.name) {
            let _ = view.to_f32();
            let _ = view.row(0);
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = common::sample_writer().to_bytes().unwrap();
    let full = GgufFile::from_bytes(bytes.clone()).unwrap();
    // The file may end in alignment padding after the last tensor's data.
    let data_end = full
        .tensors()
        .iter()
        .map(|t| full.data_offset() + t.offset + t.byte_size().unwrap())
        .max()
        .unwrap() as usize;
    for cut in 0..bytes.len() {
        let result = GgufFile::from_bytes(bytes[..cut].to_vec());
        if cut < data_end {
            let err = result.expect_err(&format!("cut at {cut} parsed"));
            assert!(err.to_string().starts_with("<memory>: "), "{err}");
        } else {
            use_everything(&result.unwrap());
        }
    }
}

#[test]
fn truncated_file_on_disk_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = common::sample_writer().to_bytes().unwrap();
    for cut in [0, 3, 20, 100, bytes.len() / 2, bytes.len() - 40] {
        let path = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    let missing = dir.path().join("absent.gguf");
    let err = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().contains("absent.gguf"));
}

#[test]
fn random_corruption_never_panics() {
    use rand::{Rng, SeedableRng};
    let bytes = common::sample_writer().to_bytes().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..3000 {
        let mut corrupt = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..corrupt.len());
            corrupt[at] = rng.random();
        }
        if let Ok(file) = GgufFile::from_bytes(corrupt) {
            use_everything(&file);
        }
    }
}

#[test]
fn versions_other_than_2_and_3_are_refused() {
    for version in [0, 1, 4, 0x0300_0000] {
        let err = GgufFile::from_bytes(header(version, 0, 0)).unwrap_err();
        assert!(matches!(err, GgufError::UnsupportedVersion { version: v, .. } if v == version));
        assert!(
            err.to_string().contains(&format!("version {version}")),
            "{err}"
        );
    }
    assert_eq!(GgufFile::from_bytes(header(2, 0, 0)).unwrap().version(), 2);
}

#[test]
fn bad_magic() {
    let mut bytes = header(3, 0, 0);
    bytes[..4].copy_from_slice(b"GGML");
    assert!(malformed(bytes).contains("not a GGUF file"));
}

#[test]
fn bogus_counts_are_rejected_before_allocating() {
    assert!(malformed(header(3, u64::MAX, 0)).contains("tensor count"));
    assert!(malformed(header(3, 0, 1 << 40)).contains("metadata count"));

    // A string length far beyond the file.
    let mut bytes = header(3, 0, 1);
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend([0u8; 16]);
    assert!(malformed(bytes).contains("length of metadata key #0"));

    // An array count far beyond the file.
    let mut bytes = header(3, 0, 1);
    push_str(&mut bytes, "tokens");
    bytes.extend(9u32.to_le_bytes()); // array
    bytes.extend(8u32.to_le_bytes()); // of strings
    bytes.extend((1u64 << 50).to_le_bytes());
    bytes.extend([0u8; 64]);
    let err = malformed(bytes);
    assert!(err.contains("`tokens`") && err.contains("count"), "{err}");
}

#[test]
fn bad_value_encodings() {
    let kv = |ty: u32, payload: &[u8]| {
        let mut bytes = header(3, 0, 1);
        push_str(&mut bytes, "k");
        bytes.extend(ty.to_le_bytes());
        bytes.extend(payload);
        bytes
    };
    assert!(malformed(kv(13, &[0; 8])).contains("unknown metadata value type 13"));
    assert!(malformed(kv(7, &[2])).contains("invalid bool"));
    assert!(malformed(kv(8, &[2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe])).contains("UTF-8"));

    // Arrays nested beyond the depth limit.
    let mut nested = Vec::new();
    for _ in 0..20 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend([0u8; 64]);
    assert!(malformed(kv(9, &nested)).contains("nested"));

    // Duplicate keys.
    let mut bytes = header(3, 0, 2);
    for _ in 0..2 {
        push_str(&mut bytes, "dup");
        bytes.extend(4u32.to_le_bytes());
        bytes.extend(1u32.to_le_bytes());
    }
    assert!(malformed(bytes).contains("duplicate metadata key `dup`"));

    // Alignment that is not a power of two.
    let mut bytes = header(3, 0, 1);
    push_str(&mut bytes, "general.alignment");
    bytes.extend(4u32.to_le_bytes());
    bytes.extend(48u32.to_le_bytes());
    assert!(malformed(bytes).contains("power of two"));
}

/// Writes a one-tensor file and returns its bytes and the position of the
/// tensor-info fields after the name (n_dims).
fn one_tensor_file() -> (Vec<u8>, usize) {
    let mut writer = GgufWriter::new();
    writer
        .add_f32_tensor("w", &[32, 2], TensorType::Q8_0, &[0.5; 64])
        .unwrap();
    let bytes = writer.to_bytes().unwrap();
    // Header (24) + name length (8) + "w".
    (bytes, 24 + 8 + 1)
}

#[test]
fn bad_tensor_infos() {
    let (bytes, at) = one_tensor_file();
    let patch = |offset: usize, value: &[u8]| {
        let mut b = bytes.clone();
        b[at + offset..at + offset + value.len()].copy_from_slice(value);
        b
    };
    // Layout after the name: n_dims u32, dims 2×u64, type u32, offset u64.
    let err = malformed(patch(0, &7u32.to_le_bytes()));
    assert!(err.contains("7 dimensions"), "{err}");

    let err = malformed(patch(4, &u64::MAX.to_le_bytes()));
    assert!(err.contains("overflows"), "{err}");

    let invalid = |b: Vec<u8>| GgufFile::from_bytes(b).unwrap_err().to_string();
    // The 68 bytes of data sit in a 96-byte padded data section.
    let err = invalid(patch(24, &64u64.to_le_bytes()));
    assert!(
        err.contains("tensor `w`") && err.contains("past the end"),
        "{err}"
    );
    let err = invalid(patch(24, &(u64::MAX - 7).to_le_bytes()));
    assert!(err.contains("tensor `w`"), "{err}");
    let err = invalid(patch(24, &1u64.to_le_bytes()));
    assert!(err.contains("alignment"), "{err}");
    // A row of 33 elements is not a whole number of Q8_0 blocks.
    let err = invalid(patch(4, &33u64.to_le_bytes()));
    assert!(err.contains("row length 33"), "{err}");
    // Bigger shape than the data present.
    let err = invalid(patch(12, &3u64.to_le_bytes()));
    assert!(err.contains("past the end"), "{err}");

    let mut dup = GgufWriter::new();
    dup.add_tensor("a", &[1], TensorType::F32, vec![0u8; 4])
        .unwrap();
    dup.add_tensor("b", &[1], TensorType::F32, vec![0u8; 4])
        .unwrap();
    let mut bytes = dup.to_bytes().unwrap();
    let b_name = bytes
        .windows(9)
        .rposition(|w| w == b"\x01\0\0\0\0\0\0\0b")
        .unwrap();
    bytes[b_name + 8] = b'a';
    assert!(malformed(bytes).contains("duplicate tensor name `a`"));
}

/// Regression (found by the `gguf_reader` fuzz target): an empty tensor whose first dimension
/// is huge passes the checks at open time (its byte size is 0), and computing its row size
/// then overflowed (a panic in debug builds, a wrapped size in release builds).
#[test]
fn empty_tensor_with_a_huge_row_has_no_row_size() {
    let mut writer = GgufWriter::new();
    writer
        .add_tensor("w", &[1 << 62, 0], TensorType::F32, Vec::new())
        .unwrap();
    let file = GgufFile::from_bytes(writer.to_bytes().unwrap()).unwrap();
    let info = file.tensor_info("w").unwrap();
    assert_eq!(info.byte_size(), Ok(0));
    assert_eq!(info.row_bytes(), None);
    let view = file.tensor("w").unwrap();
    assert_eq!(view.row(0), None);
    assert_eq!(view.to_f32().unwrap(), Vec::<f32>::new());
}
