//! Log-probabilities and token sets: what a model reports when asked for log-probabilities, and
//! the set of tokens a constrained step may choose from.

/// The log-probabilities (natural log) at one position: of the token the sequence has there,
/// and of the most likely tokens there.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    /// The log-probability of the sequence's token at this position.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first, as many as asked
    /// for (ties: the lower id first).
    pub top: Vec<(u32, f32)>,
}

impl Logprobs {
    /// The log-probabilities of `chosen` and of the `top` most likely tokens under the softmax
    /// of `logits` — the model's own distribution, before temperature or any truncation.
    /// Computed in f64: a 262k-token vocabulary's sum of exponentials loses digits in f32.
    pub fn from_logits(logits: &[f32], chosen: u32, top: u32) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let log_normalizer = f64::from(max) + sum.ln();
        let logprob = |token: u32| (f64::from(logits[token as usize]) - log_normalizer) as f32;
        Self {
            logprob: logprob(chosen),
            top: top_tokens(logits, top as usize)
                .into_iter()
                .map(|token| (token, logprob(token)))
                .collect(),
        }
    }
}

/// The `n` largest of `logits`, largest first, ties to the lower id.
fn top_tokens(logits: &[f32], n: usize) -> Vec<u32> {
    let mut best: Vec<u32> = Vec::with_capacity(n + 1);
    let ahead = |a: u32, b: u32| logits[a as usize] > logits[b as usize];
    for token in 0..logits.len() as u32 {
        if best.len() == n && best.last().is_none_or(|&worst| !ahead(token, worst)) {
            continue;
        }
        let at = best.partition_point(|&kept| !ahead(token, kept));
        best.insert(at, token);
        best.truncate(n);
    }
    best
}

/// A set of token ids as a bit set: bit `t % 32` of word `t / 32` is token `t`. The word
/// layout is what a device kernel reads to mask logits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    words: Vec<u32>,
}

impl TokenSet {
    /// The set whose bits are `words`.
    pub fn from_words(words: Vec<u32>) -> Self {
        Self { words }
    }

    /// Whether `token` is in the set.
    pub fn contains(&self, token: u32) -> bool {
        self.words
            .get(token as usize / 32)
            .is_some_and(|word| word >> (token % 32) & 1 == 1)
    }

    /// The bits, 32 tokens per word.
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// How many tokens the set holds.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set holds no token.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Sets every logit of a token outside the set to −∞, so no sampler can choose it.
    pub fn mask(&self, logits: &mut [f32]) {
        for (token, logit) in logits.iter_mut().enumerate() {
            if !self.contains(token as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probabilities_match_a_direct_softmax() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let total: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let expected = |t: usize| (f64::from(logits[t]).exp() / total).ln() as f32;
        let got = Logprobs::from_logits(&logits, 2, 3);
        assert!((got.logprob - expected(2)).abs() < 1e-6);
        let ids: Vec<u32> = got.top.iter().map(|&(t, _)| t).collect();
        assert_eq!(ids, [1, 3, 0], "most likely first, ties to the lower id");
        for (token, logprob) in got.top {
            assert!((logprob - expected(token as usize)).abs() < 1e-6);
        }
        assert!(Logprobs::from_logits(&logits, 0, 0).top.is_empty());
    }

    #[test]
    fn token_sets_mask_logits() {
        let set = TokenSet::from_words(vec![0b1010, 1]);
        assert!(set.contains(1) && set.contains(3) && set.contains(32));
        assert!(!set.contains(0) && !set.contains(33) && !set.contains(1000));
        assert_eq!(set.len(), 3);
        let mut logits = vec![1.0; 34];
        set.mask(&mut logits);
        let kept: Vec<usize> = (0..34).filter(|&t| logits[t].is_finite()).collect();
        assert_eq!(kept, [1, 3, 32]);
    }
}
