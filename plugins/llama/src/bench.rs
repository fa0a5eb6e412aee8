//! The plugin's own benchmark (`{"op": "bench"}`, driven by `pio bench`): prefill speed, time
//! to first token and decode speed, measured on the same path generation takes.
//!
//! With `per_kernel`, [`profile_steps`] also times each dispatch of a decode step and of a
//! prefill step ([`GpuModel::profile_step`]) and sums them by kernel: where a step's time goes.
//!
//! Prompts are pseudo-random token ids (the speed of a forward pass does not depend on which
//! tokens it sees); decoding is greedy and ignores end-of-generation tokens so every run decodes
//! the same number of tokens.

use std::time::Instant;

use serde::Serialize;

use pio_gpu::{KernelTime, Profile};
use pio_plugin_kit::{PluginResult, Sampling, SequenceParams, TextModel};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::forward::Forward;
use crate::runtime::GpuModel;
use crate::sampler::{Sampler, SamplingParams};

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    /// Prompt lengths whose prefill is timed.
    pub prompt_lengths: Vec<usize>,
    /// Tokens decoded after a prompt of `decode_prompt` tokens.
    pub decode_tokens: usize,
    /// Prompt length before decoding starts.
    pub decode_prompt: usize,
}

/// One prefill measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PrefillRun {
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Wall time of the forward pass over the prompt, in milliseconds.
    pub prefill_ms: f64,
    /// `prompt_tokens / prefill time`.
    pub prefill_tok_s: f64,
    /// Time from the start of the prompt to the first sampled token, in milliseconds.
    pub ttft_ms: f64,
}

/// One decode measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeRun {
    /// Tokens decoded (each one forward pass of a single token plus sampling).
    pub decode_tokens: usize,
    /// Wall time of all of them, in milliseconds.
    pub decode_ms: f64,
    /// `decode_tokens / decode time`.
    pub decode_tok_s: f64,
}

/// The measurements of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    /// One entry per configured prompt length.
    pub prefill: Vec<PrefillRun>,
    /// The decode measurement.
    pub decode: DecodeRun,
}

/// Deterministic pseudo-random token ids below `vocab`.
fn prompt(len: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut state = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab as u64) as u32
        })
        .collect()
}

/// Runs one benchmark pass over `model` (its KV cache is overwritten).
pub fn bench_run<F: Forward + ?Sized>(model: &mut F, config: &BenchConfig) -> Result<BenchRun> {
    let longest = config
        .prompt_lengths
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(config.decode_prompt + config.decode_tokens);
    if longest > model.context_length() {
        return Err(Error::InvalidParams(format!(
            "the benchmark needs a context of {longest} positions, the model was activated with {}",
            model.context_length()
        )));
    }
    if config.decode_prompt == 0 || config.prompt_lengths.contains(&0) {
        return Err(Error::InvalidParams(
            "benchmark prompts need at least one token".into(),
        ));
    }
    let vocab = model.vocab_size();
    let mut greedy = Sampler::new(SamplingParams::default())?;

    let mut prefill = Vec::new();
    for (i, &len) in config.prompt_lengths.iter().enumerate() {
        let tokens = prompt(len, vocab, i as u64 + 1);
        let start = Instant::now();
        let logits = model.forward(&tokens, 0, false)?;
        let prefill_s = start.elapsed().as_secs_f64();
        greedy.sample(&logits, &tokens)?;
        let ttft_s = start.elapsed().as_secs_f64();
        prefill.push(PrefillRun {
            prompt_tokens: len,
            prefill_ms: prefill_s * 1e3,
            prefill_tok_s: len as f64 / prefill_s,
            ttft_ms: ttft_s * 1e3,
        });
    }

    let mut history = prompt(config.decode_prompt, vocab, 0);
    let mut next = model.next_token(&history, 0, &mut greedy, &history)?;
    let start = Instant::now();
    for _ in 0..config.decode_tokens {
        history.push(next);
        let pos = history.len() - 1;
        next = model.next_token(&[next], pos, &mut greedy, &history)?;
    }
    let decode_s = start.elapsed().as_secs_f64();
    Ok(BenchRun {
        prefill,
        decode: DecodeRun {
            decode_tokens: config.decode_tokens,
            decode_ms: decode_s * 1e3,
            decode_tok_s: config.decode_tokens as f64 / decode_s,
        },
    })
}

