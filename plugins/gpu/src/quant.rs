//! Weight matrices kept in their (quantized) storage type on the device.
//!
//! GGUF stores blocks of 32 elements in 18- to 34-byte records and K-quant super-blocks of 256
//! elements whose sub-block scales are packed 6 or 8 bits wide; neither is 4-byte aligned or
//! cheap to index from a kernel. At upload every GGUF block is repacked into device blocks of
//! 32 elements, each a few whole 32-bit words that hold the block's scale (and minimum) as f32
//! and its codes bit for bit:
//!
//! | dtype | words per 32 elements | device block (words) | bits/weight: device, file |
//! |---|---|---|---|
//! | F32  | 32 | the 32 values | 32, 32 |
//! | F16  | 16 | pairs of halves, element `2i` in the low 16 bits of word `i` | 16, 16 |
//! | Q4_0 | 5  | `d`; 4 words of nibbles | 5, 4.5 |
//! | Q4_1 | 6  | `d`; `m`; 4 words of nibbles | 6, 5 |
//! | Q5_0 | 6  | `d`; 4 words of low nibbles; `qh` | 6, 5.5 |
//! | Q5_1 | 7  | `d`; `m`; 4 words of low nibbles; `qh` | 7, 6 |
//! | Q8_0 | 9  | `d`; 8 words of four i8 each | 9, 8.5 |
//! | Q4_K | 6  | as Q4_1, per 32-element sub-block: `d·sc`; `−dmin·m`; nibbles | 6, 4.5 |
//! | Q5_K | 7  | as Q5_1, per sub-block: `d·sc`; `−dmin·m`; low nibbles; `qh` | 7, 5.5 |
//! | Q6_K | 8  | `d·sc` of elements 0-15; `d·sc` of 16-31; 4 words of low nibbles of the code `q` (0..=63); 2 words of its high 2 bits | 8, 6.5625 |
//!
//! Scales and minimums are f32 bits (`d`, `m` from f16; a K-quant sub-block's `d·sc` and
//! `dmin·m` are exact in f32: an 11-bit significand times a 6- or 8-bit integer), so a kernel
//! spends no instruction on scale decoding and dequantizes exactly like GGML: `(q − 8)·d`
//! (Q4_0), `(q − 16)·d` (Q5_0), `q·d + m` (Q4_1, Q5_1, Q4_K, Q5_K), `q·d` (Q8_0), `(q − 32)·d`
//! (Q6_K, with the scale of the element's half). The price is memory: a K-quant keeps one f32
//! scale and minimum per 32 elements where the file has 12 bits, so Q4_K takes 6 bits per
//! weight on the device against 4.5 in the file (a layout decoding the 6-bit scales in the
//! kernel would take 4.6 but cost extra loads per block, and loads are what kernels pay for on
//! llvmpipe).
//!
//! Nibble and byte words keep GGUF's 32-element byte order: byte `j` of quant word `w` holds,
//! for the nibble formats, element `4w + j` in its low nibble and element `16 + 4w + j` in its
//! high nibble (K-quant sub-blocks are rearranged into this order); for Q8_0 element `4w + j`.
//! `qh` has bit 4 of element `e` at bit `e`; Q6_K's high words have the high 2 bits of element
//! `e` (first word) and `16 + e` (second word) at bit `2e`, `e < 16`.
//!
//! Rows are then interleaved in groups of [`ROW_GROUP`] (the row count padded with zero rows to a
//! multiple of it): word `w` of device block `b` of row `r` is at
//! `((r / ROW_GROUP * blocks_per_row + b) * block_words + w) * ROW_GROUP + r % ROW_GROUP`.
//! A matmul invocation per row then reads the word next to its neighbour's, which matters on
//! SIMD-on-CPU drivers like llvmpipe (each lane's load is a separate scalar load; neighbours share
//! cache lines) and coalesces on real GPUs. The kernels dequantize with
//! `shaders/common/quant.wgsl` and `shaders/common/row_group.wgsl`.

use std::sync::Arc;

