//! Perplexity of a model over a token sequence, in two ways of forming windows: this project's
//! plain one ([`perplexity`]: every token scored once) and llama.cpp's `llama-perplexity`
//! ([`perplexity_llama_cpp`]: only the second half of each window scored), so numbers can be
//! compared with those llama.cpp users publish.

use crate::error::{Error, Result};
use crate::forward::Forward;

/// The outcome of [`perplexity`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// `exp(mean negative log-likelihood)` over the scored tokens.
    pub perplexity: f64,
    /// Mean negative log-likelihood (nats per token).
    pub mean_nll: f64,
    /// Number of tokens scored.
    pub scored_tokens: usize,
    /// Number of windows evaluated.
    pub windows: usize,
}

/// Perplexity of `model` on `tokens` with windows of `window` tokens.
///
/// Windows are formed like this:
/// - `tokens` is cut into consecutive, **non-overlapping** chunks of `window - 1` tokens if `bos`
///   is given, or `window` tokens otherwise (the last chunk may be shorter);
/// - each window is evaluated from an empty context (KV cache positions start at 0): the chunk,
///   preceded by `bos` when given (pass the model's BOS id when its tokenizer adds one);
/// - within a window, every token but the first is scored: the logits at position `i` give the
///   probability of the token at position `i + 1`. So with `bos` every token of `tokens` is
///   scored once (the first token of each chunk is predicted from BOS alone); without it the
///   first token of each chunk is not scored.
///
/// The result is `exp` of the mean of `-ln p(token)` over all scored tokens, with the softmax
/// computed in f64. Fails if `window < 2`, if `window` exceeds the model's context, or if no token
/// can be scored.
pub fn perplexity<F: Forward + ?Sized>(
    model: &mut F,
    tokens: &[u32],
    window: usize,
    bos: Option<u32>,
) -> Result<Perplexity> {
    if window < 2 || window > model.context_length() {
        return Err(Error::InvalidParams(format!(
            "perplexity window must be in 2..={}, got {window}",
            model.context_length()
        )));
    }
    let vocab = model.vocab_size();
    let chunk_len = window - usize::from(bos.is_some());
    let (mut nll, mut scored, mut windows) = (0.0f64, 0usize, 0usize);
    for chunk in tokens.chunks(chunk_len) {
        let input: Vec<u32> = bos.into_iter().chain(chunk.iter().copied()).collect();
        if input.len() < 2 {
            continue;
        }
        let logits = model.forward(&input, 0, true)?;
        for (i, &target) in input.iter().enumerate().skip(1) {
            let row = &logits[(i - 1) * vocab..i * vocab];
            nll -= log_softmax_at(row, target as usize);
            scored += 1;
        }
        windows += 1;
    }
    if scored == 0 {
        return Err(Error::InvalidParams(
            "perplexity needs at least one token to score".into(),
        ));
    }
    let mean_nll = nll / scored as f64;
    Ok(Perplexity {
        perplexity: mean_nll.exp(),
        mean_nll,
        scored_tokens: scored,
        windows,
    })
}

/// How [`crate::engine::Engine::perplexity`] forms windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// [`perplexity`].
    Plain,
    /// [`perplexity_llama_cpp`].
    LlamaCpp,
}

impl Style {
    /// The style a name (`plain`, `llama.cpp`) stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "plain" => Some(Style::Plain),
            "llama.cpp" => Some(Style::LlamaCpp),
            _ => None,
        }
    }
}

/// Perplexity of `model` on `tokens` the way llama.cpp's `llama-perplexity` computes it.
///
/// `tokens` is the text tokenized as the model's tokenizer does with its special tokens (BOS
/// first when the model adds one). It is cut into `tokens.len() / ctx` whole chunks of `ctx`
/// tokens (the rest is dropped); each chunk is evaluated from an empty context with its first
/// token replaced by `bos` when given; only the second half is scored: the logits at positions
/// `ctx/2 ..= ctx-2` give the probabilities of the tokens after them, `ctx - ctx/2 - 1` per
/// chunk. PPL = exp(mean negative log-probability). Like llama.cpp, it needs at least two
/// chunks (`2 * ctx` tokens); `ctx` must be at least 4 and fit the model's context.
pub fn perplexity_llama_cpp<F: Forward + ?Sized>(
    model: &mut F,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
) -> Result<Perplexity> {
    if ctx < 4 || ctx > model.context_length() {
        return Err(Error::InvalidParams(format!(
            "llama.cpp-style perplexity needs --ctx in 4..={}, got {ctx}",
            model.context_length()
        )));
    }
    if tokens.len() < 2 * ctx {
        return Err(Error::InvalidParams(format!(
            "llama.cpp-style perplexity needs at least 2 * ctx = {} tokens, the text has {}",
            2 * ctx,
            tokens.len()
        )));
    }
    let vocab = model.vocab_size();
    let first = ctx / 2;
    let (mut nll, mut scored, mut windows) = (0.0f64, 0usize, 0usize);
    for chunk in tokens.chunks_exact(ctx) {
        let mut input = chunk.to_vec();
        if let Some(bos) = bos {
            input[0] = bos;
        }
        let logits = model.forward(&input, 0, true)?;
        for i in first..ctx - 1 {
            nll -= log_softmax_at(&logits[i * vocab..(i + 1) * vocab], input[i + 1] as usize);
            scored += 1;
        }
        windows += 1;
    }
    let mean_nll = nll / scored as f64;
    Ok(Perplexity {
        perplexity: mean_nll.exp(),
        mean_nll,
        scored_tokens: scored,
        windows,
    })
}

