//! Checks against the real SmolLM2-135M-Instruct Q4_1 file (`pio models fetch`; the tests are
//! ignored by a plain `cargo test` and fail without the model when run).

use std::path::PathBuf;

use pio_gguf::{GgufFile, TensorType};

fn model_path() -> PathBuf {
    pio_testkit::model(pio_testkit::SMOLLM2)
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn smollm2_metadata_and_tensors() {
    let path = model_path();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.architecture().unwrap(), "llama");
    assert_eq!(file.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(file.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(
        file.get_string_array("tokenizer.ggml.tokens")
            .unwrap()
            .len(),
        49152
    );

    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.info.dtype, TensorType::Q8_0);
    assert_eq!(embd.info.dims, vec![576, 49152]);
    assert_eq!(embd.data.len(), 576 / 32 * 34 * 49152);

    // Every tensor in the file is a supported type and dequantizes to finite values.
    for info in file.tensors() {
        let view = file.tensor(&info.name).unwrap();
        let values = view.to_f32().unwrap();
        assert_eq!(values.len() as u64, info.n_elements().unwrap());
        assert!(values.iter().all(|v| v.is_finite()), "{}", info.name);
    }
    let q = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.info.dtype, TensorType::Q4_1);
    assert_eq!(q.info.dims, vec![576, 576]);
}
