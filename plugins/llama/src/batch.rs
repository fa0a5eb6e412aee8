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
//! A step first emits every listed sequence's pending token (sampled at the end of the previous
//! step, or at `open`), then feeds the ones that go on through the model together and samples
//! their next tokens on the host, each with its own sampler. The weights are read once per step
//! for all sequences, which is where batching gains: the per-step cost grows far slower than the
//! number of sequences.

use std::collections::HashMap;
use std::sync::Arc;

use pio_plugin_api::{FinishReason, TokenEvent};
use pio_text::{StreamDecoder, TextTokenizer};

use crate::engine::ModelSummary;
use crate::error::{Error, Result};
use crate::generate::{check_prompt, room_for_new_tokens, Emitter, GenerateConfig};
use crate::memory::{self, MemoryConfig, MemoryLimits};
use crate::runtime::GpuModel;
use crate::sampler::Sampler;

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

/// One step's result for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Stepped {
    /// The sequence.
    pub id: u64,
    /// Its new token.
    pub event: TokenEvent,
    /// Set when this token ended it.
    pub finish: Option<FinishReason>,
}

/// One open sequence.
struct Sequence {
    slot: usize,
    sampler: Sampler,
    /// Prompt and every emitted token.
    history: Vec<u32>,
    /// How many tokens of `history` have their keys and values in the slot.
    cached: usize,
    emitter: Emitter<StreamDecoder<Arc<TextTokenizer>>>,
    /// The sampled token the next step emits.
    pending: u32,
    finished: bool,
}

/// A newly opened sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Its id.
    pub id: u64,
    /// Prompt tokens whose keys and values were reused from the slot's previous sequence.
    pub cached_tokens: usize,
}

/// What the batch cache is sized against: the model and the device's limits.
#[derive(Debug, Clone)]
pub struct BatchMemory {
    /// The model.
    pub summary: ModelSummary,
    /// The device's limits and the caller's budget.
    pub limits: MemoryLimits,
}