use half::f16;
use pio_gguf::{SuperBlock, TensorType};

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{GpuError, Result};
use crate::quantize::quantize;

/// Elements per device block of every dtype (GGUF's K-quant super-blocks hold 8).
pub const BLOCK_ELEMENTS: usize = 32;

/// Rows interleaved word by word in the device layout (`ROW_GROUP` in `quant.wgsl`).
pub const ROW_GROUP: usize = 8;

/// Storage type of a weight matrix, in GGML's block layouts.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightDtype {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// Blocks of 32: f16 scale `d`, 16 bytes of 4-bit `q`; value = (q − 8)·d.
    Q4_0,
    /// Blocks of 32: f16 scale `d`, f16 minimum `m`, 16 bytes of 4-bit `q`; value = q·d + m.
    Q4_1,
    /// Blocks of 32: f16 scale `d`, 5-bit `q`; value = (q − 16)·d.
    Q5_0,
    /// Blocks of 32: f16 scale `d`, f16 minimum `m`, 5-bit `q`; value = q·d + m.
    Q5_1,
    /// Blocks of 32: f16 scale `d`, 32 signed bytes `q`; value = q·d.
    Q8_0,
    /// Super-blocks of 256: 8 sub-blocks with 6-bit scales and minimums, 4-bit `q`.
    Q4_K,
    /// Super-blocks of 256: 8 sub-blocks with 6-bit scales and minimums, 5-bit `q`.
    Q5_K,
    /// Super-blocks of 256: 16 sub-blocks with 8-bit scales, 6-bit `q`.
    Q6_K,
}

impl WeightDtype {
    /// All supported dtypes.
    pub const ALL: [Self; 10] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// The GGUF tensor type of the same layout.
    pub fn gguf_type(self) -> TensorType {
        match self {
            Self::F32 => TensorType::F32,
            Self::F16 => TensorType::F16,
            Self::Q4_0 => TensorType::Q4_0,
            Self::Q4_1 => TensorType::Q4_1,
            Self::Q5_0 => TensorType::Q5_0,
            Self::Q5_1 => TensorType::Q5_1,
            Self::Q8_0 => TensorType::Q8_0,
            Self::Q4_K => TensorType::Q4_K,
            Self::Q5_K => TensorType::Q5_K,
            Self::Q6_K => TensorType::Q6_K,
        }
    }

    /// The dtype storing GGUF tensors of type `dtype`, if the kernels read it.
    pub fn from_gguf_type(dtype: TensorType) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.gguf_type() == dtype)
    }

    /// GGML's lowercase name of the dtype: `f32`, `f16`, `q4_0`, ..., `q6_k` (as in
    /// configuration files).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q4_K => "q4_k",
            Self::Q5_K => "q5_k",
            Self::Q6_K => "q6_k",
        }
    }

    /// The dtype called `name` (see [`WeightDtype::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|dtype| dtype.name() == name)
    }

    /// Elements per GGUF block: 32, or 256 for the K-quants. Row lengths are a multiple of it.
    pub fn block_elements(self) -> usize {
        match self {
            Self::F32 | Self::F16 => BLOCK_ELEMENTS,
            _ => self.gguf_block().0,
        }
    }

    /// Elements and bytes of one GGUF block (every dtype's type is one pio-gguf sizes).
    fn gguf_block(self) -> (usize, usize) {
        let t = self.gguf_type();
        let size = |v: Option<u64>| v.expect("a known GGUF type") as usize;
        (size(t.block_size()), size(t.type_size()))
    }

    /// Bytes one GGUF row of `cols` elements takes (`cols` must be a multiple of
    /// [`WeightDtype::block_elements`]).
    pub fn gguf_row_bytes(self, cols: usize) -> usize {
        let (block, bytes) = self.gguf_block();
        cols / block * bytes
    }

    /// Bytes one row of `cols` elements (a multiple of [`WeightDtype::block_elements`]) takes on
    /// the device once repacked: how many rows fit a buffer.
    pub fn device_row_bytes(self, cols: usize) -> u64 {
        (cols / BLOCK_ELEMENTS) as u64 * u64::from(self.packed_block_words()) * 4
    }

    /// 32-bit words one device block of 32 elements takes once repacked.
    pub(crate) fn packed_block_words(self) -> u32 {
        match self {
            Self::F32 => 32,
            Self::F16 => 16,
            Self::Q4_0 => 5,
            Self::Q4_1 | Self::Q4_K | Self::Q5_0 => 6,
            Self::Q5_1 | Self::Q5_K => 7,
            Self::Q6_K => 8,
            Self::Q8_0 => 9,
        }
    }

    /// The `DTYPE` constant of this dtype's device layout in `shaders/common/packed.wgsl`
    /// (Q4_K and Q5_K are repacked into Q4_1's and Q5_1's).
    pub(crate) fn shader_id(self) -> f64 {
        match self {
            Self::F32 => 0.0,
            Self::F16 => 1.0,
            Self::Q4_0 => 2.0,
            Self::Q4_1 | Self::Q4_K => 3.0,
            Self::Q8_0 => 4.0,
            Self::Q5_0 => 5.0,
            Self::Q5_1 | Self::Q5_K => 6.0,
            Self::Q6_K => 7.0,
        }
    }

    /// The override constants that select this dtype in kernels including `quant.wgsl`.
    pub(crate) fn shader_constants(self) -> [(&'static str, f64); 2] {
        [
            ("DTYPE", self.shader_id()),
            ("BLOCK_WORDS", f64::from(self.packed_block_words())),
        ]
    }
}

