//! Split models (llama.cpp's `gguf-split` format): cut, opened from the first shard, merged back
//! bit for bit, and refused — naming the shard and its expected hash — when a shard is missing,
//! truncated or changed.

mod common;

use std::path::{Path, PathBuf};

use pio_gguf::split::{self, Limit, Manifest, ShardName};
use pio_gguf::{FragmentProblem, GgufError, GgufFile, GgufWriter, MetadataValue, TensorType};

/// The sample model written to `dir/model.gguf`, and that path.
fn sample_model(dir: &Path, writer: &GgufWriter) -> (GgufFile, PathBuf) {
    let path = dir.join("model.gguf");
    writer.write_to(&path).unwrap();
    (GgufFile::open(&path).unwrap(), path)
}

/// `model` cut as `limit` says into `dir/shards/model-*`; the manifest and the first shard.
fn cut(dir: &Path, model: &GgufFile, limit: Limit) -> (Manifest, PathBuf) {
    let out = dir.join("shards");
    std::fs::create_dir_all(&out).unwrap();
    let manifest = split::split(model, limit, &out.join("model")).unwrap();
    let first = ShardName::new(out.join("model"), 0, manifest.shards.len()).path();
    (manifest, first)
}

fn shard_path(first: &Path, index: usize) -> PathBuf {
    ShardName::parse(first).unwrap().sibling(index).path()
}

/// `file` reads as `model`: same metadata in order, same tensors with the same bytes.
fn assert_same_model(file: &GgufFile, model: &GgufFile) {
    assert_eq!(file.metadata(), model.metadata());
    assert_eq!(file.tensors().len(), model.tensors().len());
    for (info, original) in file.tensors().iter().zip(model.tensors()) {
        assert_eq!(
            (&info.name, &info.dims, info.dtype),
            (&original.name, &original.dims, original.dtype)
        );
        let (a, b) = (
            file.tensor(&info.name).unwrap(),
            model.tensor(&info.name).unwrap(),
        );
        assert_eq!(a.data, b.data, "{}", info.name);
    }
}

#[test]
fn one_tensor_per_shard_opens_as_the_model_and_merges_back_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (model, path) = sample_model(dir.path(), &common::sample_writer());
    let (manifest, first) = cut(dir.path(), &model, Limit::Tensors(1));
    assert_eq!(manifest.shards.len(), model.tensors().len());
    assert_eq!(
        first.file_name().unwrap(),
        format!("model-00001-of-{:05}.gguf", model.tensors().len()).as_str()
    );

    // Each shard is a GGUF file of its own with llama.cpp's split keys and one tensor.
    for (index, entry) in manifest.shards.iter().enumerate() {
        let path = shard_path(&first, index);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), entry.bytes);
        let shard = GgufFile::from_bytes(std::fs::read(&path).unwrap());
        let err = shard.unwrap_err().to_string();
        assert!(err.contains(&format!("shard {} of", index + 1)), "{err}");
    }

    let file = GgufFile::open(&first).unwrap();
    assert_eq!(file.path(), first);
    assert_eq!(file.shard_paths().len(), manifest.shards.len());
    assert_eq!(file.shard_paths().last().unwrap(), shard_path(&first, 10));
    assert_same_model(&file, &model);

    let merged = dir.path().join("merged.gguf");
    let entry = split::merge(&file, &merged).unwrap();
    let original = std::fs::read(&path).unwrap();
    assert_eq!(std::fs::read(&merged).unwrap(), original);
    assert_eq!(
        Some(&entry.sha256),
        manifest.original.as_ref().map(|o| &o.sha256)
    );
    assert_eq!(manifest.original.unwrap().bytes, original.len() as u64);
}

#[test]
fn a_size_limit_is_kept_except_by_a_tensor_larger_than_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = common::sample_writer();
    // 4 KiB of F32: larger than the limit on its own.
    writer
        .add_f32_tensor(
            "t.large",
            &[1024],
            TensorType::F32,
            &common::values(1024, 9, 1.0),
        )
        .unwrap();
    let (model, path) = sample_model(dir.path(), &writer);
    let limit = 2048;
    let (manifest, first) = cut(dir.path(), &model, Limit::Bytes(limit));
    let file = GgufFile::open(&first).unwrap();
    assert_same_model(&file, &model);
    assert!(manifest.shards.len() > 2 && manifest.shards.len() < model.tensors().len());
    let mut oversized = 0;
    for (index, entry) in manifest.shards.iter().enumerate() {
        let shard = std::fs::read(shard_path(&first, index)).unwrap();
        assert_eq!(shard.len() as u64, entry.bytes);
        if entry.bytes > limit {
            // Only the large tensor, alone in its shard.
            oversized += 1;
            assert_eq!(index, manifest.shards.len() - 1, "{entry:?}");
        }
    }
    assert_eq!(oversized, 1);
    let merged = dir.path().join("merged.gguf");
    split::merge(&file, &merged).unwrap();
    assert_eq!(std::fs::read(merged).unwrap(), std::fs::read(path).unwrap());
}