/// One batched-decode measurement.
#[derive(Debug, Clone, Serialize)]
pub struct BatchedRun {
    /// Sequences decoded together.
    pub sequences: usize,
    /// Tokens emitted by all of them.
    pub tokens: usize,
    /// Wall time of the steps (prompts excluded), in milliseconds.
    pub decode_ms: f64,
    /// `tokens / decode time`: the aggregate decode speed.
    pub aggregate_tok_s: f64,
}

/// Opens `sequences` batched sequences of `prompt_len` pseudo-random tokens and steps them
/// together, greedily, for `steps` tokens each (end-of-generation tokens do not end them, as
/// in [`bench_run`]); measures the aggregate decode speed.
pub fn bench_batched(
    engine: &mut Engine,
    sequences: usize,
    prompt_len: usize,
    steps: usize,
) -> PluginResult<BatchedRun> {
    let vocab = engine.summary().spec.hparams.vocab_size;
    let params = SequenceParams {
        sampling: Sampling::greedy(),
        max_new_tokens: u32::try_from(steps).unwrap_or(u32::MAX),
    };
    let mut open = Vec::with_capacity(sequences);
    let decoded: PluginResult<f64> = (0..sequences)
        .try_for_each(|i| {
            let prompt = prompt(prompt_len, vocab, 100 + i as u64);
            open.push(engine.open(&prompt, &params)?);
            Ok(())
        })
        .and_then(|()| {
            let start = Instant::now();
            let mut batch: Vec<_> = open.iter_mut().collect();
            for _ in 0..steps {
                engine.step_batch(&mut batch)?;
            }
            Ok(start.elapsed().as_secs_f64())
        });
    for sequence in open {
        engine.close(sequence);
    }
    let decode_s = decoded?;
    let tokens = sequences * steps;
    Ok(BatchedRun {
        sequences,
        tokens,
        decode_ms: decode_s * 1e3,
        aggregate_tok_s: tokens as f64 / decode_s,
    })
}

/// Which steps [`profile_steps`] times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileConfig {
    /// Position of the decoded token (the cache before it is attended to).
    pub decode_position: usize,
    /// Tokens of the prefill step, from position 0 (at most the model's batch size).
    pub prefill_tokens: usize,
    /// Times each step is timed; each dispatch's median is kept.
    pub repeats: usize,
}

/// One profiled step, its dispatches summed by kernel.
#[derive(Debug, Clone, Serialize)]
pub struct StepProfile {
    /// Tokens of the step.
    pub tokens: usize,
    /// Position of its first token.
    pub position: usize,
    /// Its dispatches.
    pub dispatches: usize,
    /// The sum of the dispatches' (median) times, in milliseconds.
    pub total_ms: f64,
    /// Per kernel, the most expensive first.
    pub kernels: Vec<KernelTime>,
}

/// The per-kernel profiles of a decode and a prefill step.
#[derive(Debug, Clone, Serialize)]
pub struct StepProfiles {
    /// How dispatches were timed ([`pio_gpu::TimingMethod`]).
    pub method: &'static str,
    /// Times each dispatch was timed (the median is reported).
    pub repeats: usize,
    /// One decoded token.
    pub decode: StepProfile,
    /// One prefill chunk.
    pub prefill: StepProfile,
}