/// Checks `cols` and the raw byte count of a `rows` × `cols` GGUF matrix.
pub(crate) fn check_gguf_shape(
    context: &'static str,
    dtype: WeightDtype,
    rows: usize,
    cols: usize,
    raw_len: usize,
) -> Result<()> {
    let block = dtype.block_elements();
    if cols == 0 || cols % block != 0 {
        return Err(GpuError::shape(
            context,
            format!("{cols} columns is not a positive multiple of the {dtype:?} block, {block}"),
        ));
    }
    let expected = rows * dtype.gguf_row_bytes(cols);
    if raw_len != expected {
        return Err(GpuError::shape(
            context,
            format!("{rows}x{cols} {dtype:?} needs {expected} bytes, got {raw_len}"),
        ));
    }
    Ok(())
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

fn word_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// 32 codes (< 16 used) as the four nibble words of a device block: byte `j` of word `w` holds
/// code `4w + j` in its low nibble and `16 + 4w + j` in its high one.
fn nibble_words(codes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    (0..4).map(move |w| {
        (0..4).fold(0, |word, j| {
            let byte = (codes[4 * w + j] & 15) | (codes[16 + 4 * w + j] & 15) << 4;
            word | u32::from(byte) << (8 * j)
        })
    })
}

/// Bits `shift..shift + width` of each of `codes`, packed `width` bits apart from bit 0.
fn high_bits(codes: &[u8], shift: u32, width: u32) -> u32 {
    codes.iter().enumerate().fold(0, |word, (e, &c)| {
        word | (u32::from(c) >> shift & ((1 << width) - 1)) << (width * e as u32)
    })
}

/// Repacks one GGUF block (`block`, exactly one block's bytes) into `out`: one device block,
/// or eight for a K-quant super-block.
fn repack_block(dtype: WeightDtype, block: &[u8], out: &mut Vec<u32>) {
    match dtype {
        WeightDtype::F32 | WeightDtype::F16 => {
            out.extend(block.chunks_exact(4).map(|w| word_at(w, 0)));
        }
        WeightDtype::Q4_0 => {
            out.push(f16_at(block, 0).to_bits());
            out.extend(block[2..18].chunks_exact(4).map(|w| word_at(w, 0)));
        }
        WeightDtype::Q4_1 => {
            out.push(f16_at(block, 0).to_bits());
            out.push(f16_at(block, 2).to_bits());
            out.extend(block[4..20].chunks_exact(4).map(|w| word_at(w, 0)));
        }
        WeightDtype::Q5_0 => {
            out.push(f16_at(block, 0).to_bits());
            out.extend(block[6..22].chunks_exact(4).map(|w| word_at(w, 0)));
            out.push(word_at(block, 2));
        }
        WeightDtype::Q5_1 => {
            out.push(f16_at(block, 0).to_bits());
            out.push(f16_at(block, 2).to_bits());
            out.extend(block[8..24].chunks_exact(4).map(|w| word_at(w, 0)));
            out.push(word_at(block, 4));
        }
        WeightDtype::Q8_0 => {
            out.push(f16_at(block, 0).to_bits());
            out.extend(block[2..34].chunks_exact(4).map(|w| word_at(w, 0)));
        }
        WeightDtype::Q4_K | WeightDtype::Q5_K | WeightDtype::Q6_K => {
            let sb = SuperBlock::unpack(dtype.gguf_type(), block).expect("a K-quant block");
            for (s, codes) in sb.codes.chunks_exact(BLOCK_ELEMENTS).enumerate() {
                if dtype == WeightDtype::Q6_K {
                    // Codes −32..=31 stored as q = code + 32; sub-blocks 2s and 2s + 1.
                    let q: Vec<u8> = codes.iter().map(|&c| (c + 32) as u8).collect();
                    out.extend([sb.scales[2 * s].to_bits(), sb.scales[2 * s + 1].to_bits()]);
                    out.extend(nibble_words(&q));
                    out.extend([high_bits(&q[..16], 4, 2), high_bits(&q[16..], 4, 2)]);
                } else {
                    let q: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
                    out.extend([sb.scales[s].to_bits(), (-sb.mins[s]).to_bits()]);
                    out.extend(nibble_words(&q));
                    if dtype == WeightDtype::Q5_K {
                        out.push(high_bits(&q, 4, 1));
                    }
                }
            }
        }
    }
}

/// Repacks a whole GGUF matrix (shape already checked) into the interleaved word layout of this
/// module.
fn repack(dtype: WeightDtype, rows: usize, cols: usize, raw: &[u8]) -> Vec<u32> {
    let block_bytes = dtype.gguf_row_bytes(dtype.block_elements());
    let row_bytes = dtype.gguf_row_bytes(cols);
    let row_words = cols / BLOCK_ELEMENTS * dtype.packed_block_words() as usize;
    let mut words = vec![0u32; rows.next_multiple_of(ROW_GROUP) * row_words];
    let mut packed = Vec::with_capacity(row_words);
    for (row, raw_row) in raw.chunks_exact(row_bytes).enumerate() {
        packed.clear();
        for block in raw_row.chunks_exact(block_bytes) {
            repack_block(dtype, block, &mut packed);
        }
        // Word i of the row (block i / block_words, word i % block_words) lands at
        // (group * row_words + i) * ROW_GROUP + lane.
        let (group, lane) = (row / ROW_GROUP, row % ROW_GROUP);
        for (i, &word) in packed.iter().enumerate() {
            words[(group * row_words + i) * ROW_GROUP + lane] = word;
        }
    }
    words
}

/// The shape of a weight matrix: its storage type, rows and columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixShape {
    /// Storage type.
    pub dtype: WeightDtype,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features), a multiple of the dtype's block.
    pub cols: usize,
}

