//! Batched generation (continuous batching's plugin half): sequences are opened one at a time —
//! each prompt processed on its own — and then decoded together, one token each per step, in
//! one forward pass over the block pool they share ([`crate::kv_pool`]: a sequence's keys and
//! values are in blocks of 16 positions listed by its block table); sequences join and leave
//! between steps.
//!
//! **Memory.** A sequence may hold as many positions as the model's context, like one
//! generated alone. `open` reserves in the pool every block the sequence may need (prompt plus
//! `max_new_tokens`, less the blocks of a shared prefix); when the pool cannot give them now it
//! refuses with [`Error::KvPoolFull`] (`out_of_memory`, naming the pool's size): the server
//! waits for open sequences to finish and tries again, or runs the request alone when nothing
//! else is open. A running sequence therefore always has its next block.
//!
//! **Prefix sharing.** Prompts sharing a prefix with an open or a closed sequence share its
//! full blocks and copy the part of a block they share ([`crate::kv_pool`]); only the rest is
//! computed (at least the prompt's last token, whose logits give the first sampled token): a
//! follow-up chat turn, or requests sharing a system prompt, skip most of their prefill, and
//! the shared blocks are held once.
//!
//! `open` keeps the logits of the prompt's last position; a sequence's first step samples from
//! them, and every later step feeds the sequence's last token through the model together with
//! the other sequences'. Each sequence samples on the host with its own sampler, under its step
//! options: logits outside a grammar's allowed tokens masked to −∞ first, log-probabilities
//! taken from the unmasked row. The weights are read once per step for all sequences, which is
//! where batching gains: the per-step cost grows far slower than the number of sequences. The
//! kit decides what the tokens become and when a sequence ends.

use crate::error::{Error, Result};
use crate::kv_pool::{BlockPool, BlockTable};
use crate::runtime::{CacheMap, GpuModel};
use crate::sampler::Sampler;
use crate::sequence::Tokens;
use pio_plugin_kit::{Logprobs, StepOptions};

/// Blocks of the pool by default: the memory of the 8 batch slots of 1024 positions the
/// plugin reserved before the cache was paged (SmolLM2-135M: 46 KiB per position, 360 MiB).
pub const DEFAULT_KV_BLOCKS: usize = 512;

/// A batched sequence: its blocks in the pool and its tokens.
pub struct Batched {
    table: BlockTable,
    /// Prompt tokens whose keys and values were shared or copied from earlier sequences.
    reused: usize,
    tokens: Tokens,
    /// The logits of the prompt's last position, until the first step samples from them.
    prompt_logits: Option<Vec<f32>>,
}

impl Batched {
    /// Prompt tokens whose keys and values were shared or copied from earlier sequences.
    pub fn reused(&self) -> usize {
        self.reused
    }
}

/// The batched sequences' block pool, allocated on the device at the first [`Batch::open`].
pub struct Batch {
    pool: BlockPool,
}

impl Batch {
    /// A pool of `blocks` blocks, none allocated yet.
    pub fn new(blocks: usize) -> Self {
        Batch {
            pool: BlockPool::new(blocks),
        }
    }

    /// The pool's bookkeeping (its size and what is free).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// The pool's bookkeeping, to drop its cache.
    pub fn pool_mut(&mut self) -> &mut BlockPool {
        &mut self.pool
    }

