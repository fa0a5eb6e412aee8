use pio_gguf::TensorType;

use super::*;
use crate::models::NormWeight;
use crate::reference::ReferenceModel;
use crate::sampler::{argmax, SamplingParams};
use pio_gpu::testing::{gpu as test_gpu, max_abs_diff, max_rel_error};
use pio_gpu::KV_BLOCK_ROWS;

use crate::test_model::{
    gemma3, smollm2, tiny_gemma3, tiny_gemma3_writer, tiny_llama, tiny_llama_bytes, TinyConfig,
};

/// Runs `prompt` (all positions) and then `decode_steps` greedy tokens through both models,
/// printing and returning the worst absolute and relative logit errors.
fn check_against_reference(
    gpu_model: &mut GpuModel,
    reference: &mut ReferenceModel,
    prompt: &[u32],
    decode_steps: usize,
    label: &str,
) -> (f64, f64) {
    let vocab = reference.vocab_size();
    let g = gpu_model.forward(prompt, 0, true).unwrap();
    let r = reference.forward(prompt, 0, true).unwrap();
    let (mut abs, mut rel) = (max_abs_diff(&g, &r), max_rel_error(&g, &r));
    eprintln!(
        "{label}: prompt of {} tokens: max abs {abs:.3e}, rel {rel:.3e}",
        prompt.len()
    );
    let mut next = argmax(&r[r.len() - vocab..]);
    for step in 0..decode_steps {
        let pos = prompt.len() + step;
        let g = gpu_model.forward(&[next], pos, false).unwrap();
        let r = reference.forward(&[next], pos, false).unwrap();
        let (a, b) = (max_abs_diff(&g, &r), max_rel_error(&g, &r));
        eprintln!("{label}: decode position {pos}: max abs {a:.3e}, rel {b:.3e}");
        (abs, rel) = (abs.max(a), rel.max(b));
        next = argmax(&r);
    }
    (abs, rel)
}

fn tiny_case(cfg: TinyConfig, max_batch: usize) {
    let file = tiny_llama(&cfg);
    let mut reference = ReferenceModel::load(&file, 64).unwrap();
    let mut model = GpuModel::new(test_gpu(), &file, 64, max_batch).unwrap();
    let prompt: Vec<u32> = (0..21).map(|i| (i * 37 + 5) % 290).collect();
    let (abs, rel) = check_against_reference(&mut model, &mut reference, &prompt, 6, "tiny");
    // Both sides use the same quantized weights; only f32 summation order differs.
    assert!(abs < 1e-3 && rel < 1e-4, "max abs {abs}, rel {rel}");
}

#[test]
fn tiny_random_model_matches_reference() {
    tiny_case(TinyConfig::default(), 8);
}

/// An f16 KV cache against the f32 reference, for Llama's and Gemma 3's spec (whose q/k norm
/// reads and rewrites the stored keys): each key and value is rounded once (relative error
/// ≤ 2⁻¹¹ ≈ 4.9e-4); a score moves by at most 2⁻¹¹·Σ|q·k| and an attention output by about
/// 2⁻¹¹ relative plus its weights' change, and two layers pass it on through the residual.
/// Normwise logit error ≤ 8·2⁻¹¹ ≈ 3.9e-3 allows each layer a few times the storage error; the
/// f32 cache on the same models errs by < 1e-4, so the check would fail if the f16 cache were
/// read or written at the wrong place (errors of order 1).
#[test]
fn f16_kv_cache_matches_reference_within_rounding() {
    for (file, label) in [
        (tiny_llama(&TinyConfig::default()), "llama"),
        (
            tiny_gemma3(&TinyConfig {
                seed: 3,
                ..TinyConfig::gemma3()
            }),
            "gemma3",
        ),
    ] {
        let spec = models::describe(&file).unwrap();
        let mut reference = ReferenceModel::from_spec(&file, spec.clone(), 64).unwrap();
        let storage = Storage {
            kv: pio_gpu::KvType::F16,
            ..Storage::default()
        };
        let config = RunConfig {
            storage,
            ..RunConfig::new(64, 8)
        };
        let mut model = GpuModel::from_spec(test_gpu(), &file, spec, config).unwrap();
        let prompt: Vec<u32> = (0..21).map(|i| (i * 37 + 5) % 290).collect();
        let (abs, rel) = check_against_reference(
            &mut model,
            &mut reference,
            &prompt,
            6,
            &format!("{label} f16 KV"),
        );
        assert!(
            rel < 8.0 * 2f64.powi(-11),
            "{label}: max abs {abs}, rel {rel}"
        );
    }
}

