//! Batched generation (continuous batching's plugin half): sequences are opened one at a time —
//! each prompt processed on its own — and then decoded together, one token each per step, in
//! one forward pass over the cache they share. Sequence `s` owns the `slot_context` contiguous
//! rows starting at `slot * slot_context` of that cache; sequences join and leave between steps.
//!
//! **Growing slots.** A sequence may hold as many positions as the model's context, like one
//! generated alone. When one needs more rows than a slot holds (its prompt at `open`, or its
//! next token at a step), every slot grows — to the next power of two of what is needed, at
//! least double, at most the model's context — and the rows each slot holds move to their new
//! place (one device-side copy). `open` checks beforehand, without allocating, that the slots
//! can grow as far as the sequence may need (prompt plus `max_new_tokens`, as
//! [`crate::memory::check`] sees it); if they cannot, it refuses with
//! [`Error::SequenceTooLong`] (`out_of_memory`), and the request can run as a single sequence.
//!
//! **Prefix cache.** A closed sequence's slot keeps the keys and values it computed, and the
//! tokens they belong to. A new sequence takes the free slot whose kept tokens share the longest
//! prefix with its prompt and recomputes only the rest (at least the prompt's last token, whose
//! logits give the first sampled token): a follow-up chat turn, or requests sharing a system
//! prompt, skip most of their prefill.
//!
//! `open` keeps the logits of the prompt's last position; a sequence's first step samples from
//! them, and every later step feeds the sequence's last token through the model together with
//! the other sequences'. Each sequence samples on the host with its own sampler, under its step
//! options: logits outside a grammar's allowed tokens masked to −∞ first, log-probabilities
//! taken from the unmasked row. The weights are read once per step for all sequences, which is
//! where batching gains: the per-step cost grows far slower than the number of sequences. The
//! kit decides what the tokens become and when a sequence ends.

use crate::engine::ModelSummary;
use crate::error::{Error, Result};
use crate::memory::{self, MemoryConfig, MemoryLimits};
use crate::runtime::GpuModel;
use crate::sampler::Sampler;
use crate::sequence::Tokens;
use pio_plugin_kit::{Logprobs, StepOptions};

/// How many sequences can be open at once, and how long each may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Sequences open at once.
    pub slots: usize,
    /// Positions (prompt and generated tokens) each slot holds at first (at most the model's
    /// activated context). Slots grow when a sequence needs more, up to the model's context.
    pub slot_context: usize,
}

impl Default for BatchSettings {
    /// 8 sequences of up to 1024 positions (SmolLM2-135M: 46 KiB of cache per position, so
    /// 8 × 1024 positions take 360 MiB, allocated at the first `open`).
    fn default() -> Self {
        BatchSettings {
            slots: 8,
            slot_context: 1024,
        }
    }
}

/// A batched sequence: its slot of the batch cache and its tokens.
pub struct Slot {
    index: usize,
    /// Prompt tokens whose keys and values were reused from the slot's previous sequence.
    reused: usize,
    tokens: Tokens,
    /// The logits of the prompt's last position, until the first step samples from them.
    prompt_logits: Option<Vec<f32>>,
}

impl Slot {
    /// Prompt tokens whose keys and values were reused from the slot's previous sequence.
    pub fn reused(&self) -> usize {
        self.reused
    }
}

/// What the batch cache is sized against: the model and the device's limits.
#[derive(Debug, Clone)]
pub struct BatchMemory {
    /// The model.
    pub summary: ModelSummary,
    /// The device's limits and the caller's budget.
    pub limits: MemoryLimits,
}

/// The cache slots of batched sequences: which are free, and what each holds.
pub struct Batch {
    /// The slots' current size in `slot_context` (it grows).
    settings: BatchSettings,
    memory: BatchMemory,
    free_slots: Vec<usize>,
    /// Per slot, the tokens whose keys and values its rows hold: its open sequence's, or for
    /// a free slot what the last sequence there left behind.
    slot_tokens: Vec<Vec<u32>>,
}

