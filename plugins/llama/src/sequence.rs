//! The Llama plugin's sequences: a prompt's continuation, one token per step.
//!
//! A sequence samples its first token when it is opened (the prompt's prefill ends with it);
//! its first step returns that token, and every later step feeds the last returned token back
//! and samples the next. The last token is thus never fed: the kit may end the sequence on it,
//! and a prompt that fills the context still gets one token.
//!
//! Where a sequence's keys and values live decides how it runs:
//! - [`Sequence::Alone`] (`generate`, `chat`): the model's own KV cache, sampled on the device
//!   ([`Forward::next_token`]): one submission and a 4-byte read-back per token;
//! - [`Sequence::Batched`] (batched sequences): blocks of the shared block pool, decoded
//!   together with the other batched sequences and sampled on the host ([`crate::batch`]).
//!
//! Both sample with the same seeded [`Sampler`] rules, so a request gives the same tokens
//! either way (tested).

use crate::batch::Batched;
use crate::error::Result;
use crate::forward::Forward;
use crate::runtime::GpuModel;
use crate::sampler::Sampler;
use pio_plugin_kit::{Logprobs, StepOptions};

/// One open sequence of the Llama plugin.
pub enum Sequence {
    /// Stepped alone, in the model's own cache.
    Alone(Tokens),
    /// Stepped in batches, in blocks of the batched sequences' pool.
    Batched(Batched),
}

/// What every sequence keeps to continue its prompt.
pub struct Tokens {
    pub(crate) sampler: Sampler,
    /// The prompt and every token returned so far (the repetition penalty's history).
    pub(crate) history: Vec<u32>,
    /// The token sampled at opening, until the first step returns it.
    pub(crate) first: Option<u32>,
}

impl Tokens {
    /// A sequence of `prompt` whose first token, sampled by `sampler`, is `first`.
    pub(crate) fn new(sampler: Sampler, prompt: &[u32], first: u32) -> Self {
        Self {
            first: Some(first),
            ..Self::unsampled(sampler, prompt)
        }
    }

    /// A sequence of `prompt` whose first token is still to be chosen.
    pub(crate) fn unsampled(sampler: Sampler, prompt: &[u32]) -> Self {
        Self {
            sampler,
            history: prompt.to_vec(),
            first: None,
        }
    }

    /// Chooses the next token from `logits` under `options` and appends it: the sampler sees
    /// the logits with every token outside `options.allowed` masked to −∞; the log-probabilities
    /// asked for are those of the unmasked row (the model's own distribution).
    pub(crate) fn choose(
        &mut self,
        logits: &[f32],
        options: &StepOptions<'_>,
    ) -> Result<(u32, Option<Logprobs>)> {
        let token = match options.allowed {
            Some(allowed) => {
                let mut masked = logits.to_vec();
                allowed.mask(&mut masked);
                self.sampler.sample(&masked, &self.history)?
            }
            None => self.sampler.sample(logits, &self.history)?,
        };
        let logprobs = options
            .logprobs
            .map(|top| Logprobs::from_logits(logits, token, top));
        self.history.push(token);
        Ok((token, logprobs))
    }

    /// The position of the last returned token: where it is fed to sample the next one.
    pub(crate) fn last_position(&self) -> usize {
        self.history.len() - 1
    }

    /// The last returned token.
    pub(crate) fn last(&self) -> u32 {
        self.history[self.last_position()]
    }

    /// Opens a sequence alone: processes `prompt` into the model's own cache (from position 0)
    /// and samples its first token on the device.
    pub fn open_alone(model: &mut GpuModel, prompt: &[u32], mut sampler: Sampler) -> Result<Self> {
        let first = model.next_token(prompt, 0, &mut sampler, prompt)?;
        Ok(Self::new(sampler, prompt, first))
    }

    /// The next token of a sequence opened with [`Tokens::open_alone`].
    pub fn step_alone(&mut self, model: &mut GpuModel) -> Result<u32> {
        let token = match self.first.take() {
            Some(first) => first,
            None => model.next_token(
                &[self.last()],
                self.last_position(),
                &mut self.sampler,
                &self.history,
            )?,
        };
        self.history.push(token);
        Ok(token)
    }
}