#[test]
fn a_custom_alignment_is_kept_in_every_shard_and_in_the_merge() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = common::sample_writer();
    writer.add_metadata("general.alignment", MetadataValue::U32(256));
    let (model, path) = sample_model(dir.path(), &writer);
    let (_, first) = cut(dir.path(), &model, Limit::Tensors(4));
    let file = GgufFile::open(&first).unwrap();
    assert_eq!(file.alignment(), 256);
    assert_same_model(&file, &model);
    let merged = dir.path().join("merged.gguf");
    split::merge(&file, &merged).unwrap();
    assert_eq!(std::fs::read(merged).unwrap(), std::fs::read(path).unwrap());
}

/// Shards written as llama.cpp's `gguf-split` writes them (the split keys after the model's
/// metadata in the first, alone in the others; no manifest) open as one model.
#[test]
fn shards_laid_out_by_llama_cpp_open_without_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let split_keys = |writer: &mut GgufWriter, no: u16| {
        writer
            .add_metadata("split.no", MetadataValue::U16(no))
            .add_metadata("split.count", MetadataValue::U16(2))
            .add_metadata("split.tensors.count", MetadataValue::I32(3));
    };
    let mut first = GgufWriter::new();
    first.add_metadata("general.architecture", "llama");
    split_keys(&mut first, 0);
    first
        .add_f32_tensor("a", &[32], TensorType::F32, &common::values(32, 1, 1.0))
        .unwrap();
    let mut second = GgufWriter::new();
    split_keys(&mut second, 1);
    for name in ["b", "c"] {
        second
            .add_f32_tensor(
                name,
                &[64, 2],
                TensorType::Q8_0,
                &common::values(128, 2, 1.0),
            )
            .unwrap();
    }
    let prefix = dir.path().join("llama");
    first
        .write_to(ShardName::new(&prefix, 0, 2).path())
        .unwrap();
    second
        .write_to(ShardName::new(&prefix, 1, 2).path())
        .unwrap();

    let file = GgufFile::open(ShardName::new(&prefix, 0, 2).path()).unwrap();
    let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(file.architecture().unwrap(), "llama");
    assert_eq!(
        file.get("split.count"),
        None,
        "split keys are not model metadata"
    );
    assert_eq!(file.tensor("c").unwrap().to_f32().unwrap().len(), 128);

    // The tensor total is checked.
    let mut wrong = GgufWriter::new();
    wrong.add_metadata("general.architecture", "llama");
    wrong
        .add_metadata("split.no", MetadataValue::U16(0))
        .add_metadata("split.count", MetadataValue::U16(2))
        .add_metadata("split.tensors.count", MetadataValue::I32(4));
    wrong
        .write_to(ShardName::new(&prefix, 0, 2).path())
        .unwrap();
    let err = GgufFile::open(ShardName::new(&prefix, 0, 2).path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("`split.tensors.count` is 4, the 2 shards hold 2 tensors"),
        "{err}"
    );
}

/// A split model of three shards with its manifest, the original model and the first shard.
fn three_shards(dir: &Path) -> (Manifest, PathBuf) {
    let (model, _) = sample_model(dir, &common::sample_writer());
    let (manifest, first) = cut(dir, &model, Limit::Tensors(4));
    assert_eq!(manifest.shards.len(), 3);
    (manifest, first)
}

#[test]
fn a_changed_shard_is_named_with_both_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, first) = three_shards(dir.path());
    let second = shard_path(&first, 1);
    let mut bytes = std::fs::read(&second).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&second, &bytes).unwrap();
    let err = GgufFile::open(&first).unwrap_err();
    let expected = &manifest.shards[1].sha256;
    match &err {
        GgufError::Fragment {
            path,
            problem:
                FragmentProblem::Digest {
                    actual,
                    expected: e,
                },
        } => {
            assert_eq!(path, &second);
            assert_eq!(e, expected);
            assert_ne!(actual, expected);
        }
        other => panic!("expected a changed shard, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("model-00002-of-00003.gguf") && message.contains(expected),
        "{message}"
    );

    // Without the manifest only the structure is checked: the changed byte goes unseen.
    std::fs::remove_file(first.with_file_name("model.shards.json")).unwrap();
    GgufFile::open(&first).unwrap();
}

