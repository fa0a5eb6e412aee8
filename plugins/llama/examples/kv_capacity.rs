//! How many batched sequences a KV memory holds: the paged pool (`kv_pool::BlockPool`, the
//! allocator the plugin runs) against the batch slots it replaced (8 slots of 1024 positions,
//! every slot grown to the longest sequence's power of two). Prints KV bytes per token of the
//! cached models (for each KV cache type) and, for mixes of chat lengths, the bytes each design
//! holds and how many sequences fit in the default pool.
//!
//! `cargo run -p pio-plugin-llama --example kv_capacity`

use pio_gpu::KvType;
use pio_plugin_llama::batch::DEFAULT_KV_BLOCKS;
use pio_plugin_llama::engine::ModelSummary;
use pio_plugin_llama::kv_pool::{BlockPool, PoolFull, KV_BLOCK_ROWS};
use pio_plugin_llama::storage::WeightStorage;

/// The slots' design: `slots` slots of 1024 positions, all grown to the next power of two of
/// the longest sequence.
fn slot_positions(slots: usize, longest: usize) -> usize {
    slots * longest.next_power_of_two().max(1024)
}

/// One kind of request: prompt tokens, tokens generated, `max_tokens`, and how many of its
/// prompt tokens are a system prompt every request of the mix shares.
#[derive(Clone, Copy)]
struct Chat {
    prompt: usize,
    answer: usize,
    max_tokens: usize,
    system: usize,
}

/// Opens sequences of `chat` in a fresh default pool until it refuses one; answers how many it
/// held and the blocks they took once every answer is written.
fn fill(chat: Chat) -> (usize, usize) {
    let mut pool = BlockPool::new(DEFAULT_KV_BLOCKS);
    let mut tables = Vec::new();
    for n in 0.. {
        let prompt: Vec<u32> = (0..chat.prompt as u32)
            .map(|i| match (i as usize) < chat.system {
                true => i,
                false => 100_000 + n * 10_000 + i,
            })
            .collect();
        let positions = chat.prompt + chat.max_tokens - 1;
        let opened = pool.open(&prompt, positions, |_| Ok::<_, PoolFull>(()));
        let Ok(mut table) = opened else { break };
        let rest = &prompt[table.len()..];
        pool.rows(&mut table, rest.len()).expect("reserved");
        pool.record(&mut table, rest);
        tables.push(table);
    }
    let held = tables.len();
    let used: usize = tables
        .iter()
        .map(|t| t.blocks().len())
        .sum::<usize>()
        .min(DEFAULT_KV_BLOCKS);
    (held, used)
}

fn main() {
    let block = KV_BLOCK_ROWS as usize;
    for name in [pio_testkit::SMOLLM2, pio_testkit::GEMMA3] {
        let summary = pio_testkit::find_model(name)
            .and_then(|path| pio_gguf::GgufFile::open(&path).ok())
            .and_then(|file| ModelSummary::read(&file, WeightStorage::AsStored).ok());
        match summary {
            Some(summary) => {
                let hp = &summary.spec.hparams;
                for kv_type in KvType::ALL {
                    let per_block = hp.kv_shape(kv_type).block_bytes();
                    println!(
                        "{name}: {} KV bytes per token ({}, {} layers x {} values x K,V); \
                         default pool {DEFAULT_KV_BLOCKS} blocks = {:.0} MiB",
                        per_block / u64::from(KV_BLOCK_ROWS),
                        kv_type.name(),
                        hp.n_layer,
                        hp.kv_dim(0),
                        (DEFAULT_KV_BLOCKS as u64 * per_block) as f64 / (1 << 20) as f64
                    );
                }
            }
            None => println!("{name}: not cached (pio models fetch)"),
        }
    }

    println!("\nmix of 6 chats of 300 positions and 2 of 1500 (positions held):");
    let mix = [300, 300, 300, 300, 300, 300, 1500, 1500];
    let paged: usize = mix.iter().map(|&p: &usize| p.div_ceil(block) * block).sum();
    let slots = slot_positions(8, 1500);
    println!(
        "  slots {slots}, paged {paged} ({:.1}x less)",
        slots as f64 / paged as f64
    );

    println!(
        "\nsequences held by {DEFAULT_KV_BLOCKS} blocks (8 with the slots of the same memory):"
    );
    for (label, chat) in [
        (
            "short chat: 100-token prompt, 150 answered, max_tokens 256",
            Chat {
                prompt: 100,
                answer: 150,
                max_tokens: 256,
                system: 0,
            },
        ),
        (
            "same with max_tokens 128",
            Chat {
                prompt: 100,
                answer: 100,
                max_tokens: 128,
                system: 0,
            },
        ),
        (
            "shared 256-token system prompt + 50 user tokens, max_tokens 128",
            Chat {
                prompt: 306,
                answer: 100,
                max_tokens: 128,
                system: 256,
            },
        ),
    ] {
        let (held, used) = fill(chat);
        let positions = chat.prompt + chat.answer;
        let by_use = DEFAULT_KV_BLOCKS / positions.div_ceil(block);
        println!(
            "  {label}: {held} open at once ({:.1}x the slots; blocks taken after the prompts: \
             {used}); {by_use} if held by use rather than reservation",
            held as f64 / 8.0
        );
    }
}
