//! The host ↔ worker protocol: length-prefixed `postcard` frames over a Unix socket.
//!
//! The host sends [`HostMessage`]s, the worker answers with [`WorkerMessage`]s. Every call is
//! one [`Call`] answered by one [`Outcome`]; a generation in between sends each token as
//! [`WorkerMessage::Token`] and waits for the host's [`StreamControl`], so cancellation takes
//! effect at the next token exactly as in process. The first message each way is a hello
//! carrying [`PROTOCOL_VERSION`]: a worker binary of another version is refused, not
//! misunderstood.

use std::io::{Read, Write};

use pio_plugin_api::{
    ActivateOptions, ChatRequest, CompressionReport, CompressionRequest, DecodeOptions,
    EmbedRequest, EmbedResponse, GenerateRequest, GenerateResponse, Health, MemoryFreed,
    MemoryReport, PluginError, PluginStats, PositionLogprobs, Prompt, SequenceOpened,
    SequenceRequest, SequenceStep, StreamControl, TokenEvent,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 3;

/// The largest frame either side accepts (a batch of embeddings is the largest message).
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// What the host asks the worker to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    /// Check and load the plugin folder (the same manifest checks and loader as in process),
    /// create an instance and `initialize` it with `config` (JSON). Answered with the library's
    /// metadata JSON.
    Load {
        /// The plugin folder.
        folder: String,
        /// The merged configuration, as JSON.
        config: String,
        /// Where the worker makes its shadow copies.
        shadow_root: String,
        /// The host version the manifest's `host` range is checked against.
        host_version: String,
    },
    Activate(ActivateOptions),
    Deactivate,
    Cleanup,
    Infer(String),
    Tokenize {
        text: String,
        add_special: bool,
    },
    Detokenize(Vec<u32>),
    Generate(GenerateRequest),
    Chat(ChatRequest),
    Embed(EmbedRequest),
    Stats,
    Health,
    OpenSequence(SequenceRequest),
    StepSequences(Vec<u64>),
    CloseSequence(u64),
    OpenSequenceWith(SequenceRequest, DecodeOptions),
    SequenceLogprobs(u64),
    Score {
        prompt: Prompt,
        top: u32,
    },
    MemoryReport,
    EstimateMemory(ActivateOptions),
    ForceMemoryCleanup,
    Compress(CompressionRequest),
    CompressionStats,
}

/// A message from the host.
#[derive(Debug, Serialize, Deserialize)]
pub enum HostMessage {
    /// The first message: the host's protocol version.
    Hello { protocol: u32 },
    /// A plugin call.
    Call(Call),
    /// The answer to a [`WorkerMessage::Token`].
    Control(StreamControl),
}

/// What a call returned.
#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    Text(String),
    Tokens(Vec<u32>),
    Generated(GenerateResponse),
    Embedded(EmbedResponse),
    Stats(PluginStats),
    Health(Health),
    Opened(SequenceOpened),
    Steps(Vec<SequenceStep>),
    Logprobs(Vec<PositionLogprobs>),
    Memory(MemoryReport),
    Freed(MemoryFreed),
    Compressed(CompressionReport),
    CompressionStats(Option<CompressionReport>),
    /// The plugin (or the worker's checks) refused the call.
    Failed(PluginError),
}

/// A message from the worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerMessage {
    /// The answer to the host's hello.
    Hello { protocol: u32, pid: u32 },
    /// A token of the generation in progress; the host answers with a control.
    Token(TokenEvent),
    /// The outcome of the call in progress.
    Outcome(Outcome),
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The other side closed the connection.
    #[error("the connection was closed")]
    Closed,
    /// No frame within the read timeout.
    #[error("no answer within the time limit")]
    TimedOut,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The frame was not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl From<std::io::Error> for FrameError {
    fn from(error: std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset => Self::Closed,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Self::TimedOut,
            _ => Self::Io(error),
        }
    }
}

/// Writes `message` as one frame: its length (u32, little endian), then its `postcard` bytes.
pub fn write_frame(mut writer: impl Write, message: &impl Serialize) -> Result<(), FrameError> {
    let bytes = postcard::to_allocvec(message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::Malformed(format!(
            "a {} byte message exceeds the {MAX_FRAME_BYTES} byte frame limit",
            bytes.len()
        )));
    }
    let length = u32::try_from(bytes.len()).expect("bounded by MAX_FRAME_BYTES");
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&length.to_le_bytes());
    frame.extend_from_slice(&bytes);
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(())
}

/// Reads one frame and decodes it, refusing frames over [`MAX_FRAME_BYTES`] before allocating.
pub fn read_frame<T: DeserializeOwned>(mut reader: impl Read) -> Result<T, FrameError> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(FrameError::Malformed(format!(
            "a frame of {length} bytes exceeds the {MAX_FRAME_BYTES} byte limit"
        )));
    }
    let mut bytes = vec![0u8; length];
    reader.read_exact(&mut bytes)?;
    postcard::from_bytes(&bytes).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use pio_plugin_api::{GenerationParams, Prompt};

    use super::*;

    #[test]
    fn messages_survive_a_round_trip() {
        let call = HostMessage::Call(Call::Generate(GenerateRequest {
            prompt: Prompt::Text("héllo".into()),
            params: GenerationParams::greedy(7),
        }));
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &call).unwrap();
        let back: HostMessage = read_frame(buffer.as_slice()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{call:?}"));
    }

    #[test]
    fn oversized_and_truncated_frames_are_refused() {
        let mut huge = (u32::MAX).to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert!(matches!(
            read_frame::<HostMessage>(huge.as_slice()),
            Err(FrameError::Malformed(_))
        ));
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &HostMessage::Hello { protocol: 1 }).unwrap();
        buffer.pop();
        assert!(matches!(
            read_frame::<HostMessage>(buffer.as_slice()),
            Err(FrameError::Closed)
        ));
        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame::<HostMessage>(garbage.as_slice()),
            Err(FrameError::Malformed(_))
        ));
    }
}
