//! Token sampling from a logits vector: greedy decoding and seeded stochastic sampling with
//! repetition penalty, top-k, top-p, min-p and temperature.
//!
//! The transforms follow llama.cpp's default sampler chain and semantics, applied in this order:
//!
//! 1. **repetition penalty** over the last [`SamplingParams::repeat_last_n`] tokens of the
//!    history (prompt and generated tokens): every distinct token seen there has its logit divided
//!    by the penalty when positive and multiplied by it when negative;
//! 2. **top-k**: keep the `k` highest logits (`0` disables);
//! 3. **top-p** (nucleus): keep the smallest set of most likely tokens whose probabilities add up
//!    to at least `p` (`1.0` disables);
//! 4. **min-p**: keep tokens whose probability is at least `min_p` times the top token's (`0`
//!    disables);
//! 5. **temperature**: divide the remaining logits by it, then draw from their softmax.
//!
//! Probabilities in steps 3 and 4 are computed from the logits *before* temperature, as llama.cpp
//! does. A temperature of `0` means greedy decoding: after the repetition penalty, the token with the
//! highest logit is chosen (the lowest id on exact ties) and the other filters are irrelevant.

use std::time::{SystemTime, UNIX_EPOCH};

use pio_gpu::SampleSettings;
use pio_plugin_kit::Sampling;

use crate::error::{Error, Result};

/// Number of most recent tokens the repetition penalty looks at by default (llama.cpp's default).
pub const DEFAULT_REPEAT_LAST_N: usize = 64;

/// Sampling parameters; see the [module documentation](self) for their exact meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` selects greedy decoding. Must be finite and `>= 0`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables the filter.
    pub top_k: usize,
    /// Nucleus threshold in `(0, 1]`; `1` disables the filter.
    pub top_p: f32,
    /// Relative probability floor in `[0, 1]`; `0` disables the filter.
    pub min_p: f32,
    /// Repetition penalty, finite and `> 0`; `1` disables it.
    pub repetition_penalty: f32,
    /// How many of the most recent history tokens the repetition penalty considers.
    pub repeat_last_n: usize,
    /// Seed of the random generator; the same seed, parameters and logits give the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy decoding without any penalty.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: DEFAULT_REPEAT_LAST_N,
            seed: 0,
        }
    }
}

impl From<&Sampling> for SamplingParams {
    /// A request's sampling with llama.cpp's repetition window; without a seed, one is drawn
    /// from the clock.
    fn from(sampling: &Sampling) -> Self {
        let seed = sampling.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        SamplingParams {
            temperature: sampling.temperature,
            top_k: sampling.top_k as usize,
            top_p: sampling.top_p,
            min_p: sampling.min_p,
            repetition_penalty: sampling.repetition_penalty,
            repeat_last_n: DEFAULT_REPEAT_LAST_N,
            seed,
        }
    }
}

impl SamplingParams {
    /// Checks every parameter's range, naming the first invalid one.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidParams(msg));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return invalid(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return invalid(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return invalid(format!(
                "repetition_penalty must be a finite number > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }

    /// Whether these parameters select greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// SplitMix64: a tiny, well-distributed generator whose output depends only on its seed, so
/// sampled sequences are reproducible across platforms and dependency versions.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A stateful sampler: validated parameters plus the seeded random generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    /// Validates `params` and seeds the generator with `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = SplitMix64(params.seed);
        Ok(Sampler { params, rng })
    }

    /// Picks the next token from `logits` (one value per vocabulary id), given the `history` of
    /// tokens seen so far (prompt and generated) for the repetition penalty.
    ///
    /// Fails if `logits` is empty or contains NaN.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::Numerics("empty logits vector".into()));
        }
        if let Some(i) = logits.iter().position(|v| v.is_nan()) {
            return Err(Error::Numerics(format!("logit of token {i} is NaN")));
        }
        let mut logits = logits.to_vec();
        let penalized = self.penalized_ids(history);
        apply_repetition_penalty(&mut logits, &penalized, self.params.repetition_penalty);
        if self.params.is_greedy() {
            return Ok(argmax(&logits));
        }
        let candidates = self.filtered_candidates(&logits);
        Ok(self.draw(&candidates))
    }

    /// What the device needs to make the same choice as [`Sampler::sample`] (see
    /// `pio_gpu::DeviceSampler`): the settings, with the random number drawn exactly as `sample`
    /// would draw it, and the distinct ids the repetition penalty applies to.
    pub fn device_settings(&mut self, history: &[u32]) -> (SampleSettings, Vec<u32>) {
        let p = &self.params;
        let greedy = p.is_greedy();
        // The largest f32 below 1: rounding must not turn u into 1.
        let below_one = 1.0 - f32::EPSILON / 2.0;
        let mut settings = SampleSettings {
            greedy,
            temperature: p.temperature,
            top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            uniform: 0.0,
        };
        if !greedy {
            settings.uniform = (self.rng.next_f64() as f32).min(below_one);
        }
        (settings, self.penalized_ids(history))
    }

    /// The distinct ids of the repetition penalty's window of `history` (none without penalty).
    fn penalized_ids(&self, history: &[u32]) -> Vec<u32> {
        if self.params.repetition_penalty == 1.0 {
            return Vec::new();
        }
        let window = &history[history.len().saturating_sub(self.params.repeat_last_n)..];
        let mut ids = window.to_vec();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Applies top-k, top-p and min-p; returns the surviving `(id, logit)` pairs sorted by
    /// descending logit (ties by ascending id). Never empty.
    fn filtered_candidates(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let by_logit_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0));
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let k = self.params.top_k;
        if k > 0 && k < cands.len() {
            cands.select_nth_unstable_by(k - 1, by_logit_desc);
            cands.truncate(k);
        }
        cands.sort_unstable_by(by_logit_desc);

        let probs = softmax(cands.iter().map(|c| c.1));
        if self.params.top_p < 1.0 {
            let mut cum = 0.0f64;
            let mut keep = cands.len();
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep);
        }
        if self.params.min_p > 0.0 {
            let floor = probs[0] * self.params.min_p as f64;
            let keep = probs[..cands.len()]
                .iter()
                .take_while(|&&p| p >= floor)
                .count()
                .max(1);
            cands.truncate(keep);
        }
        cands
    }

    /// Draws one candidate from the temperature-scaled softmax: the first, in id order, at
    /// which the cumulative probability passes a uniform random number. (Id order, not
    /// probability order, is what the device sampler can walk without sorting; with it the
    /// same seed picks the same token on both.)
    fn draw(&mut self, cands: &[(u32, f32)]) -> u32 {
        let t = self.params.temperature;
        let probs = softmax(cands.iter().map(|c| c.1 / t));
        let mut by_id: Vec<(u32, f64)> = cands.iter().map(|c| c.0).zip(probs).collect();
        by_id.sort_unstable_by_key(|c| c.0);
        let u = self.rng.next_f64();
        let mut cum = 0.0;
        for &(id, p) in &by_id {
            cum += p;
            if u < cum {
                return id;
            }
        }
        // Rounding can leave the total a hair below 1; the last candidate takes the remainder.
        by_id[by_id.len() - 1].0
    }
}