impl MatrixShape {
    /// Bytes the matrix takes on the device once repacked (rows padded to [`ROW_GROUP`]).
    pub fn device_bytes(&self) -> u64 {
        self.rows.next_multiple_of(ROW_GROUP) as u64 * self.dtype.device_row_bytes(self.cols)
    }

    /// The rows and columns in the kernels' 32-bit parameters.
    fn dims_u32(&self, context: &'static str) -> Result<(u32, u32)> {
        match (u32::try_from(self.rows), u32::try_from(self.cols)) {
            (Ok(r), Ok(c)) if self.rows > 0 => Ok((r, c)),
            _ => Err(GpuError::shape(
                context,
                format!(
                    "{}x{} is not a supported matrix shape",
                    self.rows, self.cols
                ),
            )),
        }
    }
}

/// A weight matrix repacked into the device layout on the host, not yet on a device: what
/// [`QuantMatrix::from_packed`] uploads and [`WeightSlot::write`] writes. Packing is CPU work
/// that needs no device, so it can run on another thread.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    shape: MatrixShape,
    words: Vec<u32>,
}

impl PackedMatrix {
    /// Repacks raw GGUF tensor bytes: `shape.rows` rows of `shape.cols` elements each, rows
    /// contiguous, in the dtype's GGML block layout. The columns must be a multiple of
    /// [`WeightDtype::block_elements`].
    ///
    /// Rows of several matrices of the same dtype and width may be concatenated (e.g. Q, K and
    /// V projections) to compute them with one matmul dispatch.
    pub fn pack(shape: MatrixShape, raw: &[u8]) -> Result<Self> {
        let MatrixShape { dtype, rows, cols } = shape;
        check_gguf_shape("weight upload", dtype, rows, cols, raw.len())?;
        shape.dims_u32("weight upload")?;
        Ok(Self {
            shape,
            words: repack(dtype, rows, cols, raw),
        })
    }

