//! A model with heads removed from the projections, read by the `gguf` Python package
//! (llama.cpp's reader for Python): its per-layer head counts are the arrays llama.cpp's
//! `get_key_or_arr` reads, and every tensor has the reduced shape and its bytes.

use std::process::Command;

use pio_gguf::surgery::{Head, Surgery};
use pio_gguf::{GgufFile, GgufWriter, MetadataValue, TensorType};

/// Prints, for the file given, the head counts, key length, and every tensor's name, dims
/// (GGUF order) and byte count as `GGUFReader` reads them.
const READ: &str = r#"
import sys
from gguf import GGUFReader
reader = GGUFReader(sys.argv[1])
for key in ("llama.block_count", "llama.attention.head_count", "llama.attention.head_count_kv",
            "llama.attention.key_length"):
    print(key, reader.fields[key].contents())
for t in reader.tensors:
    print(t.name, [int(d) for d in t.shape], int(t.n_bytes))
"#;

/// A 3-block Llama of 4 query heads of 32 values over 2 key/value heads, in Q8_0.
fn model() -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama")
        .add_metadata("llama.block_count", MetadataValue::U32(3))
        .add_metadata("llama.embedding_length", MetadataValue::U32(128))
        .add_metadata("llama.attention.head_count", MetadataValue::U32(4))
        .add_metadata("llama.attention.head_count_kv", MetadataValue::U32(2));
    for n in 0..3 {
        for (part, cols, rows) in [
            ("attn_q", 128, 128),
            ("attn_k", 128, 64),
            ("attn_v", 128, 64),
            ("attn_output", 128, 128),
        ] {
            let values: Vec<f32> = (0..cols * rows).map(|i| (i % 13) as f32 - 6.0).collect();
            w.add_f32_tensor(
                format!("blk.{n}.{part}.weight"),
                &[cols as u64, rows as u64],
                TensorType::Q8_0,
                &values,
            )
            .unwrap();
        }
    }
    GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
}

#[test]
#[ignore = "needs the gguf Python package: python3 -m pip install gguf"]
fn python_gguf_reads_a_model_with_heads_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    // Block 1 loses head 2 (groups of 2 and 1: 3 key/value heads), block 2 heads 0 and 1 (a
    // whole group: 1 key/value head).
    let h = |layer, head| Head { layer, head };
    let surgery = Surgery {
        remove_heads: vec![h(1, 2), h(2, 0), h(2, 1)],
        ..Surgery::default()
    };
    surgery
        .apply(&model(), &[])
        .unwrap()
        .write_to(&path)
        .unwrap();

    let output = Command::new("python3")
        .arg("-c")
        .arg(READ)
        .arg(&path)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'gguf'"),
        "this test reads the model with the `gguf` Python package: python3 -m pip install gguf"
    );
    assert!(output.status.success(), "GGUFReader failed: {stderr}");
    let read = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "llama.block_count 3",
            "llama.attention.head_count [4, 3, 2]",
            "llama.attention.head_count_kv [2, 3, 1]",
            "llama.attention.key_length 32",
        ]
    );
    // Q8_0: 34 bytes per 32 values.
    let q8 = |cols: usize, rows: usize| cols / 32 * 34 * rows;
    let cut = GgufFile::open(&path).unwrap();
    let mut expected = Vec::new();
    for (n, q, kv) in [(0, 128, 64), (1, 96, 96), (2, 64, 32)] {
        for (part, cols, rows) in [
            ("attn_q", 128, q),
            ("attn_k", 128, kv),
            ("attn_v", 128, kv),
            ("attn_output", q, 128),
        ] {
            let name = format!("blk.{n}.{part}.weight");
            assert_eq!(cut.tensor(&name).unwrap().data.len(), q8(cols, rows));
            expected.push(format!("{name} [{cols}, {rows}] {}", q8(cols, rows)));
        }
    }
    assert_eq!(
        lines[4..],
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
}
