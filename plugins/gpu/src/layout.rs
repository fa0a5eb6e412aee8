//! Where the rows of an activation live inside a buffer.

/// Token `t`'s values of an activation start at element `t * stride + offset` of its buffer
/// (in f32 elements). This lets kernels read parts of a fused output, e.g. the K columns of a
/// fused Q|K|V matmul, without copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowLayout {
    /// Elements from one token's row to the next.
    pub stride: u32,
    /// Elements before the first value of token 0.
    pub offset: u32,
}

impl RowLayout {
    /// Rows of exactly `width` values, back to back.
    pub fn contiguous(width: u32) -> Self {
        Self {
            stride: width,
            offset: 0,
        }
    }

    /// Elements a buffer needs to hold `n_tokens` rows of `width` values in this layout.
    pub fn required_len(self, n_tokens: u32, width: u32) -> u64 {
        match n_tokens {
            0 => 0,
            n => {
                u64::from(n - 1) * u64::from(self.stride)
                    + u64::from(self.offset)
                    + u64::from(width)
            }
        }
    }
}
