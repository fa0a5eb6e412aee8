//! Batched generation's bookkeeping: the sequences the host has opened, each a model sequence
//! and its [`Decoding`], advanced together by one token per step.
//!
//! A step is checked as a whole before anything changes (unknown, finished or repeated ids fail
//! it and leave every sequence as it was), and a sequence is freed only when the host closes it.

use std::collections::BTreeMap;

use pio_plugin_api::{abi_stable::std_types::ROption, PluginError, PluginResult, SequenceStep};

use crate::{decoding::Decoding, Model, Next, TextModel, Tokenizer};

/// The decoder type of model `M`'s sequences.
type DecoderOf<M> = <<M as Model>::Tokenizer as Tokenizer>::Decoder;

/// One open sequence.
pub(crate) struct Open<M: TextModel> {
    pub(crate) sequence: M::Sequence,
    pub(crate) decoding: Decoding<DecoderOf<M>>,
}

/// The open sequences of one active model.
pub(crate) struct Sequences<M: TextModel> {
    next_id: u64,
    open: BTreeMap<u64, Open<M>>,
    /// The most sequences one step has carried: tests read it to prove batching happened.
    largest_step: usize,
}

impl<M: TextModel> Default for Sequences<M> {
    fn default() -> Self {
        Self {
            next_id: 0,
            open: BTreeMap::new(),
            largest_step: 0,
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
    /// [`TextModel::step_batch`].
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
        let (mut sequences, decodings): (Vec<&mut M::Sequence>, Vec<&mut Decoding<_>>) = batch
            .into_iter()
            .map(|(_, open)| (&mut open.sequence, &mut open.decoding))
            .unzip();
        let nexts: Vec<Next> = model.step_batch(&mut sequences)?;
        if nexts.len() != ids.len() {
            return Err(PluginError::internal(format!(
                "the model's step_batch returned {} tokens for {} sequences",
                nexts.len(),
                ids.len()
            )));
        }
        ids.iter()
            .zip(decodings)
            .zip(nexts)
            .map(|((&id, decoding), next)| {
                let (event, finish) = decoding.accept(next)?;
                Ok(SequenceStep {
                    id,
                    event,
                    finish: ROption::from(finish),
                })
            })
            .collect()
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
}

fn unknown(id: u64) -> PluginError {
    PluginError::invalid_input(format!("no open sequence {id}"))
}
