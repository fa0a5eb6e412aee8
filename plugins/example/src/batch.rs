//! Batched generation (capability `batched-generation`): the sequences the host has opened,
//! each advanced by one token per [`step`](OpenSequences::step).
//!
//! A real model decodes every sequence of a step in one forward pass over their KV caches;
//! the mirror has no cache, so a step simply advances each [`MirrorSequence`]. What a plugin
//! author should copy is the bookkeeping: ids handed out at open, a step checked as a whole
//! before anything changes (unknown, finished or repeated ids fail the step and leave every
//! sequence as it was), and a sequence's memory freed only when the host closes it.

use std::collections::BTreeMap;

use pio_plugin_api::{abi_stable::std_types::ROption, PluginError, PluginResult, SequenceStep};

use crate::mirror::MirrorSequence;

/// The open sequences of one plugin instance.
#[derive(Debug, Default)]
pub struct OpenSequences {
    next_id: u64,
    open: BTreeMap<u64, MirrorSequence>,
    /// The most sequences one step has carried: tests read it to prove batching happened.
    largest_step: usize,
}

impl OpenSequences {
    /// Adds `sequence` and returns its id.
    pub fn open(&mut self, sequence: MirrorSequence) -> u64 {
        self.next_id += 1;
        self.open.insert(self.next_id, sequence);
        self.next_id
    }

    /// Generates one token for each sequence of `ids`, in that order.
    pub fn step(&mut self, ids: &[u64]) -> PluginResult<Vec<SequenceStep>> {
        for (position, id) in ids.iter().enumerate() {
            let sequence = self.open.get(id).ok_or_else(|| unknown(*id))?;
            if let Some(finish) = sequence.finish() {
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
        Ok(ids
            .iter()
            .map(|&id| {
                let sequence = self.open.get_mut(&id).expect("checked above");
                let decoded = sequence
                    .next_token()
                    .expect("an open sequence has a next token");
                SequenceStep {
                    id,
                    event: decoded.event,
                    finish: ROption::from(decoded.finish),
                }
            })
            .collect())
    }

    /// Removes sequence `id`, finished or not.
    pub fn close(&mut self, id: u64) -> PluginResult<MirrorSequence> {
        self.open.remove(&id).ok_or_else(|| unknown(id))
    }

    /// Sequences open now.
    pub fn count(&self) -> usize {
        self.open.len()
    }

    /// The most sequences one step has carried since activation.
    pub fn largest_step(&self) -> usize {
        self.largest_step
    }
}

fn unknown(id: u64) -> PluginError {
    PluginError::invalid_input(format!("no open sequence {id}"))
}