/// `ln softmax(row)[index]`, stable (max-subtracted) in f64.
fn log_softmax_at(row: &[f32], index: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[index] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::tests::Script;
    use crate::reference::ReferenceModel;
    use crate::runtime::GpuModel;
    use pio_gpu::testing::gpu as test_gpu;

    use crate::test_model::{tiny_llama, TinyConfig};

    #[test]
    fn counts_windows_and_scored_tokens() {
        // The script puts logit 10 on next[t] and 0 elsewhere over a vocabulary of 4.
        let mut m = Script::new(vec![1, 2, 3, 0], 16);
        let tokens = [0, 1, 2, 3, 0, 1, 2];
        // Without BOS: chunks [0 1 2] [3 0 1] [2]; the last has nothing to score.
        let p = perplexity(&mut m, &tokens, 3, None).unwrap();
        assert_eq!((p.windows, p.scored_tokens), (2, 4));
        // Every scored token is the predicted one: p = e^10 / (e^10 + 3).
        let expect = -(10f64 - (10f64.exp() + 3.0).ln());
        assert!((p.mean_nll - expect).abs() < 1e-9, "{}", p.mean_nll);
        // With BOS (token 3, which predicts 0): chunks [0 1] [2 3] [0 1] [2], every token
        // scored; the two chunks starting with 2 have it mispredicted (nll 10 more).
        let p = perplexity(&mut m, &tokens, 3, Some(3)).unwrap();
        assert_eq!((p.windows, p.scored_tokens), (4, 7));
        let with_misses = (7.0 * expect + 2.0 * 10.0) / 7.0;
        assert!((p.mean_nll - with_misses).abs() < 1e-9, "{}", p.mean_nll);
    }

    #[test]
    fn llama_cpp_style_scores_the_second_half_of_whole_windows() {
        // As above: logit 10 on next[t] = t + 1 mod 4. Windows of 4 over 11 tokens: two whole
        // windows [0 1 2 3] [0 1 2 3], the rest dropped; positions 2..=2 are scored, i.e. the
        // last token of each window: one per window.
        let mut m = Script::new(vec![1, 2, 3, 0], 16);
        let tokens = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2];
        let hit = -(10f64 - (10f64.exp() + 3.0).ln());
        let p = perplexity_llama_cpp(&mut m, &tokens, 4, None).unwrap();
        assert_eq!((p.windows, p.scored_tokens), (2, 2));
        assert!((p.mean_nll - hit).abs() < 1e-9, "{}", p.mean_nll);
        // Windows of 6 need 12 tokens: one whole window is refused, as llama.cpp does.
        assert!(perplexity_llama_cpp(&mut m, &tokens, 6, Some(2)).is_err());
        // Windows of 5 with BOS 1 replacing each first token: [1 1 2 3 0] [1 2 3 0 1]; positions
        // 2 and 3 are scored in each, all hits (the replaced token is never scored).
        let p = perplexity_llama_cpp(&mut m, &tokens, 5, Some(1)).unwrap();
        assert_eq!((p.windows, p.scored_tokens), (2, 4));
        assert!((p.mean_nll - hit).abs() < 1e-9, "{}", p.mean_nll);
        assert!(perplexity_llama_cpp(&mut m, &tokens, 3, None).is_err());
        assert_eq!(Style::from_name("llama.cpp"), Some(Style::LlamaCpp));
        assert_eq!(Style::from_name("llama"), None);
    }

    #[test]
    fn uniform_logits_give_vocabulary_size() {
        struct Uniform;
        impl Forward for Uniform {
            fn vocab_size(&self) -> usize {
                50
            }
            fn context_length(&self) -> usize {
                8
            }
            fn forward(&mut self, t: &[u32], _: usize, all: bool) -> Result<Vec<f32>> {
                Ok(vec![0.5; if all { t.len() } else { 1 } * 50])
            }
        }
        let p = perplexity(&mut Uniform, &[1, 2, 3, 4, 5], 4, None).unwrap();
        assert!((p.perplexity - 50.0).abs() < 1e-9);
        assert!(perplexity(&mut Uniform, &[1, 2], 9, None).is_err());
        assert!(perplexity(&mut Uniform, &[1], 4, None).is_err());
    }

    #[test]
    fn gpu_and_reference_perplexity_agree_on_tiny_model() {
        let file = tiny_llama(&TinyConfig::default());
        let tokens: Vec<u32> = (0..50).map(|i| (i * 13 + 3) % 299).collect();
        let mut reference = ReferenceModel::load(&file, 32).unwrap();
        let mut gpu = GpuModel::new(test_gpu(), &file, 32, 16).unwrap();
        let r = perplexity(&mut reference, &tokens, 20, Some(1)).unwrap();
        let g = perplexity(&mut gpu, &tokens, 20, Some(1)).unwrap();
        eprintln!(
            "tiny perplexity: reference {}, GPU {}",
            r.perplexity, g.perplexity
        );
        assert_eq!(g.scored_tokens, 50);
        assert!((r.perplexity - g.perplexity).abs() < 1e-3 * r.perplexity);
        // Random weights predict badly: far above a perfect 1.
        assert!(r.perplexity > 20.0, "{}", r.perplexity);
    }
}
