//! Batched generation's bookkeeping: the sequences the host has opened, each a model sequence
//! and its [`Decoding`], advanced together by one token per step — under a grammar and with
//! log-probabilities where the sequence asked for them.
//!
//! A step is checked as a whole before anything changes (unknown, finished or repeated ids fail
//! it and leave every sequence as it was), and a sequence is freed only when the host closes it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use pio_plugin_api::{
    abi_stable::std_types::ROption, Constraint, PluginError, PluginResult, PositionLogprobs,
    SequenceStep, TokenLogprob,
};

use crate::{
    decoding::Decoding,
    guide::{Grammars, Guide},
    Logprobs, Model, Next, StepOptions, TextModel, TokenSet, Tokenizer,
};

/// The decoder type of model `M`'s sequences.
type DecoderOf<M> = <<M as Model>::Tokenizer as Tokenizer>::Decoder;

/// One open sequence.
pub(crate) struct Open<M: TextModel> {
    pub(crate) sequence: M::Sequence,
    pub(crate) decoding: Decoding<DecoderOf<M>>,
    /// What the sequence reports and obeys beyond its tokens.
    pub(crate) extras: Extras,
}

/// A sequence's grammar and log-probabilities, when it asked for them.
#[derive(Default)]
pub(crate) struct Extras {
    /// The grammar its text must match.
    pub(crate) guide: Option<Guide>,
    /// How many most likely tokens to report with each token's log-probability; `None`: no
    /// log-probabilities.
    pub(crate) logprobs: Option<u32>,
    /// Log-probabilities of generated tokens the host has not collected yet.
    pub(crate) unread: Vec<PositionLogprobs>,
}

/// The open sequences of one active model.
pub(crate) struct Sequences<M: TextModel> {
    next_id: u64,
    open: BTreeMap<u64, Open<M>>,
    /// The most sequences one step has carried: tests read it to prove batching happened.
    largest_step: usize,
    /// The grammar compiler for the model's vocabulary, built at the first constrained
    /// sequence.
    grammars: Option<Grammars>,
    /// Grammar masks computed since activation, and the time they took: what constrained
    /// decoding adds to a step.
    masks: u64,
    mask_time: Duration,
}

impl<M: TextModel> Default for Sequences<M> {
    fn default() -> Self {
        Self {
            next_id: 0,
            open: BTreeMap::new(),
            largest_step: 0,
            grammars: None,
            masks: 0,
            mask_time: Duration::ZERO,
        }
    }
}

impl<M: TextModel> Sequences<M> {
    /// Adds a sequence and returns its id.
    pub(crate) fn open(&mut self, open: Open<M>) -> u64 {
        self.next_id += 1;
        self.open.insert(self.next_id, open);
        self.next_id
    }

    /// Generates one token for each sequence of `ids`, in that order, in one
    /// [`TextModel::step_with`].
    pub(crate) fn step(&mut self, model: &mut M, ids: &[u64]) -> PluginResult<Vec<SequenceStep>> {
        for (position, id) in ids.iter().enumerate() {
            let open = self.open.get(id).ok_or_else(|| unknown(*id))?;
            if let Some(finish) = open.decoding.finish() {
                return Err(PluginError::invalid_input(format!(
                    "sequence {id} has finished ({}); close it",
                    finish.as_str()
                )));
            }
            if ids[..position].contains(id) {
                return Err(PluginError::invalid_input(format!(
                    "sequence {id} appears twice in one step"
                )));
            }
        }
        self.largest_step = self.largest_step.max(ids.len());

        // The map hands out its entries in id order; the batch follows the host's order.
        let mut batch: Vec<(usize, &mut Open<M>)> = self
            .open
            .iter_mut()
            .filter_map(|(id, open)| Some((ids.iter().position(|i| i == id)?, open)))
            .collect();
        batch.sort_unstable_by_key(|(position, _)| *position);
        let mut batch: Vec<&mut Open<M>> = batch.into_iter().map(|(_, open)| open).collect();

        let started = Instant::now();
        let allowed: Vec<Option<TokenSet>> = batch
            .iter_mut()
            .map(|open| open.extras.guide.as_mut().map(Guide::allowed).transpose())
            .collect::<PluginResult<_>>()?;
        let masks = allowed.iter().flatten().count() as u64;
        if masks > 0 {
            self.masks += masks;
            self.mask_time += started.elapsed();
        }
        let options: Vec<StepOptions<'_>> = batch
            .iter()
            .zip(&allowed)
            .map(|(open, allowed)| StepOptions {
                allowed: allowed.as_ref(),
                logprobs: open.extras.logprobs,
            })
            .collect();
        let mut sequences: Vec<&mut M::Sequence> =
            batch.iter_mut().map(|open| &mut open.sequence).collect();
        let sampled = model.step_with(&mut sequences, &options)?;
        if sampled.len() != ids.len() {
            return Err(PluginError::internal(format!(
                "the model's step returned {} tokens for {} sequences",
                sampled.len(),
                ids.len()
            )));
        }
        ids.iter()
            .zip(batch)
            .zip(allowed)
            .zip(sampled)
            .map(|(((&id, open), allowed), sampled)| {
                let next = open.extras.follow(model.tokenizer(), sampled, allowed)?;
                let (event, finish) = open.decoding.accept(next)?;
                Ok(SequenceStep {
                    id,
                    event,
                    finish: ROption::from(finish),
                })
            })
            .collect()
    }

