//! SmolLM2-135M-Instruct cut into one shard per tensor: every shard a valid GGUF file for the
//! `gguf` Python package (llama.cpp's reader for Python), the first shard opening as the whole
//! model, and the shards merged back into the original bytes. Prints the time of each step.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use pio_gguf::split::{self, Limit, ShardName};
use pio_gguf::GgufFile;

/// Reads every file given with the `gguf` package's `GGUFReader` and prints, one line per
/// file, its tensor count and split keys.
const CHECK_SHARDS: &str = r#"
import sys
from gguf import GGUFReader
for path in sys.argv[1:]:
    reader = GGUFReader(path)
    keys = [int(reader.fields[k].contents()) for k in ("split.no", "split.count", "split.tensors.count")]
    print(len(reader.tensors), *keys, reader.tensors[0].name)
"#;

/// The output of `CHECK_SHARDS` over `shards`; fails, saying how to install it, when the
/// `gguf` package is missing.
fn python_gguf_reads(shards: &[PathBuf]) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(CHECK_SHARDS)
        .args(shards)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'gguf'"),
        "this test reads the shards with the `gguf` Python package: python3 -m pip install gguf"
    );
    assert!(output.status.success(), "GGUFReader failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

fn sha256_of(path: &Path) -> String {
    // `merge` hashes what it writes; an independent digest of the original checks it.
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(output.stdout).unwrap()[..64].to_owned()
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn smollm2_one_tensor_per_shard_is_valid_gguf_and_merges_back_bit_for_bit() {
    let path = pio_testkit::model(pio_testkit::SMOLLM2);
    let model = GgufFile::open(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("smollm2");

    let start = Instant::now();
    let manifest = split::split(&model, Limit::Tensors(1), &prefix).unwrap();
    let cut = start.elapsed();
    let count = manifest.shards.len();
    // 30 layers of 9 tensors, the embedding and the output norm.
    assert_eq!((count, model.tensors().len()), (272, 272));

    let shards: Vec<_> = (0..count)
        .map(|i| ShardName::new(&prefix, i, count).path())
        .collect();
    let read = python_gguf_reads(&shards);
    let lines: Vec<_> = read.lines().collect();
    assert_eq!(lines.len(), count);
    for (index, (line, info)) in lines.iter().zip(model.tensors()).enumerate() {
        assert_eq!(*line, format!("1 {index} {count} {count} {}", info.name));
    }

    let start = Instant::now();
    let file = GgufFile::open(&shards[0]).unwrap();
    let opened = start.elapsed();
    assert_eq!(file.metadata(), model.metadata());
    assert_eq!(file.tensors(), {
        // Each shard's only tensor sits at offset 0 of its data section.
        let mut infos = model.tensors().to_vec();
        infos.iter_mut().for_each(|info| info.offset = 0);
        infos
    });
    for info in model.tensors() {
        let (a, b) = (
            file.tensor(&info.name).unwrap(),
            model.tensor(&info.name).unwrap(),
        );
        assert!(a.data == b.data, "{}", info.name);
    }

    let merged = dir.path().join("merged.gguf");
    let start = Instant::now();
    let entry = split::merge(&file, &merged).unwrap();
    let merge = start.elapsed();
    let original = sha256_of(&path);
    assert_eq!(entry.sha256, original);
    assert_eq!(sha256_of(&merged), original);
    assert_eq!(manifest.original.unwrap().sha256, original);
    eprintln!(
        "SmolLM2: {count} shards cut in {:.2} s; the first shard opened (every shard hashed) in \
         {:.2} s; merged in {:.2} s",
        cut.as_secs_f64(),
        opened.as_secs_f64(),
        merge.as_secs_f64()
    );
}