impl Batch {
    /// No sequences yet; the shared cache is reserved at the first [`Batch::open`], within
    /// what `memory` allows.
    pub fn new(settings: BatchSettings, memory: BatchMemory) -> Self {
        Batch {
            memory,
            free_slots: (0..settings.slots).rev().collect(),
            slot_tokens: vec![Vec::new(); settings.slots],
            settings,
        }
    }

    /// The settings; `slot_context` is the slots' current size.
    pub fn settings(&self) -> BatchSettings {
        self.settings
    }

    /// The free slot to open `prompt` in: the one whose kept tokens share the longest prefix
    /// with it (ties: the most recently freed), with the number of prompt tokens it can reuse.
    fn pick_slot(&self, prompt: &[u32]) -> Option<(usize, usize)> {
        self.free_slots
            .iter()
            .rev()
            .map(|&slot| {
                let kept = &self.slot_tokens[slot];
                let common = kept.iter().zip(prompt).take_while(|(a, b)| a == b).count();
                // The last prompt token is always recomputed: its logits start the sequence.
                (slot, common.min(prompt.len() - 1))
            })
            .max_by_key(|&(_, reused)| reused)
    }

    /// The slot size for sequences needing `rows` positions: the current size when it is
    /// enough, else the next power of two of `rows`, at least double the current size, at most
    /// `context`.
    fn slot_size_for(&self, rows: usize, context: usize) -> usize {
        let current = self.settings.slot_context;
        if rows <= current {
            current
        } else {
            rows.next_power_of_two()
                .max(current.saturating_mul(2))
                .min(context)
        }
    }

    /// Checks, allocating nothing, that slots of `slot_context` positions fit in memory next to
    /// everything else, the current batch cache included while it is copied.
    fn check_slots(&self, model: &GpuModel, slot_context: usize) -> Result<()> {
        let config = MemoryConfig {
            context: model.context(),
            max_batch: model.max_batch(),
            batch_rows: self.settings.slots.saturating_mul(slot_context),
            copied_batch_rows: model.batch_cache_rows().unwrap_or(0),
        };
        memory::check(
            &self.memory.summary,
            &config,
            &self.memory.limits,
            model.gpu().allocated_bytes(),
            memory::host_available_bytes(),
        )?;
        Ok(())
    }

    /// Rows of `slot` holding keys and values worth keeping: its open sequence's, or those a
    /// closed one left for the prefix cache.
    fn kept_rows(&self, slot: usize) -> usize {
        self.slot_tokens[slot].len().min(self.settings.slot_context)
    }

    /// Makes every slot hold at least `rows` positions: reserves the shared cache at the first
    /// call, and grows it (moving every slot's kept rows) when `rows` exceeds the slot size.
    fn ensure_slot_rows(&mut self, model: &mut GpuModel, rows: usize) -> Result<()> {
        let current = self.settings.slot_context;
        let size = self.slot_size_for(rows, model.context());
        if size < rows {
            return Err(Error::PromptTooLong {
                prompt: rows,
                context: model.context(),
            });
        }
        let reserved = model.batch_cache_rows().is_some();
        if reserved && size == current {
            return Ok(());
        }
        self.check_slots(model, size)?;
        let slots = self.settings.slots;
        if reserved {
            let moves: Vec<(u32, u32, u32)> = (0..slots)
                .map(|slot| {
                    let kept = self.kept_rows(slot);
                    ((slot * current) as u32, (slot * size) as u32, kept as u32)
                })
                .filter(|&(_, _, kept)| kept > 0)
                .collect();
            tracing::info!(
                from = current,
                to = size,
                slots,
                "batch slots grow for a longer sequence"
            );
            model.grow_batch_cache(slots * size, &moves)?;
        } else {
            model.reserve_batch_cache(slots * size)?;
        }
        self.settings.slot_context = size;
        Ok(())
    }