    /// Packs the gate and up projections of a gated FFN (each `ff` × `cols` raw GGUF bytes in
    /// `dtype`) as one `2 ff` × `cols` matrix whose row group `g` holds gate rows `4g..4g + 4`
    /// followed by up rows `4g..4g + 4`, the layout
    /// [`Epilogue::SwiGlu`](crate::Epilogue::SwiGlu) reads. `ff` must be a multiple of 4.
    pub fn pack_gate_up(
        dtype: WeightDtype,
        ff: usize,
        cols: usize,
        gate: &[u8],
        up: &[u8],
    ) -> Result<Self> {
        const HALF: usize = ROW_GROUP / 2;
        check_gguf_shape("gate upload", dtype, ff, cols, gate.len())?;
        check_gguf_shape("up upload", dtype, ff, cols, up.len())?;
        if ff % HALF != 0 {
            return Err(GpuError::shape(
                "gate/up upload",
                format!("FFN width {ff} is not a multiple of {HALF}"),
            ));
        }
        let quad = HALF * dtype.gguf_row_bytes(cols);
        let mut interleaved = Vec::with_capacity(gate.len() + up.len());
        for (g, u) in gate.chunks_exact(quad).zip(up.chunks_exact(quad)) {
            interleaved.extend_from_slice(g);
            interleaved.extend_from_slice(u);
        }
        let shape = MatrixShape {
            dtype,
            rows: 2 * ff,
            cols,
        };
        Self::pack(shape, &interleaved)
    }

    /// The matrix's shape.
    pub fn shape(&self) -> MatrixShape {
        self.shape
    }
}

/// A `rows` × `cols` weight matrix on the device, still in its storage dtype (repacked, see the
/// module docs). Used by the matmul and embedding kernels.
///
/// It owns its buffer, or is a view of a [`WeightSlot`] that holds it in turn with other
/// matrices (the disk pipeline's ring).
#[derive(Debug)]
pub struct QuantMatrix {
    dtype: WeightDtype,
    rows: u32,
    cols: u32,
    buffer: Arc<GpuBuffer>,
}

impl QuantMatrix {
    /// Uploads a matrix given as raw GGUF tensor bytes (see [`PackedMatrix::pack`]).
    pub fn upload(
        gpu: &Gpu,
        dtype: WeightDtype,
        rows: usize,
        cols: usize,
        raw: &[u8],
    ) -> Result<Self> {
        let shape = MatrixShape { dtype, rows, cols };
        Self::from_packed(gpu, &PackedMatrix::pack(shape, raw)?)
    }