/// llama.cpp's repetition penalty: each of the distinct tokens `ids` has its logit divided by
/// `penalty` if positive, multiplied by it otherwise.
fn apply_repetition_penalty(logits: &mut [f32], ids: &[u32], penalty: f32) {
    for &id in ids {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest value; the first one on ties.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Numerically stable softmax in f64 (max-subtracted).
fn softmax(logits: impl Iterator<Item = f32> + Clone) -> Vec<f64> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.map(|l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..SamplingParams::default()
        }
    }

    /// Draw `n` samples and count how often each id appears.
    fn histogram(p: SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = Sampler::new(p).unwrap();
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits, &[]).unwrap() as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_picks_argmax_and_first_on_ties() {
        let mut s = Sampler::new(params(0.0)).unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9], &[]).unwrap(), 1);
        assert_eq!(s.sample(&[3.0, 1.0, 3.0], &[]).unwrap(), 0);
        assert_eq!(s.sample(&[-5.0, -2.0, -3.0], &[]).unwrap(), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut l = vec![2.0, -1.0, 0.5, 3.0];
        apply_repetition_penalty(&mut l, &[0, 1, 9], 2.0);
        assert_eq!(l, vec![1.0, -2.0, 0.5, 3.0]);
        // Greedy decoding sees the penalised logits: 3.0 vs 4.0/2 for token 0.
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..params(0.0)
        };
        let mut s = Sampler::new(p).unwrap();
        assert_eq!(s.sample(&[4.0, 3.0], &[0]).unwrap(), 1);
        assert_eq!(s.sample(&[4.0, 3.0], &[1]).unwrap(), 0);
        // A token repeated in the window is penalized once.
        assert_eq!(s.sample(&[4.0, 2.5], &[0, 0, 0]).unwrap(), 1);
        assert_eq!(s.penalized_ids(&[5, 0, 5, 0]), vec![0, 5]);
    }

    #[test]
    fn repetition_penalty_only_looks_at_recent_window() {
        let p = SamplingParams {
            repetition_penalty: 10.0,
            repeat_last_n: 2,
            ..params(0.0)
        };
        let mut s = Sampler::new(p).unwrap();
        // Token 0 was seen 3 tokens ago: outside the window, so not penalised.
        assert_eq!(s.sample(&[4.0, 3.0], &[0, 2, 2]).unwrap(), 0);
        assert_eq!(s.sample(&[4.0, 3.0], &[2, 0]).unwrap(), 1);
    }

    #[test]
    fn top_k_keeps_k_best() {
        let logits = [1.0, 3.0, 2.0, 0.0];
        let p = SamplingParams {
            top_k: 2,
            ..params(1.0)
        };
        let counts = histogram(p, &logits, 2000);
        assert_eq!(counts[0] + counts[3], 0);
        // p(1) = e^3 / (e^3 + e^2) ≈ 0.731.
        let f = counts[1] as f64 / 2000.0;
        assert!((f - 0.731).abs() < 0.04, "frequency {f}");
    }

    #[test]
    fn top_p_keeps_smallest_nucleus() {
        // Probabilities 0.5, 0.3, 0.2 (logits are their logs).
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let s = Sampler::new(SamplingParams {
            top_p: 0.79,
            ..params(1.0)
        })
        .unwrap();
        let ids: Vec<u32> = s.filtered_candidates(&logits).iter().map(|c| c.0).collect();
        assert_eq!(ids, vec![0, 1]);
        let s = Sampler::new(SamplingParams {
            top_p: 0.81,
            ..params(1.0)
        })
        .unwrap();
        assert_eq!(s.filtered_candidates(&logits).len(), 3);
        let s = Sampler::new(SamplingParams {
            top_p: 0.4,
            ..params(1.0)
        })
        .unwrap();
        assert_eq!(s.filtered_candidates(&logits).len(), 1);
    }

    #[test]
    fn min_p_drops_tokens_below_fraction_of_best() {
        // Probabilities 0.5, 0.3, 0.2: min_p 0.5 keeps p >= 0.25.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let s = Sampler::new(SamplingParams {
            min_p: 0.5,
            ..params(1.0)
        })
        .unwrap();
        let ids: Vec<u32> = s.filtered_candidates(&logits).iter().map(|c| c.0).collect();
        assert_eq!(ids, vec![0, 1]);
    }

    #[test]
    fn temperature_sampling_matches_softmax_frequencies() {
        // At temperature 0.5 the logits [ln 2, 0] become probabilities 4/5 and 1/5.
        let logits = [2f32.ln(), 0.0];
        let counts = histogram(params(0.5), &logits, 5000);
        let f = counts[0] as f64 / 5000.0;
        assert!((f - 0.8).abs() < 0.025, "frequency {f}");
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params(1.0)
            })
            .unwrap();
            (0..64)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn invalid_params_are_rejected_with_named_field() {
        let cases = [
            (params(-0.1), "temperature"),
            (params(f32::NAN), "temperature"),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..params(1.0)
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..params(1.0)
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: -0.1,
                    ..params(1.0)
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..params(1.0)
                },
                "repetition_penalty",
            ),
        ];
        for (p, field) in cases {
            let err = Sampler::new(p).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn nan_logits_are_an_error() {
        let mut s = Sampler::new(params(0.0)).unwrap();
        let err = s.sample(&[0.0, f32::NAN], &[]).unwrap_err().to_string();
        assert!(err.contains("NaN"), "{err}");
    }
}