    /// Opens a sequence: processes `prompt` into a free slot (reusing the longest cached
    /// prefix) and keeps its last logits (the first step samples from them). The sequence may hold
    /// its prompt and `max_new_tokens` tokens but the last, up to the model's context (slots
    /// grow); when memory does not allow the slots to grow that far, it is refused with
    /// [`Error::SequenceTooLong`]. The caller has checked the prompt against the context.
    pub fn open(
        &mut self,
        model: &mut GpuModel,
        prompt: &[u32],
        max_new_tokens: usize,
        sampler: Sampler,
    ) -> Result<Slot> {
        let (slot, reused) = self.pick_slot(prompt).ok_or_else(|| {
            Error::InvalidParams(format!(
                "all {} batch slots are in use; close a sequence first",
                self.settings.slots
            ))
        })?;
        // Every token but the last is fed back: the sequence may need this many rows.
        let positions_needed = prompt.len() + max_new_tokens.max(1) - 1;
        let final_size = self.slot_size_for(positions_needed, model.context());
        if final_size > self.settings.slot_context {
            self.check_slots(model, final_size)
                .map_err(|e| Error::SequenceTooLong {
                    positions: positions_needed,
                    slot_context: self.settings.slot_context,
                    reason: e.to_string(),
                })?;
        }
        self.ensure_slot_rows(model, prompt.len())?;
        let base = slot * self.settings.slot_context;
        let positions: Vec<u32> = (reused as u32..prompt.len() as u32).collect();
        let rows: Vec<u32> = positions.iter().map(|p| base as u32 + p).collect();
        // The slot's rows past `reused` are overwritten from here on.
        self.slot_tokens[slot].truncate(reused);
        let logits = model.forward_batch(&prompt[reused..], &positions, &rows, false)?;
        self.slot_tokens[slot].extend_from_slice(&prompt[reused..]);
        self.free_slots.retain(|&s| s != slot);
        Ok(Slot {
            index: slot,
            reused,
            tokens: Tokens::unsampled(sampler, prompt),
            prompt_logits: Some(logits),
        })
    }

    /// The next token of each of `sequences`, each chosen under its `options`: those at their
    /// first step sample from their prompt's logits; the others feed their last token through
    /// the model together.
    pub fn step(
        &mut self,
        model: &mut GpuModel,
        sequences: &mut [&mut Slot],
        options: &[StepOptions<'_>],
    ) -> Result<Vec<(u32, Option<Logprobs>)>> {
        let mut chosen = vec![None; sequences.len()];
        for (i, sequence) in sequences.iter_mut().enumerate() {
            if let Some(logits) = sequence.prompt_logits.take() {
                chosen[i] = Some(sequence.tokens.choose(&logits, &options[i])?);
            }
        }
        let fed: Vec<usize> = (0..sequences.len())
            .filter(|&i| chosen[i].is_none())
            .collect();
        if !fed.is_empty() {
            let tokens: Vec<u32> = fed.iter().map(|&i| sequences[i].tokens.last()).collect();
            let positions: Vec<u32> = fed
                .iter()
                .map(|&i| sequences[i].tokens.last_position() as u32)
                .collect();
            // A sequence past its slot's end grows the slots first (checked possible at open).
            let needed = positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
            self.ensure_slot_rows(model, needed)?;
            let context = self.settings.slot_context;
            let rows: Vec<u32> = fed
                .iter()
                .zip(&positions)
                .map(|(&i, &position)| (sequences[i].index * context) as u32 + position)
                .collect();
            let logits = model.forward_batch(&tokens, &positions, &rows, true)?;
            let vocab = logits.len() / fed.len();
            for ((&i, &token), row) in fed.iter().zip(&tokens).zip(logits.chunks_exact(vocab)) {
                let sequence = &mut *sequences[i];
                self.slot_tokens[sequence.index].push(token);
                chosen[i] = Some(sequence.tokens.choose(row, &options[i])?);
            }
        }
        Ok(chosen.into_iter().flatten().collect())
    }

    /// Frees the slot of a closed sequence; the slot keeps the keys and values of its fed
    /// tokens for a later prompt with the same prefix.
    pub fn close(&mut self, sequence: Slot) {
        self.free_slots.push(sequence.index);
    }
}

#[cfg(test)]
mod tests {
    use pio_plugin_kit::api::{
        ActivateOptions, ErrorKind, FinishReason, GenerationParams, Plugin, SequenceRequest,
        TokenEvent,
    };