#[test]
fn tiny_tied_model_in_one_batch_matches_reference() {
    let cfg = TinyConfig {
        tied: true,
        n_head_kv: 1,
        types: vec![TensorType::Q4_1, TensorType::F16, TensorType::Q8_0],
        seed: 7,
        ..TinyConfig::default()
    };
    tiny_case(cfg, 64);
}

/// A K-quant mix like llama.cpp's Q4_K_M (256-wide rows): with 7 matrices per layer and the
/// embedding first, the 7 types land on the same roles in every layer — the embedding and
/// down projections Q6_K, q/k/v and the output head Q4_K, the attention output Q5_1, gate
/// and up Q5_K.
#[test]
fn tiny_k_quant_model_matches_reference() {
    let cfg = TinyConfig {
        n_embd: 256,
        n_ff: 512,
        types: vec![
            TensorType::Q6_K,
            TensorType::Q4_K,
            TensorType::Q4_K,
            TensorType::Q4_K,
            TensorType::Q5_1,
            TensorType::Q5_K,
            TensorType::Q5_K,
        ],
        seed: 11,
        ..TinyConfig::default()
    };
    let file = tiny_llama(&cfg);
    for (name, dtype) in [
        ("token_embd.weight", TensorType::Q6_K),
        ("output.weight", TensorType::Q4_K),
        ("blk.1.attn_v.weight", TensorType::Q4_K),
        ("blk.1.attn_output.weight", TensorType::Q5_1),
        ("blk.1.ffn_up.weight", TensorType::Q5_K),
        ("blk.1.ffn_down.weight", TensorType::Q6_K),
    ] {
        assert_eq!(file.tensor_info(name).unwrap().dtype, dtype, "{name}");
    }
    tiny_case(cfg, 8);
}

/// What the runtime runs beyond Llama's spec needs no kernel of its own: a different RoPE base
/// per layer (one table each) and `1 + w` norm weights (folded in at upload). The GPU and the
/// reference follow such a spec alike, and it changes the logits.
#[test]
fn per_layer_rope_bases_and_offset_norm_weights_match_reference() {
    let file = tiny_llama(&TinyConfig::default());
    let llama = models::describe(&file).unwrap();
    let mut spec = llama.clone();
    spec.layers[1].attention.rope.base = 500.0;
    spec.norm.weight = NormWeight::OnePlus;
    let mut reference = ReferenceModel::from_spec(&file, spec.clone(), 64).unwrap();
    let mut model = GpuModel::from_spec(test_gpu(), &file, spec, RunConfig::new(64, 8)).unwrap();
    assert_eq!(model.stages[0].rope_tables.len(), 2);
    let prompt: Vec<u32> = (0..13).map(|i| (i * 41 + 3) % 290).collect();
    let (abs, rel) = check_against_reference(&mut model, &mut reference, &prompt, 3, "spec");
    // As in `tiny_case`: the same weights on both sides, only f32 summation order differs.
    assert!(abs < 1e-3 && rel < 1e-4, "max abs {abs}, rel {rel}");

    let as_llama = ReferenceModel::from_spec(&file, llama, 64)
        .unwrap()
        .forward(&prompt, 0, false)
        .unwrap();
    let as_spec = model.forward(&prompt, 0, false).unwrap();
    assert!(
        max_abs_diff(&as_spec, &as_llama) > 0.1,
        "the spec changed nothing"
    );
}