    /// Opens a sequence: shares or copies the longest prefix of `prompt` the pool holds,
    /// processes the rest and keeps its last logits (the first step samples from them). The
    /// sequence may hold its prompt and `max_new_tokens` tokens but the last, up to the
    /// model's context; their blocks are reserved now, or the sequence is refused with
    /// [`Error::KvPoolFull`]. The caller has checked the prompt against the context.
    pub fn open(
        &mut self,
        model: &mut GpuModel,
        prompt: &[u32],
        max_new_tokens: usize,
        sampler: Sampler,
    ) -> Result<Batched> {
        model.reserve_batch_cache(self.pool.n_blocks())?;
        // Every token but the last is fed back: the sequence may need this many positions.
        let positions = (prompt.len() + max_new_tokens.max(1) - 1).min(model.context());
        let mut table = self
            .pool
            .open(prompt, positions, |copy| model.copy_batch_block(copy))?;
        let reused = table.len();
        let fed = &prompt[reused..];
        let logits = self
            .pool
            .rows(&mut table, fed.len())
            .map_err(Error::from)
            .and_then(|rows| {
                let positions: Vec<u32> = (reused as u32..prompt.len() as u32).collect();
                let cache = CacheMap {
                    rows: &rows,
                    sequences: &vec![0; fed.len()],
                    tables: &[table.blocks()],
                };
                model.forward_batch(fed, &positions, cache, false)
            });
        match logits {
            Ok(logits) => {
                self.pool.record(&mut table, fed);
                Ok(Batched {
                    table,
                    reused,
                    tokens: Tokens::unsampled(sampler, prompt),
                    prompt_logits: Some(logits),
                })
            }
            Err(error) => {
                self.pool.close(table);
                Err(error)
            }
        }
    }

    /// The next token of each of `sequences`, each chosen under its `options`: those at their
    /// first step sample from their prompt's logits; the others feed their last token through
    /// the model together.
    pub fn step(
        &mut self,
        model: &mut GpuModel,
        sequences: &mut [&mut Batched],
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
            // A sequence starting a block takes it from its reservation.
            let mut rows = Vec::with_capacity(fed.len());
            for &i in &fed {
                rows.extend(self.pool.rows(&mut sequences[i].table, 1)?);
            }
            let tables: Vec<&[u32]> = fed.iter().map(|&i| sequences[i].table.blocks()).collect();
            let cache = CacheMap {
                rows: &rows,
                sequences: &(0..fed.len() as u32).collect::<Vec<_>>(),
                tables: &tables,
            };
            let logits = model.forward_batch(&tokens, &positions, cache, true)?;
            let vocab = logits.len() / fed.len();
            for ((&i, &token), row) in fed.iter().zip(&tokens).zip(logits.chunks_exact(vocab)) {
                let sequence = &mut *sequences[i];
                self.pool.record(&mut sequence.table, &[token]);
                chosen[i] = Some(sequence.tokens.choose(row, &options[i])?);
            }
        }
        Ok(chosen.into_iter().flatten().collect())
    }

    /// Returns a closed sequence's blocks to the pool, where those holding keys and values stay
    /// cached for a later prompt with the same prefix until the pool needs them.
    pub fn close(&mut self, sequence: Batched) {
        self.pool.close(sequence.table);
    }
}

#[cfg(test)]
mod tests {
    use pio_plugin_kit::api::{
        ActivateOptions, ErrorKind, FinishReason, GenerationParams, Plugin, SequenceRequest,
        TokenEvent,
    };

    use crate::engine::ModelSummary;
    use crate::memory::MemoryConfig;
    use crate::test_model::{
        active_plugin, alone, details, run_to_end, sampled, tiny_file, tokens_request, LlamaPlugin,
        TinyConfig,
    };

    /// The tiny model with a 64-position context and a pool of `kv_blocks` blocks.
    fn plugin(dir: &tempfile::TempDir, kv_blocks: usize) -> LlamaPlugin {
        let model = tiny_file(dir, &TinyConfig::default());
        active_plugin(
            serde_json::json!({ "model": model, "kv_blocks": kv_blocks }),
            64,
        )
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

    /// `n` tokens from a simple rule; those of different `k` (below 96) differ from the first.
    fn prompt(n: usize, k: usize) -> Vec<u32> {
        (0..n).map(|i| ((i * k + 3 * k + 1) % 290) as u32).collect()
    }

    #[test]
    fn batched_sequences_generate_what_they_generate_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut plugin = plugin(&dir, 16);
        let requests = [
            tokens_request(&prompt(9, 31), sampled(12, 0.0, 0)),
            // Grows past a block boundary while the others run.
            tokens_request(&prompt(17, 7), sampled(20, 0.9, 42)),
            tokens_request(&prompt(4, 97), sampled(10, 1.1, 7)),
            // Its prompt spans three blocks: it joins with a long prefill.
            tokens_request(&prompt(40, 13), sampled(8, 0.0, 0)),
        ];
        let want = alone_events(&mut plugin, &requests);

        // The first two start together; the third joins after two steps, the fourth after 7.
        let open = (0..2)
            .map(|i| (plugin.open_sequence(&requests[i]).unwrap().id, i))
            .collect();
        let got = step_together(&mut plugin, open, requests.len(), |plugin, step, open| {
            for (at, i) in [(2, 2), (7, 3)] {
                if step == at {
                    open.push((plugin.open_sequence(&requests[i]).unwrap().id, i));
                }
            }
        });
        assert_eq!(got, want);
        assert!(want.iter().all(|events| events.len() > 1));
        assert_eq!(details(&plugin)["largest_batch"], 4);
        assert_eq!(details(&plugin)["open_sequences"], 0);
    }