    /// Uploads a matrix packed on the host.
    pub fn from_packed(gpu: &Gpu, packed: &PackedMatrix) -> Result<Self> {
        let MatrixShape { dtype, rows, cols } = packed.shape;
        let label = format!("{dtype:?} {rows}x{cols} weights");
        let buffer = Arc::new(gpu.storage_from(&label, &packed.words)?);
        Self::over(buffer, packed.shape)
    }

    /// A matrix of `shape` in `slot`: it holds whatever was last written there, which the
    /// caller makes a matrix of this shape before the kernels reading it run.
    pub fn in_slot(slot: &WeightSlot, shape: MatrixShape) -> Result<Self> {
        if shape.device_bytes() > slot.size() {
            return Err(GpuError::shape(
                "weight slot",
                format!(
                    "a {:?} {}x{} matrix takes {} bytes, over the slot {:?} of {}",
                    shape.dtype,
                    shape.rows,
                    shape.cols,
                    shape.device_bytes(),
                    slot.buffer.label(),
                    slot.size()
                ),
            ));
        }
        Self::over(Arc::clone(&slot.buffer), shape)
    }

    fn over(buffer: Arc<GpuBuffer>, shape: MatrixShape) -> Result<Self> {
        let (rows, cols) = shape.dims_u32("weight upload")?;
        Ok(Self {
            dtype: shape.dtype,
            rows,
            cols,
            buffer,
        })
    }

    /// Uploads a row-major `rows` × `cols` f32 matrix stored as `dtype` (quantized with
    /// [`quantize`](crate::quantize)): how weights that come as f32 are compressed on the
    /// device. `cols` must be a multiple of [`WeightDtype::block_elements`].
    pub fn from_f32(
        gpu: &Gpu,
        dtype: WeightDtype,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Self> {
        let block = dtype.block_elements();
        if values.len() != rows * cols || cols % block != 0 {
            return Err(GpuError::shape(
                "weight upload",
                format!(
                    "{} values do not form a {rows}x{cols} matrix with rows a multiple of \
                     {block} wide",
                    values.len()
                ),
            ));
        }
        Self::upload(gpu, dtype, rows, cols, &quantize(dtype, values)?)
    }

    /// Uploads the gate and up projections of a gated FFN (see
    /// [`PackedMatrix::pack_gate_up`]).
    pub fn upload_gate_up(
        gpu: &Gpu,
        dtype: WeightDtype,
        ff: usize,
        cols: usize,
        gate: &[u8],
        up: &[u8],
    ) -> Result<Self> {
        Self::from_packed(gpu, &PackedMatrix::pack_gate_up(dtype, ff, cols, gate, up)?)
    }

    /// Storage dtype.
    pub fn dtype(&self) -> WeightDtype {
        self.dtype
    }

    /// Number of rows (output features of a matmul, vocabulary size of an embedding).
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Number of columns (input features, embedding width).
    pub fn cols(&self) -> u32 {
        self.cols
    }

    /// The repacked words on the device.
    pub fn buffer(&self) -> &GpuBuffer {
        &self.buffer
    }
}

/// A device buffer that holds packed matrices of any shape up to its size, one after another:
/// [`QuantMatrix::in_slot`] views it as a matrix, [`WeightSlot::write`] replaces its contents.
/// Weights streamed from disk go through slots (a ring of them), so kernels bound once read
/// whichever layer was written last.
#[derive(Debug)]
pub struct WeightSlot {
    buffer: Arc<GpuBuffer>,
}

impl WeightSlot {
    /// A zeroed slot of `bytes` bytes.
    pub fn new(gpu: &Gpu, label: &str, bytes: u64) -> Result<Self> {
        Ok(Self {
            buffer: Arc::new(gpu.storage_zeroed(label, bytes)?),
        })
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.buffer.size()
    }