/// Gemma 3's whole spec on the GPU — scaled embedding, q/k norms, sandwich norms, GeGLU,
/// RoPE on halves with a local and a global base, a window of 4 on every layer but the sixth —
/// against the reference: a prompt longer than the window and than one batch, then decoding.
#[test]
fn tiny_gemma3_matches_reference() {
    for (max_batch, seed) in [(8, 1), (64, 5)] {
        let cfg = TinyConfig {
            seed,
            ..TinyConfig::gemma3()
        };
        let file = tiny_gemma3(&cfg);
        let mut reference = ReferenceModel::load(&file, 64).unwrap();
        let mut model = GpuModel::new(test_gpu(), &file, 64, max_batch).unwrap();
        assert_eq!(model.dispatches_per_layer(), 8);
        let prompt: Vec<u32> = (0..21).map(|i| (i * 37 + 5) % 290).collect();
        let (abs, rel) = check_against_reference(&mut model, &mut reference, &prompt, 6, "gemma3");
        // As in `tiny_case`: the same weights on both sides, only f32 summation order differs.
        assert!(abs < 1e-3 && rel < 1e-4, "max abs {abs}, rel {rel}");
    }
}

/// `n` tokens after `prompt`, each fed back to sample the next, as a sequence alone runs.
fn continue_prompt(
    model: &mut dyn Forward,
    prompt: &[u32],
    sampling: &SamplingParams,
    n: usize,
) -> Vec<u32> {
    let mut sampler = Sampler::new(sampling.clone()).unwrap();
    let mut history = prompt.to_vec();
    let mut next = model.next_token(prompt, 0, &mut sampler, &history).unwrap();
    for _ in 1..n {
        history.push(next);
        next = model
            .next_token(&[next], history.len() - 1, &mut sampler, &history)
            .unwrap();
    }
    history.push(next);
    history.split_off(prompt.len())
}

#[test]
fn device_sampling_picks_the_tokens_the_host_sampler_picks() {
    let file = tiny_llama(&TinyConfig::default());
    let mut reference = ReferenceModel::load(&file, 64).unwrap();
    let mut model = GpuModel::new(test_gpu(), &file, 64, 8).unwrap();
    let prompt: Vec<u32> = (0..11).map(|i| (i * 53 + 7) % 290).collect();
    for (temperature, top_k, top_p, min_p, penalty) in [
        (0.0, 0, 1.0, 0.0, 1.3),
        (1.0, 0, 1.0, 0.0, 1.0),
        (0.8, 20, 0.95, 0.0, 1.1),
        (1.2, 0, 0.9, 0.05, 1.0),
    ] {
        let sampling = SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty: penalty,
            seed: 5,
            ..SamplingParams::default()
        };
        let on_device = continue_prompt(&mut model, &prompt, &sampling, 16);
        let on_host = continue_prompt(&mut reference, &prompt, &sampling, 16);
        assert_eq!(on_device.len(), 16);
        assert_eq!(on_device, on_host, "{sampling:?}");
    }
}

#[test]
fn rewinding_the_cache_recomputes_the_same_logits() {
    let file = tiny_llama(&TinyConfig::default());
    let mut model = GpuModel::new(test_gpu(), &file, 32, 16).unwrap();
    let a = model.forward(&[5, 6, 7, 8], 0, false).unwrap();
    model.forward(&[9, 9, 9], 4, false).unwrap();
    // Overwrite positions 2.. with the original tokens: the cache of 0..2 is reused.
    let b = model.forward(&[7, 8], 2, false).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-5);
    let err = model.forward(&[1; 5], 30, false).unwrap_err();
    assert!(matches!(err, Error::PromptTooLong { .. }), "{err}");
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn smollm2_matches_reference() {
    let file = GgufFile::open(smollm2()).unwrap();
    real_model_matches_reference(&file, "SmolLM2");
}

/// SmolLM2 requantized as llama.cpp's Q4_K_M mix (from the Q4_1 file's values): mostly Q5_0
/// and Q8_0, since its 576-wide rows hold no 256-element super-blocks, with Q4_K and Q6_K
/// down projections (1536 wide). A K-quant Llama-family model, checked like the Q4_1 file.
#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn smollm2_k_quant_mix_matches_reference() {
    use pio_gguf::requantize::{requantize, Q4KM};
    let q4_1 = GgufFile::open(smollm2()).unwrap();
    let plan = Q4KM::new(&q4_1, 30);
    let bytes = requantize(&q4_1, |info| plan.type_of(info))
        .unwrap()
        .to_bytes()
        .unwrap();
    let file = GgufFile::from_bytes(bytes).unwrap();
    for (name, dtype) in [
        ("blk.0.ffn_down.weight", TensorType::Q6_K),
        ("blk.3.ffn_down.weight", TensorType::Q4_K),
        ("blk.3.attn_q.weight", TensorType::Q5_0),
        ("blk.0.attn_v.weight", TensorType::Q8_0),
    ] {
        assert_eq!(file.tensor_info(name).unwrap().dtype, dtype, "{name}");
    }
    real_model_matches_reference(&file, "SmolLM2 Q4_K_M");
}