    use super::*;
    use crate::memory::MemoryConfig;
    use crate::test_model::{
        active_plugin, alone, details, run_to_end, sampled, tiny_file, tokens_request, LlamaPlugin,
        TinyConfig,
    };

    /// The tiny model with a 64-position context and `slots` slots of `slot_context` positions.
    fn plugin(dir: &tempfile::TempDir, slots: usize, slot_context: usize) -> LlamaPlugin {
        let model = tiny_file(dir, &TinyConfig::default());
        let config = serde_json::json!({
            "model": model, "batch_slots": slots, "batch_context": slot_context
        });
        active_plugin(config, 64)
    }

    /// What each request gives alone, through `generate`.
    fn alone_events(
        plugin: &mut LlamaPlugin,
        requests: &[SequenceRequest],
    ) -> Vec<Vec<TokenEvent>> {
        requests
            .iter()
            .map(|request| {
                let (response, events) = alone(plugin, request, None);
                response.unwrap();
                events
            })
            .collect()
    }

    /// Steps the open sequences `open` (ids, by request index) together until every one has
    /// ended, calling `between(step)` before each step; returns each request's events.
    fn step_together(
        plugin: &mut LlamaPlugin,
        mut open: Vec<(u64, usize)>,
        requests: usize,
        mut between: impl FnMut(&mut LlamaPlugin, usize, &mut Vec<(u64, usize)>),
    ) -> Vec<Vec<TokenEvent>> {
        let mut got = vec![Vec::new(); requests];
        let mut step = 0;
        while !open.is_empty() {
            between(plugin, step, &mut open);
            let ids: Vec<u64> = open.iter().map(|(id, _)| *id).collect();
            for (stepped, (id, i)) in plugin
                .step_sequences(&ids)
                .unwrap()
                .into_iter()
                .zip(open.clone())
            {
                got[i].push(stepped.event);
                if stepped.finish.is_some() {
                    plugin.close_sequence(id).unwrap();
                    open.retain(|&(open_id, _)| open_id != id);
                }
            }
            step += 1;
        }
        got
    }

    #[test]
    fn batched_sequences_generate_what_they_generate_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut plugin = plugin(&dir, 3, 48);
        let requests = [
            tokens_request(
                &(0..9).map(|i| (i * 31 + 3) % 290).collect::<Vec<_>>(),
                sampled(12, 0.0, 0),
            ),
            tokens_request(
                &(0..17).map(|i| (i * 7 + 100) % 290).collect::<Vec<_>>(),
                sampled(7, 0.9, 42),
            ),
            tokens_request(
                &(0..4).map(|i| (i * 97 + 11) % 290).collect::<Vec<_>>(),
                sampled(10, 1.1, 7),
            ),
        ];
        let want = alone_events(&mut plugin, &requests);

        // The first two start together; the third joins after two steps.
        let open = (0..2)
            .map(|i| (plugin.open_sequence(&requests[i]).unwrap().id, i))
            .collect();
        let got = step_together(&mut plugin, open, requests.len(), |plugin, step, open| {
            if step == 2 {
                open.push((plugin.open_sequence(&requests[2]).unwrap().id, 2));
            }
        });
        assert_eq!(got, want);
        assert!(want.iter().all(|events| events.len() > 1));
        assert_eq!(details(&plugin)["largest_batch"], 3);
        assert_eq!(details(&plugin)["open_sequences"], 0);
    }

