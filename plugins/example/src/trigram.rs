//! The example's embedding "model": hashed character trigrams, L2-normalised.

/// Embeds `text` into `dimensions` floats: every character trigram (with the text padded by a
/// space on each side) adds 1 to the bucket its FNV-1a hash selects; the result has unit length
/// (all zeros for an empty text).
pub fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let padded: Vec<char> = std::iter::once(' ')
        .chain(text.chars())
        .chain(std::iter::once(' '))
        .collect();
    let mut vector = vec![0f32; dimensions];
    for window in padded.windows(3) {
        vector[fnv1a(window) as usize % dimensions] += 1.0;
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
    vector
}

fn fnv1a(chars: &[char]) -> u64 {
    chars.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &c| {
        (hash ^ u64::from(u32::from(c))).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_have_unit_length() {
        let v = embed("hello world", 64);
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn similar_texts_are_closer_than_unrelated_ones() {
        let a = embed("the cat sat on the mat", 256);
        let b = embed("the cat sat on a mat", 256);
        let c = embed("quantum chromodynamics", 256);
        assert!(cosine(&a, &b) > cosine(&a, &c) + 0.3);
    }

    #[test]
    fn empty_text_embeds_to_zero() {
        // " " + "" + " " has no 3-window, so the vector is all zeros.
        assert!(embed("", 8).iter().all(|&v| v == 0.0));
    }
}
