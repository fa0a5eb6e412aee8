//! What the GPU model and the CPU reference have in common: a causal language model with a KV
//! cache, seen as a function from tokens to logits. Perplexity, the benchmark and the tests
//! that compare the two run over any [`Forward`].

use crate::error::Result;
use crate::sampler::Sampler;

/// A causal language model with a KV cache, seen as a function from tokens to logits.
pub trait Forward {
    /// Number of logits per position.
    fn vocab_size(&self) -> usize;

    /// Number of positions the KV cache holds.
    fn context_length(&self) -> usize;

    /// Runs `tokens` at positions `start_pos..start_pos + tokens.len()`, attending to the cached
    /// keys and values of positions `0..start_pos` (written by earlier calls) and overwriting the
    /// cache from `start_pos` on.
    ///
    /// Returns the logits of every processed position (`tokens.len() * vocab_size` values, row
    /// per position) when `all_logits` is set, otherwise only those of the last position.
    fn forward(&mut self, tokens: &[u32], start_pos: usize, all_logits: bool) -> Result<Vec<f32>>;

    /// Runs `tokens` like [`Forward::forward`] and picks the token that follows the last one
    /// with `sampler`, `history` being every token seen so far (for the repetition penalty).
    ///
    /// The default reads the logits back and samples on the CPU; a model that can sample where
    /// its logits are (on the device) overrides it and returns only the token id.
    fn next_token(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        sampler: &mut Sampler,
        history: &[u32],
    ) -> Result<u32> {
        let logits = self.forward(tokens, start_pos, false)?;
        sampler.sample(&logits, history)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic fake model: the next token is a fixed function of the previous one, and
    /// it checks what it is fed so that cache misuse shows up.
    pub(crate) struct Script {
        /// `next[t]` is the token the model predicts after token `t`.
        pub next: Vec<u32>,
        pub context: usize,
        /// Tokens at each cached position, to check callers feed positions in order.
        pub cache: Vec<u32>,
        pub calls: usize,
    }

    impl Script {
        pub fn new(next: Vec<u32>, context: usize) -> Self {
            Script {
                next,
                context,
                cache: Vec::new(),
                calls: 0,
            }
        }
    }

    impl Forward for Script {
        fn vocab_size(&self) -> usize {
            self.next.len()
        }
        fn context_length(&self) -> usize {
            self.context
        }
        fn forward(&mut self, tokens: &[u32], start: usize, all: bool) -> Result<Vec<f32>> {
            assert!(start <= self.cache.len(), "gap in the KV cache");
            assert!(start + tokens.len() <= self.context, "past the context");
            self.calls += 1;
            self.cache.truncate(start);
            self.cache.extend_from_slice(tokens);
            let rows: Vec<Vec<f32>> = tokens
                .iter()
                .map(|&t| {
                    let mut l = vec![0.0; self.next.len()];
                    l[self.next[t as usize] as usize] = 10.0;
                    l
                })
                .collect();
            Ok(if all {
                rows.concat()
            } else {
                rows.last().unwrap().clone()
            })
        }
    }
}