/// The GPU model of a real SmolLM2 `file` against the CPU reference on the same file: a prompt
/// and a few greedy decode steps.
fn real_model_matches_reference(file: &GgufFile, label: &str) {
    let mut reference = ReferenceModel::load(file, 128).unwrap();
    let mut model = GpuModel::new(test_gpu(), file, 128, DEFAULT_MAX_BATCH).unwrap();
    // "<|im_start|>user\nThe capital" and some arbitrary ids.
    let prompt = [1, 4093, 198, 504, 3575, 3223, 28, 1029, 8130, 49, 2];
    let (abs, rel) = check_against_reference(&mut model, &mut reference, &prompt, 4, label);
    assert!(abs < 1e-3 && rel < 1e-4, "max abs {abs}, rel {rel}");
}

#[test]
#[ignore = "needs the Gemma 3 model: pio models fetch"]
fn gemma3_matches_reference() {
    let file = GgufFile::open(gemma3()).unwrap();
    let mut reference = ReferenceModel::load(&file, 64).unwrap();
    let mut model = GpuModel::new(test_gpu(), &file, 64, DEFAULT_MAX_BATCH).unwrap();
    // "<bos>The capital of France is" and some arbitrary ids.
    let prompt = [2, 818, 5279, 529, 7001, 563, 9079, 236761, 107, 1018, 40000];
    let (abs, rel) = check_against_reference(&mut model, &mut reference, &prompt, 3, "Gemma 3");
    assert!(abs < 1e-3 && rel < 1e-4, "max abs {abs}, rel {rel}");
}