    /// A guide through `constraint` for a new sequence of `model`.
    pub(crate) fn guide(&mut self, model: &M, constraint: &Constraint) -> PluginResult<Guide> {
        let grammars = match &mut self.grammars {
            Some(grammars) => grammars,
            empty => empty.insert(Grammars::new(model.tokenizer())?),
        };
        grammars.guide(constraint)
    }

    /// Takes the log-probabilities sequence `id` reported since the last call.
    pub(crate) fn take_logprobs(&mut self, id: u64) -> PluginResult<Vec<PositionLogprobs>> {
        let open = self.open.get_mut(&id).ok_or_else(|| unknown(id))?;
        if open.extras.logprobs.is_none() {
            return Err(PluginError::invalid_input(format!(
                "sequence {id} was opened without log-probabilities"
            )));
        }
        Ok(std::mem::take(&mut open.extras.unread))
    }

    /// Removes sequence `id`, finished or not.
    pub(crate) fn close(&mut self, id: u64) -> PluginResult<Open<M>> {
        self.open.remove(&id).ok_or_else(|| unknown(id))
    }

    /// Sequences open now.
    pub(crate) fn count(&self) -> usize {
        self.open.len()
    }

    /// The most sequences one step has carried since activation.
    pub(crate) fn largest_step(&self) -> usize {
        self.largest_step
    }

    /// Grammar masks computed since activation, and the milliseconds they took in all.
    pub(crate) fn mask_work(&self) -> (u64, f64) {
        (self.masks, self.mask_time.as_secs_f64() * 1e3)
    }
}

impl Extras {
    /// What the sequence makes of the model's choice: checked against the grammar's `allowed`
    /// tokens and moved past in the grammar (a token that completes it ends the sequence),
    /// its log-probabilities kept for the host.
    fn follow(
        &mut self,
        tokenizer: &impl Tokenizer,
        sampled: crate::Sampled,
        allowed: Option<TokenSet>,
    ) -> PluginResult<Next> {
        let mut next = sampled.next;
        let token = next.token();
        if let Some(guide) = &mut self.guide {
            if allowed.is_some_and(|allowed| !allowed.contains(token)) {
                return Err(PluginError::internal(format!(
                    "the model chose token {token}, which the grammar does not allow"
                )));
            }
            if guide.accept(token)? {
                if let Next::Token(token) = next {
                    next = Next::Final(token);
                }
            }
        }
        if let Some(top) = self.logprobs {
            let logprobs = sampled.logprobs.ok_or_else(|| {
                PluginError::internal("the model reported no log-probabilities for a step")
            })?;
            self.unread
                .push(position_logprobs(tokenizer, token, &logprobs, top)?);
        }
        Ok(next)
    }
}

/// `logprobs` of `token` as the API reports them, with each token's bytes.
pub(crate) fn position_logprobs(
    tokenizer: &impl Tokenizer,
    token: u32,
    logprobs: &Logprobs,
    top: u32,
) -> PluginResult<PositionLogprobs> {
    let entry = |token: u32, logprob: f32| -> PluginResult<TokenLogprob> {
        Ok(TokenLogprob {
            token,
            bytes: tokenizer.token_bytes(token)?.into(),
            logprob,
        })
    };
    Ok(PositionLogprobs {
        chosen: entry(token, logprobs.logprob)?,
        top: logprobs
            .top
            .iter()
            .take(top as usize)
            .map(|&(token, logprob)| entry(token, logprob))
            .collect::<PluginResult<_>>()?,
    })
}

fn unknown(id: u64) -> PluginError {
    PluginError::invalid_input(format!("no open sequence {id}"))
}