    #[test]
    fn an_exhausted_pool_refuses_new_sequences_until_one_closes() {
        let dir = tempfile::tempdir().unwrap();
        // Two blocks: 32 positions.
        let mut plugin = plugin(&dir, 2);
        // 3 prompt tokens and up to 20 new ones: 22 positions, both blocks reserved.
        let a = plugin
            .open_sequence(&tokens_request(&[5, 6, 7], GenerationParams::greedy(20)))
            .unwrap()
            .id;
        assert_eq!(details(&plugin)["kv_blocks_available"], 0);
        let b = tokens_request(&[50, 51], GenerationParams::greedy(2));
        let err = plugin.open_sequence(&b).unwrap_err();
        assert_eq!(err.kind, ErrorKind::OutOfMemory, "{err}");
        assert_eq!(
            err.message.as_str(),
            "the KV cache pool of 2 blocks of 16 positions cannot hold a sequence of up to 3 \
             positions now: it needs 1 more blocks, 0 are free or cached"
        );
        assert_eq!(details(&plugin)["open_sequences"], 1);
        let events = run_to_end(&mut plugin, a);
        assert_eq!(events.len(), 20);
        // The blocks are back (cached: the pool gives them up for the new sequence).
        assert_eq!(details(&plugin)["kv_blocks_available"], 2);
        let b = plugin.open_sequence(&b).unwrap().id;
        assert_eq!(run_to_end(&mut plugin, b).len(), 2);
        // A sequence the whole pool cannot hold is refused the same way; it runs alone.
        let long = tokens_request(&prompt(40, 3), GenerationParams::greedy(4));
        let err = plugin.open_sequence(&long).unwrap_err();
        assert_eq!(err.kind, ErrorKind::OutOfMemory, "{err}");
        assert!(err.message.contains("up to 43 positions"), "{err}");
        let (response, _) = alone(&mut plugin, &long, None);
        assert_eq!(response.unwrap().tokens.len(), 4);
    }

    #[test]
    fn a_prompt_that_fills_the_context_gets_one_token_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let mut plugin = plugin(&dir, 4);
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
    fn a_prefix_of_a_closed_sequence_is_reused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut plugin = plugin(&dir, 16);
        let first = prompt(12, 13);
        let opened = plugin
            .open_sequence(&tokens_request(&first, GenerationParams::greedy(5)))
            .unwrap();
        assert_eq!(opened.cached_tokens, 0, "nothing cached yet");
        let answer: Vec<u32> = run_to_end(&mut plugin, opened.id)
            .iter()
            .map(|e| e.token)
            .collect();