/// Layers streamed from the file through the ring compute exactly what resident layers do: the
/// same kernels read the same packed bytes, only from a slot written before each use. For Llama
/// (matrix types differ from layer to layer, so a slot holds different types in turn) and
/// Gemma 3 (sandwich and q/k norms; the RoPE row reordering runs on the loader thread), with
/// prompts longer than `max_batch` (every chunk streams every streamed layer), decode steps
/// and device sampling.
#[test]
fn streamed_layers_compute_what_resident_layers_compute() {
    let dir = tempfile::tempdir().unwrap();
    let llama = TinyConfig {
        n_layer: 5,
        ..TinyConfig::default()
    };
    let gemma = TinyConfig::gemma3();
    for (label, bytes, n_layer) in [
        ("llama", tiny_llama_bytes(&llama), llama.n_layer),
        (
            "gemma3",
            tiny_gemma3_writer(&gemma).to_bytes().unwrap(),
            gemma.n_layer,
        ),
    ] {
        let path = dir.path().join(format!("{label}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let spec = models::describe(&file).unwrap();
        let load = |streamed_layers| {
            let config = RunConfig {
                streamed_layers,
                ..RunConfig::new(64, 8)
            };
            GpuModel::from_spec(test_gpu(), &file, spec.clone(), config).unwrap()
        };
        let prompt: Vec<u32> = (0..21).map(|i| (i * 37 + 5) % 290).collect();
        let sampling = SamplingParams {
            temperature: 0.9,
            seed: 3,
            ..SamplingParams::default()
        };
        let mut resident = load(0);
        assert!(resident.streaming().is_none());
        let logits = resident.forward(&prompt, 0, true).unwrap();
        let tokens = continue_prompt(&mut resident, &prompt, &sampling, 8);
        let resident_bytes = resident.gpu().allocated_bytes();
        for streamed in [3, n_layer] {
            let mut model = load(streamed);
            let what = format!("{label} with {streamed} of {n_layer} layers streamed");
            assert_eq!(model.forward(&prompt, 0, true).unwrap(), logits, "{what}");
            assert_eq!(
                continue_prompt(&mut model, &prompt, &sampling, 8),
                tokens,
                "{what}"
            );
            // Steps: two at warm-up, three chunks of the prompt, and for the tokens the
            // prompt's three chunks again and seven single-token steps.
            let stats = model.streaming().unwrap();
            assert_eq!(stats.layers, streamed, "{what}");
            assert_eq!(stats.layers_written, 15 * streamed as u64, "{what}");
            assert!(stats.bytes_written > 0 && stats.ring_bytes > 0, "{what}");
            // The ring holds two layers' matrices instead of all the streamed ones.
            assert!(model.gpu().allocated_bytes() < resident_bytes, "{what}");
        }
    }
}

/// Two sequences' prompts in the batched sequences' pool (all logits), then one decode token
/// each (last logits): what a batched step runs.
fn batched_logits(model: &mut GpuModel) -> (Vec<f32>, Vec<f32>) {
    model.reserve_batch_cache(4).unwrap();
    let tables: [&[u32]; 2] = [&[0, 1], &[2, 3]];
    let lengths = [10u32, 6];
    let (mut tokens, mut positions, mut rows, mut sequences) = (vec![], vec![], vec![], vec![]);
    for (s, &n) in lengths.iter().enumerate() {
        for p in 0..n {
            tokens.push((p * 31 + 3 + 7 * s as u32) % 290);
            positions.push(p);
            rows.push(tables[s][0] * KV_BLOCK_ROWS + p);
            sequences.push(s as u32);
        }
    }
    let cache = CacheMap {
        rows: &rows,
        sequences: &sequences,
        tables: &tables,
    };
    let prompts = model
        .forward_batch(&tokens, &positions, cache, true)
        .unwrap();
    let rows: Vec<u32> = (0..2)
        .map(|s| tables[s][0] * KV_BLOCK_ROWS + lengths[s])
        .collect();
    let cache = CacheMap {
        rows: &rows,
        sequences: &[0, 1],
        tables: &tables,
    };
    let decoded = model
        .forward_batch(&[17, 23], &lengths, cache, false)
        .unwrap();
    (prompts, decoded)
}

/// A model split over two and three logical devices of one adapter computes what it computes
/// on one, bit for bit — the same kernels on the same values, the hidden states crossing
/// through the host unchanged — for Llama (tied and untied head) and Gemma 3: a prompt of
/// several chunks (all logits), sampled decoding, and batched sequences (micro-batches of
/// other sizes than on one device). Each device holds only its layers, and the transfers are
/// counted.
#[test]
fn partitioned_models_compute_what_one_device_computes() {
    let dir = tempfile::tempdir().unwrap();
    let llama = TinyConfig {
        n_layer: 5,
        ..TinyConfig::default()
    };
    let tied = TinyConfig {
        tied: true,
        seed: 9,
        ..llama.clone()
    };
    let gemma = TinyConfig {
        n_layer: 5,
        ..TinyConfig::gemma3()
    };
    for (label, bytes, cfg) in [
        ("llama", tiny_llama_bytes(&llama), &llama),
        ("tied llama", tiny_llama_bytes(&tied), &tied),
        (
            "gemma3",
            tiny_gemma3_writer(&gemma).to_bytes().unwrap(),
            &gemma,
        ),
    ] {
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, bytes).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let spec = models::describe(&file).unwrap();
        let load = |split: &[usize], streamed_layers| {
            let config = RunConfig {
                streamed_layers,
                ..RunConfig::new(64, 8)
            };
            let gpus = split.iter().map(|_| test_gpu()).collect();
            GpuModel::partitioned(gpus, split, &file, spec.clone(), config).unwrap()
        };
        let prompt: Vec<u32> = (0..21).map(|i| (i * 37 + 5) % 290).collect();
        let sampling = SamplingParams {
            temperature: 0.9,
            seed: 3,
            ..SamplingParams::default()
        };
        let mut one = load(&[cfg.n_layer], 0);
        let logits = one.forward(&prompt, 0, true).unwrap();
        let tokens = continue_prompt(&mut one, &prompt, &sampling, 8);
        let batched = batched_logits(&mut one);
        assert_eq!(one.pipeline_stats().transferred_bytes, 0, "{label}");
        let one_bytes = one.allocated_bytes();
        drop(one);
        for (split, streamed) in [(&[2, 3][..], 0), (&[1, 1, 3][..], 0), (&[3, 2][..], 2)] {
            let what = format!("{label} split {split:?} ({streamed} layers streamed)");
            let mut model = load(split, streamed);
            assert_eq!(model.forward(&prompt, 0, true).unwrap(), logits, "{what}");
            let continued = continue_prompt(&mut model, &prompt, &sampling, 8);
            assert_eq!(continued, tokens, "{what}");
            assert_eq!(batched_logits(&mut model), batched, "{what}");
            let stats = model.pipeline_stats();
            let layers: Vec<usize> = stats.devices.iter().map(|d| d.layers.len()).collect();
            assert_eq!(layers, split, "{what}");
            // Every token crosses each boundary twice (read back, written) as n_embd f32s.
            let boundaries = (split.len() - 1) as u64;
            let per_token = boundaries * 2 * 4 * cfg.n_embd as u64;
            assert_eq!(stats.transferred_bytes, stats.tokens * per_token, "{what}");
            assert!(stats
                .devices
                .iter()
                .all(|d| d.busy > std::time::Duration::ZERO));
            // Each device holds less than the whole model did on one.
            for device in &stats.devices {
                assert!(device.allocated_bytes < one_bytes, "{what}: {device:?}");
            }
            assert_eq!(
                model.streaming().map_or(0, |s| s.layers),
                streamed,
                "{what}"
            );
        }
    }
}

/// Splits that do not fit the model, and streamed layers off the last device, are refused.
#[test]
fn bad_splits_are_refused() {
    let file = tiny_llama(&TinyConfig::default());
    let spec = models::describe(&file).unwrap();
    let n = spec.layers.len();
    let try_split = |split: &[usize], devices: usize, streamed_layers| {
        let config = RunConfig {
            streamed_layers,
            ..RunConfig::new(64, 8)
        };
        let gpus = (0..devices).map(|_| test_gpu()).collect();
        GpuModel::partitioned(gpus, split, &file, spec.clone(), config)
            .err()
            .unwrap()
            .to_string()
    };
    let err = try_split(&[1, n], 2, 0);
    assert!(
        err.contains(&format!("adds up to {} layers", n + 1)),
        "{err}"
    );
    let err = try_split(&[1, n - 1], 3, 0);
    assert!(err.contains("for 3 devices"), "{err}");
    let err = try_split(&[n - 1, 1], 2, 2);
    assert!(err.contains("must all be on the last device"), "{err}");
}

/// A model held in memory has no file to stream from: refused with the reason.
#[test]
fn streaming_needs_a_file_on_disk() {
    let file = tiny_llama(&TinyConfig::default());
    let spec = models::describe(&file).unwrap();
    let config = RunConfig {
        streamed_layers: 1,
        ..RunConfig::new(64, 8)
    };
    let err = GpuModel::from_spec(test_gpu(), &file, spec, config)
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(matches!(err, Error::Streaming(_)), "{text}");
    assert!(
        text.contains("<memory>") && text.contains("on disk"),
        "{text}"
    );
}

/// SmolLM2 with 20 of its 30 layers streamed from the file: the logits of a prompt and the
/// greedy continuation (the default sampling) are those of the resident model, bit for bit.
#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn smollm2_streamed_generates_what_resident_generates() {
    let file = GgufFile::open(smollm2()).unwrap();
    let spec = models::describe(&file).unwrap();
    let load = |streamed_layers| {
        let config = RunConfig {
            streamed_layers,
            ..RunConfig::new(128, DEFAULT_MAX_BATCH)
        };
        GpuModel::from_spec(test_gpu(), &file, spec.clone(), config).unwrap()
    };
    // "<|im_start|>user\nThe capital" and some arbitrary ids.
    let prompt = [1, 4093, 198, 504, 3575, 3223, 28, 1029, 8130, 49, 2];
    let mut resident = load(0);
    let logits = resident.forward(&prompt, 0, true).unwrap();
    let tokens = continue_prompt(&mut resident, &prompt, &SamplingParams::default(), 12);
    drop(resident);
    let mut streamed = load(20);
    assert_eq!(streamed.forward(&prompt, 0, true).unwrap(), logits);
    let continued = continue_prompt(&mut streamed, &prompt, &SamplingParams::default(), 12);
    assert_eq!(continued, tokens);
    assert_eq!(streamed.streaming().unwrap().layers, 20);
}

