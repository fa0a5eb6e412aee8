//! The disk pipeline: the layers whose weights do not fit the device budget stay in the file
//! and stream through a ring of device buffers ([`RING_SLOTS`] layers), each layer's matrices
//! read and repacked on a loader thread while the layers before it compute.
//!
//! Every forward step (a decoded token, a prefill chunk) runs the streamed layers in order, so
//! the loader produces them in that order, round and round, ahead of the steps: the first
//! streamed layer of the next step is read while this step's last layers compute. A bounded
//! channel keeps at most [`RING_SLOTS`] packed layers on the host.
//!
//! Ordering: a slot is written with `Queue::write_buffer`, which takes effect after everything
//! submitted before the write and before everything submitted after it. So each streamed
//! layer's dispatches are submitted on their own, after its slot is written, and its slot is
//! written again (for the layer [`RING_SLOTS`] further on) only after that submission. To bound
//! the host copies those writes stage, at most [`RING_SLOTS`] streamed submissions are in
//! flight: the oldest is waited for before another slot is written.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pio_gguf::GgufFile;
use pio_gpu::{wgpu::SubmissionIndex, Gpu, WeightSlot};

use super::upload::{LayerShapes, PackedLayer};
use crate::error::{Error, Result};
use crate::models::ModelSpec;
use crate::storage::WeightStorage;
use crate::weights::ModelTensors;

/// Layers the ring holds at once: one being computed while the next is written.
pub const RING_SLOTS: usize = 2;

/// The device buffers of one ring slot, one per fused matrix of a layer, each as large as the
/// largest of its kind among the streamed layers.
pub(super) struct Slot {
    pub qkv: WeightSlot,
    pub output: WeightSlot,
    pub gate_up: WeightSlot,
    pub down: WeightSlot,
}

impl Slot {
    /// A slot for any of the layers of `shapes`.
    fn new(gpu: &Gpu, index: usize, shapes: &[LayerShapes]) -> Result<Self> {
        let largest = |pick: fn(&LayerShapes) -> u64| shapes.iter().map(pick).max().unwrap_or(0);
        let slot = |what: &str, bytes: u64| {
            WeightSlot::new(gpu, &format!("ring slot {index} {what}"), bytes)
        };
        Ok(Slot {
            qkv: slot("qkv", largest(|s| s.qkv.device_bytes()))?,
            output: slot("output", largest(|s| s.output.device_bytes()))?,
            gate_up: slot("gate/up", largest(|s| s.gate_up.device_bytes()))?,
            down: slot("down", largest(|s| s.down.device_bytes()))?,
        })
    }

    fn write(&self, gpu: &Gpu, layer: &PackedLayer) -> Result<()> {
        self.qkv.write(gpu, &layer.qkv)?;
        self.output.write(gpu, &layer.output)?;
        self.gate_up.write(gpu, &layer.gate_up)?;
        self.down.write(gpu, &layer.down)?;
        Ok(())
    }
}

/// What the streaming has done since the model was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamStats {
    /// The layers that stream (the rest are resident).
    pub layers: usize,
    /// Device bytes of the ring.
    pub ring_bytes: u64,
    /// Layers written into the ring.
    pub layers_written: u64,
    /// Bytes written into the ring.
    pub bytes_written: u64,
    /// Time the loader spent reading and repacking layers.
    pub load_time: Duration,
    /// Time steps waited for the loader: the part of [`StreamStats::load_time`] not hidden
    /// behind compute.
    pub wait_time: Duration,
}

/// A packed layer (or why it could not be read), with the time its reading took.
type Loaded = Result<(usize, PackedLayer, Duration)>;

/// The streamed layers of a model: the ring, the loader thread and its output.
pub(super) struct LayerStream {
    layers: Range<usize>,
    slots: Vec<Slot>,
    /// Dropped first, which stops the loader (its next send fails).
    packed: Option<Receiver<Loaded>>,
    loader: Option<JoinHandle<()>>,
    /// Submissions of streamed layers that may still run, oldest first.
    in_flight: Mutex<VecDeque<SubmissionIndex>>,
    stats: Mutex<StreamStats>,
}