#[test]
fn a_missing_shard_is_named_with_its_expected_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, first) = three_shards(dir.path());
    let third = shard_path(&first, 2);
    std::fs::remove_file(&third).unwrap();
    let err = GgufFile::open(&first).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, GgufError::Fragment { path, problem: FragmentProblem::Missing { expected_sha256: Some(h) } }
            if *path == third && *h == manifest.shards[2].sha256),
        "{message}"
    );
    assert!(
        message.contains("model-00003-of-00003.gguf: shard missing"),
        "{message}"
    );

    // A first shard that is not there is an I/O error on it, whatever the manifest says.
    let absent = first.with_file_name("model-00001-of-00002.gguf");
    let err = GgufFile::open(&absent).unwrap_err();
    assert!(
        matches!(&err, GgufError::Io { path, .. } if *path == absent),
        "{err}"
    );

    std::fs::remove_file(first.with_file_name("model.shards.json")).unwrap();
    let err = GgufFile::open(&first).unwrap_err();
    assert!(
        matches!(&err, GgufError::Fragment { path, problem: FragmentProblem::Missing { expected_sha256: None } } if *path == third),
        "{err}"
    );
}

#[test]
fn a_truncated_shard_is_named_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, first) = three_shards(dir.path());
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(&first, &bytes[..100]).unwrap();
    let err = GgufFile::open(&first).unwrap_err();
    let expected = format!(
        "model-00001-of-00003.gguf: shard truncated: 100 of {} bytes (the manifest expects sha256 {})",
        bytes.len(),
        manifest.shards[0].sha256
    );
    assert!(err.to_string().ends_with(&expected), "{err}");

    // Without the manifest the parser finds the truncation.
    std::fs::remove_file(first.with_file_name("model.shards.json")).unwrap();
    let err = GgufFile::open(&first).unwrap_err();
    assert!(
        matches!(err, GgufError::Malformed { ref path, .. } if *path == first),
        "{err}"
    );
}

#[test]
fn another_shard_than_the_first_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (_, first) = three_shards(dir.path());
    let err = GgufFile::open(shard_path(&first, 1)).unwrap_err();
    assert!(
        matches!(&err, GgufError::NotFirstShard { index: 1, count: 3, first: f, .. } if *f == first),
        "{err}"
    );
    assert!(err.to_string().contains("open its first shard"), "{err}");

    // A shard renamed out of llama.cpp's naming rule cannot lead to its siblings.
    let renamed = dir.path().join("renamed.gguf");
    std::fs::copy(&first, &renamed).unwrap();
    let err = GgufFile::open(&renamed).unwrap_err();
    assert!(
        err.to_string().contains("PREFIX-00001-of-00003.gguf"),
        "{err}"
    );
}

#[test]
fn shards_out_of_order_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, first) = three_shards(dir.path());
    std::fs::remove_file(first.with_file_name("model.shards.json")).unwrap();
    let (second, third) = (shard_path(&first, 1), shard_path(&first, 2));
    let swap = dir.path().join("swap");
    std::fs::rename(&second, &swap).unwrap();
    std::fs::rename(&third, &second).unwrap();
    std::fs::rename(&swap, &third).unwrap();
    let err = GgufFile::open(&first).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "model-00002-of-00003.gguf: split model: expected shard 2 of 3, found shard 3 of 3"
        ),
        "{err}"
    );
}

#[test]
fn a_limit_of_no_tensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = sample_model(dir.path(), &common::sample_writer());
    let err = split::split(&model, Limit::Tensors(0), &dir.path().join("x")).unwrap_err();
    assert!(err.to_string().contains("at least one tensor"), "{err}");
}

/// llama.cpp's `gguf-split --merge` keeps the split keys in the merged file with `split.count`
/// 0: such a file is one model.
#[test]
fn a_file_merged_by_llama_cpp_is_one_model() {
    let mut writer = GgufWriter::new();
    writer
        .add_metadata("general.architecture", "llama")
        .add_metadata("split.no", MetadataValue::U16(0))
        .add_metadata("split.count", MetadataValue::U16(0))
        .add_metadata("split.tensors.count", MetadataValue::I32(1));
    writer
        .add_f32_tensor("a", &[32], TensorType::F32, &common::values(32, 1, 1.0))
        .unwrap();
    let file = GgufFile::from_bytes(writer.to_bytes().unwrap()).unwrap();
    assert_eq!(file.metadata().len(), 1);
    assert_eq!(file.shard_paths().len(), 1);
    assert_eq!(file.tensors().len(), 1);
}