/// SmolLM2 split over two logical devices (20 + 10 layers): the logits of a prompt and the
/// greedy continuation are those of one device, bit for bit.
#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn smollm2_split_over_two_devices_generates_what_one_generates() {
    let file = GgufFile::open(smollm2()).unwrap();
    let spec = models::describe(&file).unwrap();
    let load = |split: &[usize]| {
        let gpus = split.iter().map(|_| test_gpu()).collect();
        let config = RunConfig::new(128, DEFAULT_MAX_BATCH);
        GpuModel::partitioned(gpus, split, &file, spec.clone(), config).unwrap()
    };
    // "<|im_start|>user\nThe capital" and some arbitrary ids.
    let prompt = [1, 4093, 198, 504, 3575, 3223, 28, 1029, 8130, 49, 2];
    let mut one = load(&[30]);
    let logits = one.forward(&prompt, 0, true).unwrap();
    let tokens = continue_prompt(&mut one, &prompt, &SamplingParams::default(), 12);
    drop(one);
    let mut split = load(&[20, 10]);
    assert_eq!(split.forward(&prompt, 0, true).unwrap(), logits);
    let continued = continue_prompt(&mut split, &prompt, &SamplingParams::default(), 12);
    assert_eq!(continued, tokens);
}

/// A tiny model activated with `mode`, its tuning cache in `dir`.
fn tuned_tiny(file: &GgufFile, mode: pio_gpu::TuneMode, dir: &std::path::Path) -> GpuModel {
    let spec = models::describe(file).unwrap();
    let config = RunConfig {
        tuning: pio_gpu::TuneSettings {
            mode,
            cache_dir: Some(dir.to_owned()),
        },
        ..RunConfig::new(64, 8)
    };
    GpuModel::from_spec(test_gpu(), file, spec, config).unwrap()
}