        // A follow-up turn: the first prompt, the answer and more; everything fed before is
        // reused (the answer's last token was returned but never fed), from a partial block.
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
        let other = prompt(6, 5);
        let request = tokens_request(&other, GenerationParams::greedy(5));
        let opened = plugin.open_sequence(&request).unwrap();
        assert_eq!(opened.cached_tokens, 0);
        run_to_end(&mut plugin, opened.id);
        let opened = plugin.open_sequence(&request).unwrap();
        assert_eq!(opened.cached_tokens as usize, other.len() - 1);
    }

    #[test]
    fn open_sequences_share_a_prompt_prefix_and_copy_its_partial_block() {
        let dir = tempfile::tempdir().unwrap();
        // Three sequences of up to 47 positions: 9 blocks unshared; shared, the second and
        // third hold only their own last block(s).
        let mut plugin = plugin(&dir, 7);
        let system = prompt(36, 11);
        let with = |tail: &[u32]| [system.as_slice(), tail].concat();
        let requests = [
            tokens_request(&system, sampled(10, 0.0, 0)),
            // Shares 2 full blocks and copies 4 rows of the first's third block.
            tokens_request(&with(&[3, 4]), sampled(9, 0.8, 5)),
            // The same prompt as the first: 35 tokens reused.
            tokens_request(&system, sampled(10, 1.0, 9)),
        ];
        let want = alone_events(&mut plugin, &requests);
        let mut reused = Vec::new();
        let open = (0..3)
            .map(|i| {
                let opened = plugin.open_sequence(&requests[i]).unwrap();
                reused.push(opened.cached_tokens);
                (opened.id, i)
            })
            .collect();
        // The alone runs left nothing in the pool: the first computes all, the others share.
        assert_eq!(reused, [0, 36, 35]);
        let got = step_together(&mut plugin, open, requests.len(), |_, _, _| {});
        assert_eq!(got, want, "sharing and copy-on-write change no token");
    }

    #[test]
    fn blocks_of_closed_sequences_are_reused_by_others_without_mixing() {
        let dir = tempfile::tempdir().unwrap();
        // Four blocks: each sequence below evicts the previous ones' cached blocks.
        let mut plugin = plugin(&dir, 4);
        let requests: Vec<SequenceRequest> = (0..5)
            .map(|k| tokens_request(&prompt(20 + 7 * k, 3 + 2 * k), sampled(12, 0.7, k as u64)))
            .collect();
        let want = alone_events(&mut plugin, &requests);
        for (request, want) in requests.iter().zip(&want) {
            let opened = plugin.open_sequence(request).unwrap();
            assert_eq!(opened.cached_tokens, 0);
            assert_eq!(&run_to_end(&mut plugin, opened.id), want);
        }
    }

    #[test]
    fn a_pool_over_the_budget_is_refused_at_activation() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_file(&dir, &TinyConfig::default());
        let summary = ModelSummary::read(
            &pio_gguf::GgufFile::open(&model).unwrap(),
            crate::storage::WeightStorage::AsStored,
        )
        .unwrap();
        let needs = |kv_blocks| {
            summary
                .memory_needs(&MemoryConfig {
                    context: 64,
                    max_batch: 64,
                    kv_blocks,
                    kv_type: pio_gpu::KvType::F32,
                    streamed_layers: 0,
                    devices: 1,
                })
                .device
        };
        // A budget of exactly what 4 blocks need; the pool, allocated at the first sequence,
        // takes what the accounting says.
        let budget = needs(4);
        let pool_bytes = budget - needs(0);
        for (kv_blocks, fits) in [(4, true), (5, false)] {
            let mut plugin = LlamaPlugin::new().unwrap();
            let config =
                serde_json::json!({"model": model, "kv_blocks": kv_blocks, "tuning": "off"});
            plugin.initialize(config).unwrap();
            let activated = plugin.activate(&ActivateOptions {
                context_length: 64,
                memory_budget_bytes: budget,
                ..ActivateOptions::default()
            });
            match fits {
                true => {
                    activated.unwrap();
                    let before = plugin.stats().device_memory_bytes;
                    let opened = plugin
                        .open_sequence(&tokens_request(&[1, 2], GenerationParams::greedy(3)))
                        .unwrap();
                    run_to_end(&mut plugin, opened.id);
                    let after = plugin.stats().device_memory_bytes;
                    // And the 16-byte parameters of each dispatch of the two steps the
                    // sequence ran (its prompt's and its decoded tokens'), which stay built:
                    // a token's dispatches but the device sampler's (batched steps sample on
                    // the host).
                    let per_token = details(&plugin)["dispatches_per_token"].as_u64().unwrap();
                    assert_eq!(after - before, pool_bytes + 2 * (per_token - 1) * 16);
                }
                false => {
                    let err = activated.unwrap_err();
                    assert_eq!(err.kind, ErrorKind::OutOfMemory, "{err}");
                    assert!(err.message.contains("budget"), "{err}");
                }
            }
        }
    }
}