/// The open sequences and the cache slots they hold.
pub struct Batch {
    /// The slots' current size in `slot_context` (it grows).
    settings: BatchSettings,
    memory: BatchMemory,
    free_slots: Vec<usize>,
    /// Per slot, the tokens whose keys and values its rows hold (for free slots: what the
    /// last sequence there left behind).
    slot_tokens: Vec<Vec<u32>>,
    sequences: HashMap<u64, Sequence>,
    next_id: u64,
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
            sequences: HashMap::new(),
            next_id: 1,
        }
    }

    /// The settings; `slot_context` is the slots' current size.
    pub fn settings(&self) -> BatchSettings {
        self.settings
    }

    /// Number of open sequences.
    pub fn open_count(&self) -> usize {
        self.sequences.len()
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
        let kept = self
            .sequences
            .values()
            .find(|s| s.slot == slot)
            .map_or(self.slot_tokens[slot].len(), |s| s.cached);
        kept.min(self.settings.slot_context)
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
    /// prefix) and samples its first token (the first step emits it). The sequence may hold
    /// as many positions as the model's context (slots grow); when memory does not allow the
    /// slots to grow that far, it is refused with [`Error::SequenceTooLong`].
    pub fn open(
        &mut self,
        model: &mut GpuModel,
        tokenizer: &Arc<TextTokenizer>,
        prompt: &[u32],
        config: &GenerateConfig,
    ) -> Result<Opened> {
        // The same limits as a sequence generated alone: the model's context.
        let context = model.context();
        check_prompt(prompt, context)?;
        if config.max_new_tokens == 0 {
            return Err(Error::InvalidParams(
                "a batched sequence needs max_new_tokens of at least 1".into(),
            ));
        }
        let max_new = config
            .max_new_tokens
            .min(room_for_new_tokens(prompt.len(), context));
        let mut sampler = Sampler::new(config.sampling.clone())?;
        let (slot, reused) = self.pick_slot(prompt).ok_or_else(|| {
            Error::InvalidParams(format!(
                "all {} batch slots are in use; close a sequence first",
                self.settings.slots
            ))
        })?;
        // Every sampled token but the last is fed back: the sequence may need this many rows.
        let positions_needed = prompt.len() + max_new - 1;
        let final_size = self.slot_size_for(positions_needed, context);
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
        let pending = sampler.sample(&logits, prompt)?;
        self.free_slots.retain(|&s| s != slot);

        let id = self.next_id;
        self.next_id += 1;
        let decoder = StreamDecoder::new(Arc::clone(tokenizer), true);
        self.sequences.insert(
            id,
            Sequence {
                slot,
                sampler,
                history: prompt.to_vec(),
                cached: prompt.len(),
                emitter: Emitter::new(
                    decoder,
                    &config.stop_strings,
                    config.eog_ids.clone(),
                    max_new,
                ),
                pending,
                finished: false,
            },
        );
        Ok(Opened {
            id,
            cached_tokens: reused,
        })
    }

    /// Emits one token for each of `ids` (distinct open, unfinished sequences) and decodes the
    /// ones that go on together.
    pub fn step(&mut self, model: &mut GpuModel, ids: &[u64]) -> Result<Vec<Stepped>> {
        for (i, id) in ids.iter().enumerate() {
            match self.sequences.get(id) {
                None => return Err(Error::InvalidParams(format!("no open sequence {id}"))),
                Some(s) if s.finished => {
                    return Err(Error::InvalidParams(format!(
                        "sequence {id} has finished; close it"
                    )))
                }
                Some(_) if ids[..i].contains(id) => {
                    return Err(Error::InvalidParams(format!(
                        "sequence {id} is listed twice"
                    )))
                }
                Some(_) => {}
            }
        }
        let mut stepped = Vec::with_capacity(ids.len());
        let (mut fed, mut tokens, mut positions, mut slots) = (vec![], vec![], vec![], vec![]);
        for &id in ids {
            let seq = self.sequences.get_mut(&id).expect("checked above");
            let token = seq.pending;
            seq.history.push(token);
            let (event, finish) = seq.emitter.accept(token)?;
            seq.finished = finish.is_some();
            if !seq.finished {
                let position = seq.history.len() - 1;
                seq.cached = seq.history.len();
                fed.push(id);
                tokens.push(token);
                positions.push(position as u32);
                slots.push(seq.slot);
            }
            stepped.push(Stepped { id, event, finish });
        }
        if !fed.is_empty() {
            // A sequence past its slot's end grows the slots first (checked possible at open).
            let needed = positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
            self.ensure_slot_rows(model, needed)?;
            let context = self.settings.slot_context;
            let rows: Vec<u32> = slots
                .iter()
                .zip(&positions)
                .map(|(&slot, &position)| (slot * context) as u32 + position)
                .collect();
            let logits = model.forward_batch(&tokens, &positions, &rows, true)?;
            let vocab = logits.len() / fed.len();
            for (id, row) in fed.iter().zip(logits.chunks_exact(vocab)) {
                let seq = self.sequences.get_mut(id).expect("fed sequences are open");
                seq.pending = seq.sampler.sample(row, &seq.history)?;
            }
        }
        Ok(stepped)
    }

    /// Closes sequence `id`, freeing its slot; the slot keeps the sequence's cached tokens
    /// for a later prompt with the same prefix.
    pub fn close(&mut self, id: u64) -> Result<()> {
        let mut seq = self
            .sequences
            .remove(&id)
            .ok_or_else(|| Error::InvalidParams(format!("no open sequence {id}")))?;
        seq.history.truncate(seq.cached);
        self.slot_tokens[seq.slot] = seq.history;
        self.free_slots.push(seq.slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::memory::MemoryConfig;
    use crate::sampler::SamplingParams;
    use crate::test_model::{tiny_llama_bytes, TinyConfig};
    use pio_gpu::DeviceOptions;
    use pio_plugin_api::StreamControl;

    fn engine(dir: &tempfile::TempDir, slots: usize) -> Engine {
        engine_with(dir, slots, 48, 0)
    }

    /// The tiny model with a 64-position context, `slots` slots of `slot_context` positions
    /// and a device memory budget (0: none).
    fn engine_with(
        dir: &tempfile::TempDir,
        slots: usize,
        slot_context: usize,
        budget: u64,
    ) -> Engine {
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, tiny_llama_bytes(&TinyConfig::default())).unwrap();
        let settings = BatchSettings {
            slots,
            slot_context,
        };
        Engine::load(&path, &DeviceOptions::default(), 64, budget, settings).unwrap()
    }

    fn config(max_new_tokens: usize, temperature: f32, seed: u64) -> GenerateConfig {
        GenerateConfig {
            max_new_tokens,
            sampling: SamplingParams {
                temperature,
                top_k: 30,
                seed,
                ..SamplingParams::default()
            },
            ..GenerateConfig::default()
        }
    }

    /// Runs `prompt` alone through the one-sequence path.
    fn alone(engine: &mut Engine, prompt: &[u32], config: &GenerateConfig) -> (Vec<u32>, String) {
        let g = engine
            .generate(prompt, config, &mut |_| StreamControl::Continue)
            .unwrap();
        (g.tokens, g.text)
    }

    #[test]
    fn batched_sequences_generate_what_they_generate_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = engine(&dir, 3);
        let cases = [
            (
                (0..9).map(|i| (i * 31 + 3) % 290).collect::<Vec<u32>>(),
                config(12, 0.0, 0),
            ),
            (
                (0..17).map(|i| (i * 7 + 100) % 290).collect(),
                config(7, 0.9, 42),
            ),
            (
                (0..4).map(|i| (i * 97 + 11) % 290).collect(),
                config(10, 1.1, 7),
            ),
        ];
        let want: Vec<(Vec<u32>, String)> = cases
            .iter()
            .map(|(p, c)| alone(&mut engine, p, c))
            .collect();

        // The first two start together; the third joins after two steps.
        let mut ids = vec![
            engine.open_sequence(&cases[0].0, &cases[0].1).unwrap().id,
            engine.open_sequence(&cases[1].0, &cases[1].1).unwrap().id,
        ];
        let mut got: HashMap<u64, (Vec<u32>, String)> = HashMap::new();
        let mut active = ids.clone();
        let mut steps = 0;
        while !active.is_empty() {
            if steps == 2 {
                let id = engine.open_sequence(&cases[2].0, &cases[2].1).unwrap().id;
                ids.push(id);
                active.push(id);
            }
            for s in engine.step_sequences(&active).unwrap() {
                let entry = got.entry(s.id).or_default();
                entry.0.push(s.event.token);
                entry.1.push_str(&s.event.text);
                assert_eq!(s.event.index as usize + 1, entry.0.len());
                if s.finish.is_some() {
                    active.retain(|&a| a != s.id);
                    engine.close_sequence(s.id).unwrap();
                }
            }
            steps += 1;
        }
        for (id, want) in ids.iter().zip(&want) {
            assert_eq!(&got[id], want, "sequence {id}");
        }
        assert_eq!(engine.batch().open_count(), 0);
    }

    #[test]
    fn slots_limit_open_sequences_and_bad_calls_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = engine(&dir, 1);
        let a = engine
            .open_sequence(&[5, 6, 7], &config(2, 0.0, 0))
            .unwrap()
            .id;
        let err = engine
            .open_sequence(&[5], &config(2, 0.0, 0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("all 1 batch slots are in use"), "{err}");
        assert!(engine.step_sequences(&[a, a]).is_err());
        assert!(engine.step_sequences(&[a + 1]).is_err());
        let first = engine.step_sequences(&[a]).unwrap();
        assert_eq!(first[0].finish, None);
        let second = engine.step_sequences(&[a]).unwrap();
        assert_eq!(second[0].finish, Some(FinishReason::Length));
        let err = engine.step_sequences(&[a]).unwrap_err().to_string();
        assert!(err.contains("has finished"), "{err}");
        engine.close_sequence(a).unwrap();
        assert!(engine.close_sequence(a).is_err());
        // The slot is free again; a prompt longer than the model's context is refused, naming
        // both lengths.
        let long: Vec<u32> = (0..65).collect();
        let err = engine.open_sequence(&long, &config(2, 0.0, 0)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::PromptTooLong {
                    prompt: 65,
                    context: 64
                }
            ),
            "{err}"
        );
        engine.open_sequence(&[1, 2], &config(2, 0.0, 0)).unwrap();
    }

    /// Runs an open sequence to its end; returns its tokens.
    fn run_to_end(engine: &mut Engine, id: u64) -> Vec<u32> {
        let mut tokens = Vec::new();
        loop {
            let step = engine.step_sequences(&[id]).unwrap().remove(0);
            tokens.push(step.event.token);
            if step.finish.is_some() {
                engine.close_sequence(id).unwrap();
                return tokens;
            }
        }
    }

    #[test]
    fn a_shared_prompt_prefix_is_reused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = engine(&dir, 2);
        let first: Vec<u32> = (0..12).map(|i| (i * 13 + 1) % 290).collect();
        let greedy = config(5, 0.0, 0);
        let opened = engine.open_sequence(&first, &greedy).unwrap();
        assert_eq!(opened.cached_tokens, 0, "nothing cached yet");
        let answer = run_to_end(&mut engine, opened.id);

        // A follow-up turn: the first prompt, the answer and more; everything fed before is
        // reused (the answer's last token was emitted but never fed).
        let mut follow_up = first.clone();
        follow_up.extend_from_slice(&answer);
        follow_up.extend_from_slice(&[7, 8, 9]);
        let opened = engine.open_sequence(&follow_up, &greedy).unwrap();
        assert_eq!(opened.cached_tokens, first.len() + answer.len() - 1);
        let reused = run_to_end(&mut engine, opened.id);
        let (alone, _) = alone(&mut engine, &follow_up, &greedy);
        assert_eq!(
            reused, alone,
            "reusing the cache gives what a full prefill gives"
        );

        // A prompt sharing nothing reuses nothing; the same prompt again reuses all but its
        // last token.
        let other: Vec<u32> = (0..6).map(|i| (i * 5 + 200) % 290).collect();
        let opened = engine.open_sequence(&other, &greedy).unwrap();
        assert_eq!(opened.cached_tokens, 0);
        run_to_end(&mut engine, opened.id);
        let opened = engine.open_sequence(&other, &greedy).unwrap();
        assert_eq!(opened.cached_tokens, other.len() - 1);
    }

    #[test]
    fn sequences_longer_than_a_slot_grow_the_slots_and_match_generating_alone() {
        let dir = tempfile::tempdir().unwrap();
        // Slots of 16 positions in a model context of 64.
        let mut engine = engine_with(&dir, 3, 16, 0);
        let prompt = |n: usize, k: usize| -> Vec<u32> {
            (0..n).map(|i| ((i * k + 7) % 290) as u32).collect()
        };
        let cases = [
            // Fits a slot of 16.
            (prompt(5, 31), config(6, 0.0, 0)),
            // Its prompt fits, its tokens do not: the slots grow to 32 at a step.
            (prompt(12, 17), config(10, 0.9, 42)),
            // Its prompt alone exceeds a slot of 32: the slots grow to 64 at its opening,
            // moving the rows of the two sequences already open.
            (prompt(40, 13), config(8, 1.1, 7)),
        ];
        let want: Vec<(Vec<u32>, String)> = cases
            .iter()
            .map(|(p, c)| alone(&mut engine, p, c))
            .collect();
        let mut got: HashMap<u64, (Vec<u32>, String)> = HashMap::new();
        let mut ids = vec![
            engine.open_sequence(&cases[0].0, &cases[0].1).unwrap().id,
            engine.open_sequence(&cases[1].0, &cases[1].1).unwrap().id,
        ];
        assert_eq!(engine.batch().settings().slot_context, 16);
        let mut active = ids.clone();
        let mut sizes = vec![];
        let mut steps = 0;
        while !active.is_empty() {
            if steps == 5 {
                let id = engine.open_sequence(&cases[2].0, &cases[2].1).unwrap().id;
                assert_eq!(engine.batch().settings().slot_context, 64);
                ids.push(id);
                active.push(id);
            }
            for s in engine.step_sequences(&active).unwrap() {
                let entry = got.entry(s.id).or_default();
                entry.0.push(s.event.token);
                entry.1.push_str(&s.event.text);
                if s.finish.is_some() {
                    active.retain(|&a| a != s.id);
                    engine.close_sequence(s.id).unwrap();
                }
            }
            sizes.push(engine.batch().settings().slot_context);
            steps += 1;
        }
        assert!(sizes.contains(&32), "grew to 32 at a step: {sizes:?}");
        for (id, want) in ids.iter().zip(&want) {
            assert_eq!(&got[id], want, "sequence {id}");
        }
        // The prefix cache survives the moves: the long prompt again reuses all but its last
        // token and gives the same tokens.
        let opened = engine.open_sequence(&cases[2].0, &cases[2].1).unwrap();
        assert_eq!(opened.cached_tokens, cases[2].0.len() - 1);
        assert_eq!(run_to_end(&mut engine, opened.id), want[2].0);
    }

    #[test]
    fn slots_that_cannot_grow_refuse_the_sequence_without_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, tiny_llama_bytes(&TinyConfig::default())).unwrap();
        let summary = ModelSummary::read(&pio_gguf::GgufFile::open(&path).unwrap()).unwrap();
        // A budget of exactly what 2 slots of 16 positions need: they cannot grow.
        let budget = summary
            .memory_needs(&MemoryConfig {
                context: 64,
                max_batch: 64,
                batch_rows: 2 * 16,
                copied_batch_rows: 0,
            })
            .device;
        let mut engine = engine_with(&dir, 2, 16, budget);
        let short = engine
            .open_sequence(&[5, 6, 7], &config(4, 0.0, 0))
            .unwrap();
        let allocated = engine.model().gpu().allocated_bytes();
        let long: Vec<u32> = (0..20).collect();
        let err = engine.open_sequence(&long, &config(4, 0.0, 0)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SequenceTooLong {
                    positions: 23,
                    slot_context: 16,
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("budget"), "{text}");
        assert_eq!(engine.model().gpu().allocated_bytes(), allocated);
        assert_eq!(engine.batch().open_count(), 1);
        // A sequence that stays within its slot is refused likewise when its token limit could
        // take it past the slot; with a limit that fits, it runs.
        let err = engine
            .open_sequence(&[1, 2], &config(20, 0.0, 0))
            .unwrap_err();
        assert!(matches!(err, Error::SequenceTooLong { .. }), "{err}");
        let fits = engine.open_sequence(&[1, 2], &config(15, 0.0, 0)).unwrap();
        run_to_end(&mut engine, fits.id);
        run_to_end(&mut engine, short.id);
        // The single-sequence path serves the refused request.
        let (tokens, _) = alone(&mut engine, &long, &config(4, 0.0, 0));
        assert_eq!(tokens.len(), 4);
    }
}