impl LayerStream {
    /// Allocates the ring for the layers `layers` (their shapes are `shapes`, in order) and
    /// starts the loader reading them from the file at `path`, which is opened again for the
    /// loader (a file in memory cannot stream) and must still hold those shapes.
    pub fn start(
        gpu: &Gpu,
        path: &Path,
        spec: &ModelSpec,
        storage: WeightStorage,
        layers: Range<usize>,
        shapes: &[LayerShapes],
    ) -> Result<Self> {
        let file = GgufFile::open(path).map_err(|e| {
            Error::Streaming(format!(
                "layers stream from the model file, which must be on disk: {e}"
            ))
        })?;
        let tensors = ModelTensors::from_gguf(&file, spec)?;
        for (layer, expected) in layers.clone().zip(shapes) {
            if LayerShapes::of(spec, &tensors.layers[layer], storage)? != *expected {
                return Err(Error::Streaming(format!(
                    "{} changed since it was loaded (layer {layer})",
                    path.display()
                )));
            }
        }
        drop(tensors);
        let slots = (0..RING_SLOTS)
            .map(|i| Slot::new(gpu, i, shapes))
            .collect::<Result<Vec<_>>>()?;
        let ring_bytes = slots
            .iter()
            .flat_map(|s| [&s.qkv, &s.output, &s.gate_up, &s.down])
            .map(WeightSlot::size)
            .sum();
        let (sender, receiver) = sync_channel(RING_SLOTS);
        let (spec, range) = (spec.clone(), layers.clone());
        let loader = std::thread::Builder::new()
            .name("pio layer loader".into())
            .spawn(move || load_layers(file, spec, storage, range, sender))
            .map_err(|e| Error::Streaming(format!("starting the loader thread: {e}")))?;
        Ok(LayerStream {
            stats: Mutex::new(StreamStats {
                layers: layers.len(),
                ring_bytes,
                ..StreamStats::default()
            }),
            layers,
            slots,
            packed: Some(receiver),
            loader: Some(loader),
            in_flight: Mutex::new(VecDeque::new()),
        })
    }

    /// The ring slot of streamed layer `layer`.
    pub fn slot(&self, layer: usize) -> &Slot {
        &self.slots[(layer - self.layers.start) % RING_SLOTS]
    }

    /// Whether `layer` streams.
    pub fn streams(&self, layer: usize) -> bool {
        self.layers.contains(&layer)
    }

    /// Writes `layer`'s weights into its slot, once the submission that last used the slot
    /// may be overwritten: takes the layer from the loader (waiting for it if it is not read
    /// yet).
    pub fn write(&self, gpu: &Gpu, layer: usize) -> Result<()> {
        {
            let mut in_flight = self.in_flight.lock().expect("not poisoned");
            while in_flight.len() >= RING_SLOTS {
                let oldest = in_flight.pop_front().expect("not empty");
                gpu.wait_for(oldest)?;
            }
        }
        let packed = self.packed.as_ref().expect("set until dropped");
        let waiting = Instant::now();
        // After a failed step the loader may be ahead of `layer`: skip to it.
        let (packed, load_time) = loop {
            let (index, packed, load_time) = packed.recv().map_err(|_| {
                Error::Streaming("the loader thread stopped (it panicked)".into())
            })??;
            if index == layer {
                break (packed, load_time);
            }
        };
        let wait = waiting.elapsed();
        self.slot(layer).write(gpu, &packed)?;
        let mut stats = self.stats.lock().expect("not poisoned");
        stats.layers_written += 1;
        stats.bytes_written += packed.device_bytes();
        stats.load_time += load_time;
        stats.wait_time += wait;
        Ok(())
    }

    /// Records the submission of a streamed layer's dispatches.
    pub fn submitted(&self, index: SubmissionIndex) {
        self.in_flight
            .lock()
            .expect("not poisoned")
            .push_back(index);
    }

    /// Forgets the submissions in flight: the caller waited for all of them.
    pub fn all_done(&self) {
        self.in_flight.lock().expect("not poisoned").clear();
    }

    /// What the streaming has done so far.
    pub fn stats(&self) -> StreamStats {
        *self.stats.lock().expect("not poisoned")
    }
}

impl Drop for LayerStream {
    fn drop(&mut self) {
        // The loader's next send fails once the receiver is gone, and it returns.
        drop(self.packed.take());
        if let Some(loader) = self.loader.take() {
            let _ = loader.join();
        }
    }
}

/// The loader thread: reads and packs the layers `layers` of `file`, in order and round
/// again, until `out` is dropped.
fn load_layers(
    file: GgufFile,
    spec: ModelSpec,
    storage: WeightStorage,
    layers: Range<usize>,
    out: SyncSender<Loaded>,
) {
    let tensors = match ModelTensors::from_gguf(&file, &spec) {
        Ok(tensors) => tensors,
        Err(e) => {
            let _ = out.send(Err(e));
            return;
        }
    };
    for layer in layers.cycle() {
        let start = Instant::now();
        let packed = PackedLayer::pack(&spec, layer, &tensors.layers[layer], storage)
            .map(|packed| (layer, packed, start.elapsed()));
        if out.send(packed).is_err() {
            return;
        }
    }
}