    /// Queues a write of `matrix` to the start of the slot: it takes effect after the work
    /// submitted before and before the work submitted after (see [`Gpu::write`]).
    pub fn write(&self, gpu: &Gpu, matrix: &PackedMatrix) -> Result<()> {
        gpu.write(&self.buffer, 0, &matrix.words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repacks_q4_0_block_into_scale_and_words() {
        let mut block = vec![0u8; 18];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for (i, byte) in block[2..].iter_mut().enumerate() {
            *byte = i as u8;
        }
        let words = repack(WeightDtype::Q4_0, 1, 32, &block);
        // One row padded to a group of 8, interleaved: row 0's words every 8th word.
        assert_eq!(words.len(), 5 * ROW_GROUP);
        assert_eq!(f32::from_bits(words[0]), 0.5);
        assert_eq!(words[ROW_GROUP], u32::from_le_bytes([0, 1, 2, 3]));
        assert_eq!(words[4 * ROW_GROUP], u32::from_le_bytes([12, 13, 14, 15]));
        assert!(words
            .iter()
            .enumerate()
            .all(|(i, &w)| i % ROW_GROUP == 0 || w == 0));
    }

    /// Element `e` of a device block from its words, read as the module's layout table says.
    fn element_by_table(dtype: WeightDtype, words: &[u32], e: usize) -> f32 {
        let f = |w: usize| f32::from_bits(words[w]);
        let header = match dtype {
            WeightDtype::Q4_0 | WeightDtype::Q5_0 => 1,
            _ => 2,
        };
        // Word e % 16 / 4, byte e % 4: the low nibble for e < 16, the high one after.
        let shift = 8 * (e % 4) + if e < 16 { 0 } else { 4 };
        let low = (words[header + e % 16 / 4] >> shift) & 15;
        let q = match dtype {
            WeightDtype::Q5_0 | WeightDtype::Q5_1 | WeightDtype::Q5_K => {
                low | (words[header + 4] >> e & 1) << 4
            }
            WeightDtype::Q6_K => low | (words[header + 4 + e / 16] >> (2 * (e % 16)) & 3) << 4,
            _ => low,
        } as f32;
        match dtype {
            WeightDtype::Q4_0 => (q - 8.0) * f(0),
            WeightDtype::Q5_0 => (q - 16.0) * f(0),
            WeightDtype::Q6_K => (q - 32.0) * f(e / 16),
            _ => q * f(0) + f(1),
        }
    }

    /// The device blocks of every nibble format, read as the layout table documents, give
    /// GGML's values (pio-gguf's dequantization) exactly.
    #[test]
    fn device_blocks_follow_the_layout_table() {
        let values: Vec<f32> = (0..512)
            .map(|i| (i * 7919 % 211) as f32 / 105.0 - 1.0)
            .collect();
        for dtype in [
            WeightDtype::Q4_0,
            WeightDtype::Q4_1,
            WeightDtype::Q5_0,
            WeightDtype::Q5_1,
            WeightDtype::Q4_K,
            WeightDtype::Q5_K,
            WeightDtype::Q6_K,
        ] {
            let raw = pio_gguf::writer::quantize(dtype.gguf_type(), &values).unwrap();
            let mut want = vec![0.0; values.len()];
            pio_gguf::dequantize(dtype.gguf_type(), &raw, &mut want).unwrap();
            // One row: its words are every ROW_GROUP-th of the interleaved layout.
            let words: Vec<u32> = repack(dtype, 1, values.len(), &raw)
                .into_iter()
                .step_by(ROW_GROUP)
                .collect();
            let block_words = dtype.packed_block_words() as usize;
            for (b, block) in words.chunks_exact(block_words).enumerate() {
                for e in 0..BLOCK_ELEMENTS {
                    let got = element_by_table(dtype, block, e);
                    assert_eq!(got, want[32 * b + e], "{dtype:?} block {b} element {e}");
                }
            }
        }
    }

    #[test]
    fn rejects_wrong_sizes() {
        assert!(check_gguf_shape("t", WeightDtype::Q8_0, 2, 32, 68).is_ok());
        assert!(check_gguf_shape("t", WeightDtype::Q8_0, 2, 32, 67).is_err());
        assert!(check_gguf_shape("t", WeightDtype::F32, 1, 33, 132).is_err());
    }
}