/// A tiny model whose matrices are all Q4_1: nine distinct matrix kernel shapes (QKV, output,
/// gate/up and down, each for one token and for a chunk of 8, and the head for one token).
fn uniform_tiny() -> GgufFile {
    tiny_llama(&TinyConfig {
        types: vec![TensorType::Q4_1],
        ..TinyConfig::default()
    })
}

/// Each kernel shape's tile and where it came from.
fn tiles(model: &GpuModel) -> Vec<(pio_gpu::TuneKey, pio_gpu::RowTile, pio_gpu::TileSource)> {
    let report = &model.tuning()[0];
    report
        .choices
        .iter()
        .map(|c| (c.key, c.tile, c.source))
        .collect()
}

/// The cache files in `dir`.
fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(dir) {
        Err(_) => Vec::new(),
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
    }
}

/// The first activation searches every distinct matrix kernel shape once, however many layers
/// share it, and caches the choices; the second reads them all back and searches nothing.
#[test]
fn tuning_is_cached_and_a_second_activation_searches_nothing() {
    let file = uniform_tiny();
    let dir = tempfile::tempdir().unwrap();
    let first = tuned_tiny(&file, pio_gpu::TuneMode::Auto, dir.path());
    let report = first.tuning()[0].clone();
    assert_eq!(report.searches, 9, "{report:#?}");
    assert_eq!(report.choices.len(), 9);
    assert!(report.search_seconds > 0.0);
    assert!(report
        .choices
        .iter()
        .all(|c| c.source == pio_gpu::TileSource::Searched && c.ms.is_some()));
    assert_eq!(cache_files(dir.path()).len(), 1);
    assert_eq!(report.cache_file.as_ref(), cache_files(dir.path()).first());

    let second = tuned_tiny(&file, pio_gpu::TuneMode::Auto, dir.path());
    assert_eq!(second.tuning()[0].searches, 0);
    let (a, b) = (tiles(&first), tiles(&second));
    assert!(
        b.iter().all(|t| t.2 == pio_gpu::TileSource::Cached),
        "{b:?}"
    );
    let same = |t: &[(pio_gpu::TuneKey, pio_gpu::RowTile, pio_gpu::TileSource)]| {
        t.iter().map(|t| (t.0, t.1)).collect::<Vec<_>>()
    };
    assert_eq!(same(&a), same(&b));

    // A retune searches every shape again and rewrites the file.
    let third = tuned_tiny(&file, pio_gpu::TuneMode::Retune, dir.path());
    assert_eq!(third.tuning()[0].searches, 9);
}