    #[test]
    fn slots_limit_open_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let mut plugin = plugin(&dir, 1, 48);
        let a = plugin
            .open_sequence(&tokens_request(&[5, 6, 7], GenerationParams::greedy(2)))
            .unwrap()
            .id;
        let err = plugin
            .open_sequence(&tokens_request(&[5], GenerationParams::greedy(2)))
            .unwrap_err();
        assert!(
            err.message.contains("all 1 batch slots are in use"),
            "{err}"
        );
        let events = run_to_end(&mut plugin, a);
        assert_eq!(events.len(), 2);
        // The slot is free again.
        plugin
            .open_sequence(&tokens_request(&[1, 2], GenerationParams::greedy(2)))
            .unwrap();
    }

    #[test]
    fn a_prompt_that_fills_the_context_gets_one_token_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let mut plugin = plugin(&dir, 2, 16);
        for (length, expected) in [(64, 1), (63, 2)] {
            let prompt: Vec<u32> = (0..length).map(|i| (i * 11 + 5) % 290).collect();
            let request = tokens_request(&prompt, GenerationParams::greedy(10));
            let (response, events) = alone(&mut plugin, &request, None);
            let response = response.unwrap();
            assert_eq!(response.tokens.len(), expected);
            assert_eq!(response.finish_reason, FinishReason::Length);
            let id = plugin.open_sequence(&request).unwrap().id;
            assert_eq!(run_to_end(&mut plugin, id), events, "prompt of {length}");
        }
        let prompt: Vec<u32> = (0..65).collect();
        let request = tokens_request(&prompt, GenerationParams::greedy(10));
        let err = plugin.open_sequence(&request).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert_eq!(
            err.message.as_str(),
            "prompt has 65 tokens but the context holds 64"
        );
    }

    #[test]
    fn a_shared_prompt_prefix_is_reused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut plugin = plugin(&dir, 2, 48);
        let first: Vec<u32> = (0..12).map(|i| (i * 13 + 1) % 290).collect();
        let opened = plugin
            .open_sequence(&tokens_request(&first, GenerationParams::greedy(5)))
            .unwrap();
        assert_eq!(opened.cached_tokens, 0, "nothing cached yet");
        let answer: Vec<u32> = run_to_end(&mut plugin, opened.id)
            .iter()
            .map(|e| e.token)
            .collect();

        // A follow-up turn: the first prompt, the answer and more; everything fed before is
        // reused (the answer's last token was returned but never fed).
        let mut follow_up = first.clone();
        follow_up.extend_from_slice(&answer);
        follow_up.extend_from_slice(&[7, 8, 9]);
        let request = tokens_request(&follow_up, GenerationParams::greedy(5));
        let opened = plugin.open_sequence(&request).unwrap();
        assert_eq!(
            opened.cached_tokens as usize,
            first.len() + answer.len() - 1
        );
        let reused = run_to_end(&mut plugin, opened.id);
        let (_, full_prefill) = alone(&mut plugin, &request, None);
        assert_eq!(
            reused, full_prefill,
            "reusing the cache gives what a full prefill gives"
        );

        // A prompt sharing nothing reuses nothing; the same prompt again reuses all but its
        // last token.
        let other: Vec<u32> = (0..6).map(|i| (i * 5 + 200) % 290).collect();
        let request = tokens_request(&other, GenerationParams::greedy(5));
        let opened = plugin.open_sequence(&request).unwrap();
        assert_eq!(opened.cached_tokens, 0);
        run_to_end(&mut plugin, opened.id);
        let opened = plugin.open_sequence(&request).unwrap();
        assert_eq!(opened.cached_tokens as usize, other.len() - 1);
    }

    #[test]
    fn sequences_longer_than_a_slot_grow_the_slots_and_match_generating_alone() {
        let dir = tempfile::tempdir().unwrap();
        // Slots of 16 positions in a model context of 64.
        let mut plugin = plugin(&dir, 3, 16);
        let prompt = |n: usize, k: usize| -> Vec<u32> {
            (0..n).map(|i| ((i * k + 7) % 290) as u32).collect()
        };
        let requests = [
            // Fits a slot of 16.
            tokens_request(&prompt(5, 31), sampled(6, 0.0, 0)),
            // Its prompt fits, its tokens do not: the slots grow to 32 at a step (the sixth, which
            // feeds its fifth token at position 16).
            tokens_request(&prompt(12, 17), sampled(10, 0.9, 42)),
            // Its prompt alone exceeds a slot of 32: the slots grow to 64 at its opening (before
            // the eighth step), moving the rows of the sequences already open.
            tokens_request(&prompt(40, 13), sampled(8, 1.1, 7)),
        ];
        let want = alone_events(&mut plugin, &requests);
        let open = (0..2)
            .map(|i| (plugin.open_sequence(&requests[i]).unwrap().id, i))
            .collect();
        assert_eq!(details(&plugin)["batch_context"], 16);
        let mut sizes = vec![];
        let got = step_together(&mut plugin, open, requests.len(), |plugin, step, open| {
            sizes.push(details(plugin)["batch_context"].as_u64().unwrap());
            if step == 7 {
                open.push((plugin.open_sequence(&requests[2]).unwrap().id, 2));
                assert_eq!(details(plugin)["batch_context"], 64);
            }
        });
        assert!(sizes.contains(&32), "grew to 32 at a step: {sizes:?}");
        assert_eq!(got, want);
        // The prefix cache survives the moves: the long prompt again reuses all but its last
        // token and gives the same tokens.
        let opened = plugin.open_sequence(&requests[2]).unwrap();
        assert_eq!(opened.cached_tokens, 39);
        assert_eq!(run_to_end(&mut plugin, opened.id), want[2]);
    }

    #[test]
    fn slots_that_cannot_grow_refuse_the_sequence_without_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_file(&dir, &TinyConfig::default());
        let summary = ModelSummary::read(
            &pio_gguf::GgufFile::open(&model).unwrap(),
            crate::storage::WeightStorage::AsStored,
        )
        .unwrap();
        // A budget of exactly what 2 slots of 16 positions need: they cannot grow.
        let budget = summary
            .memory_needs(&MemoryConfig {
                context: 64,
                max_batch: 64,
                batch_rows: 2 * 16,
                copied_batch_rows: 0,
            })
            .device;
        let mut plugin = LlamaPlugin::new().unwrap();
        let config = serde_json::json!({"model": model, "batch_slots": 2, "batch_context": 16});
        plugin.initialize(config).unwrap();
        plugin
            .activate(&ActivateOptions {
                context_length: 64,
                memory_budget_bytes: budget,
                ..ActivateOptions::default()
            })
            .unwrap();
        let short = plugin
            .open_sequence(&tokens_request(&[5, 6, 7], GenerationParams::greedy(4)))
            .unwrap();
        let allocated = plugin.stats().device_memory_bytes;
        let long: Vec<u32> = (0..20).collect();
        let long = tokens_request(&long, GenerationParams::greedy(4));
        let err = plugin.open_sequence(&long).unwrap_err();
        assert_eq!(err.kind, ErrorKind::OutOfMemory, "{err}");
        assert!(
            err.message.contains("up to 23 positions")
                && err.message.contains("batch slot of 16 positions")
                && err.message.contains("budget"),
            "{err}"
        );
        assert_eq!(plugin.stats().device_memory_bytes, allocated);
        assert_eq!(details(&plugin)["open_sequences"], 1);
        // A sequence that stays within its slot is refused likewise when its token limit could
        // take it past the slot; with a limit that fits, it runs.
        let err = plugin
            .open_sequence(&tokens_request(&[1, 2], GenerationParams::greedy(20)))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::OutOfMemory, "{err}");
        let fits = plugin
            .open_sequence(&tokens_request(&[1, 2], GenerationParams::greedy(15)))
            .unwrap();
        run_to_end(&mut plugin, fits.id);
        run_to_end(&mut plugin, short.id);
        // The single-sequence path serves the refused request.
        let (response, _) = alone(&mut plugin, &long, None);
        assert_eq!(response.unwrap().tokens.len(), 4);
    }
}