/// Times each dispatch of a one-token decode step and of a prefill step of `model` (its KV
/// cache is overwritten), `config.repeats` times each, and sums the medians by kernel.
pub fn profile_steps(model: &GpuModel, config: &ProfileConfig) -> Result<StepProfiles> {
    if config.repeats == 0 || config.prefill_tokens == 0 {
        return Err(Error::InvalidParams(
            "a profile needs at least one repeat and one prefill token".into(),
        ));
    }
    let vocab = model.spec().hparams.vocab_size;
    let step = |tokens: &[u32], position: usize| -> Result<StepProfile> {
        let runs = (0..config.repeats)
            .map(|_| model.profile_step(tokens, position))
            .collect::<Result<Vec<_>>>()?;
        let median = Profile::median(&runs).ok_or_else(|| {
            Error::Numerics("a step's dispatches changed between profiled runs".into())
        })?;
        Ok(StepProfile {
            tokens: tokens.len(),
            position,
            dispatches: median.dispatches.len(),
            total_ms: median.total_ms(),
            kernels: median.by_kernel(),
        })
    };
    let prefill = step(&prompt(config.prefill_tokens, vocab, 7), 0)?;
    let decode = step(&prompt(1, vocab, 8), config.decode_position)?;
    Ok(StepProfiles {
        method: model.gpu().timing_method().as_str(),
        repeats: config.repeats,
        decode,
        prefill,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::tests::Script;

    #[test]
    fn prompts_are_deterministic_and_in_the_vocabulary() {
        let a = prompt(300, 7, 3);
        assert_eq!(a, prompt(300, 7, 3));
        assert_ne!(a, prompt(300, 7, 4));
        assert!(a.iter().all(|&t| t < 7));
        assert!((0..7).all(|t| a.contains(&t)), "covers the vocabulary");
    }

    #[test]
    fn decodes_the_configured_number_of_tokens_at_consecutive_positions() {
        let mut model = Script::new(vec![1, 2, 3, 0], 64);
        let config = BenchConfig {
            prompt_lengths: vec![5, 9],
            decode_tokens: 20,
            decode_prompt: 4,
        };
        let run = bench_run(&mut model, &config).unwrap();
        let lengths: Vec<usize> = run.prefill.iter().map(|p| p.prompt_tokens).collect();
        assert_eq!(lengths, vec![5, 9]);
        assert_eq!(run.decode.decode_tokens, 20);
        // Script checks positions are fed in order; the cache holds prompt + decoded tokens.
        assert_eq!(model.cache.len(), 4 + 20);
        // Two prefills, the decode prompt, then one call per decoded token.
        assert_eq!(model.calls, 2 + 1 + 20);
    }

    #[test]
    fn profiles_every_dispatch_of_a_decode_and_a_prefill_step() {
        let dir = tempfile::tempdir().unwrap();
        let engine = crate::test_model::tiny_engine(&dir);
        let model = engine.model();
        let config = ProfileConfig {
            decode_position: 10,
            prefill_tokens: 5,
            repeats: 3,
        };
        let p = profile_steps(model, &config).unwrap();
        assert_eq!(p.repeats, 3);
        assert_eq!((p.decode.tokens, p.decode.position), (1, 10));
        assert_eq!((p.prefill.tokens, p.prefill.position), (5, 0));
        // The sampling kernel ends both steps, as in generation.
        assert_eq!(p.decode.dispatches, model.dispatches_per_token());
        assert_eq!(p.prefill.dispatches, model.dispatches_per_token());
        for step in [&p.decode, &p.prefill] {
            let calls: usize = step.kernels.iter().map(|k| k.calls).sum();
            assert_eq!(calls, step.dispatches);
            let shares: f64 = step.kernels.iter().map(|k| k.share).sum();
            assert!((shares - 1.0).abs() < 1e-9, "{shares}");
            assert!(step.kernels.iter().any(|k| k.kernel == "attention"));
        }
        let too_long = ProfileConfig {
            prefill_tokens: model.max_batch() + 1,
            ..config
        };
        assert!(profile_steps(model, &too_long).is_err());
    }

    #[test]
    fn a_context_too_small_for_the_benchmark_is_an_error() {
        let mut model = Script::new(vec![1, 2, 3, 0], 16);
        let config = BenchConfig {
            prompt_lengths: vec![32],
            decode_tokens: 4,
            decode_prompt: 4,
        };
        let err = bench_run(&mut model, &config).unwrap_err().to_string();
        assert!(err.contains("context of 32"), "{err}");
    }
}