/// A cache file that does not parse, or holds a tile no kernel runs, is ignored and rebuilt;
/// activation succeeds either way.
#[test]
fn a_corrupt_tuning_cache_is_rebuilt() {
    let file = uniform_tiny();
    let dir = tempfile::tempdir().unwrap();
    drop(tuned_tiny(&file, pio_gpu::TuneMode::Auto, dir.path()));
    let path = cache_files(dir.path()).pop().unwrap();
    let good = std::fs::read_to_string(&path).unwrap();

    std::fs::write(&path, "{\"format\": 1, \"entries\": [tru").unwrap();
    let rebuilt = tuned_tiny(&file, pio_gpu::TuneMode::Auto, dir.path());
    assert_eq!(rebuilt.tuning()[0].searches, 9);
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["entries"].as_array().unwrap().len(), 9);
    assert_eq!(
        tuned_tiny(&file, pio_gpu::TuneMode::Auto, dir.path()).tuning()[0].searches,
        0
    );

    // A well-formed file whose decode entries hold a tile no kernel runs (a workgroup of 0):
    // those shapes are searched again, the others still read from it.
    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    let mut decode = 0;
    for entry in json["entries"].as_array_mut().unwrap() {
        if entry["tokens"] == 1 {
            entry["tile"]["workgroup_size"] = 0.into();
            decode += 1;
        }
    }
    assert_eq!(decode, 5);
    std::fs::write(&path, json.to_string()).unwrap();
    let model = tuned_tiny(&file, pio_gpu::TuneMode::Auto, dir.path());
    assert_eq!(model.tuning()[0].searches, decode);
}

/// `off` searches nothing, writes nothing, and gives every kernel the adapter class's tile.
#[test]
fn tuning_off_keeps_the_adapter_class_tiles() {
    let file = uniform_tiny();
    let dir = tempfile::tempdir().unwrap();
    let model = tuned_tiny(&file, pio_gpu::TuneMode::Off, dir.path());
    let kind = model.gpu().adapter_info().device_type;
    let report = &model.tuning()[0];
    assert_eq!(report.searches, 0);
    assert!(cache_files(dir.path()).is_empty());
    assert_eq!(report.choices.len(), 9);
    for (key, tile, source) in tiles(&model) {
        let expected = match key.tokens {
            1 => pio_gpu::RowTile::decode(kind),
            _ => pio_gpu::RowTile::prefill(kind),
        };
        assert_eq!(
            (tile, source),
            (expected, pio_gpu::TileSource::Default),
            "{key}"
        );
    }
}

/// The tuned model computes what the untuned one does: the variants only change how rows and
/// tokens are divided among invocations and, for the split reductions, the order of an f32
/// sum — the tolerance of `tiny_case` (both sides within it of the reference's same sums).
#[test]
fn tuned_logits_match_untuned() {
    let file = tiny_llama(&TinyConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let mut untuned = tuned_tiny(&file, pio_gpu::TuneMode::Off, dir.path());
    let mut tuned = tuned_tiny(&file, pio_gpu::TuneMode::Retune, dir.path());
    eprintln!("tuned tiles: {:#?}", tiles(&tuned));
    let prompt: Vec<u32> = (0..21).map(|i| (i * 37 + 5) % 290).collect();
    let a = untuned.forward(&prompt, 0, true).unwrap();
    let b = tuned.forward(&prompt, 0, true).unwrap();
    let (abs, rel) = (max_abs_diff(&a, &b), max_rel_error(&a, &b));
    assert!(abs < 1e-3 && rel < 1e-4, "prompt: max abs {abs}, rel {rel}");
    let vocab = untuned.spec().hparams.vocab_size;
    let mut next = argmax(&a[a.len() - vocab..]);
    for step in 0..6 {
        let pos = prompt.len() + step;
        let a = untuned.forward(&[next], pos, false).unwrap();
        let b = tuned.forward(&[next], pos, false).unwrap();
        let (abs, rel) = (max_abs_diff(&a, &b), max_rel_error(&a, &b));
        assert!(
            abs < 1e-3 && rel < 1e-4,
            "position {pos}: max abs {abs}, rel {rel}"
        );
        next = argmax(&a);
    }
}
