//! Stop-string detection on streamed text.
//!
//! Generated text arrives in pieces (one per token) and a stop string may span several pieces, so
//! [`StopMatcher`] holds back the longest tail of the text that could still become the start of a
//! stop string, and releases it once it can no longer match.

/// What [`StopMatcher::push`] decided for a piece of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopStep {
    /// Text that can be emitted now (never part of a stop string).
    pub emit: String,
    /// A stop string matched: generation should end, and the text from the match on is dropped.
    pub stopped: bool,
}

/// Incremental matcher for a set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Appends `text` and returns what can safely be emitted.
    pub fn push(&mut self, text: &str) -> StopStep {
        self.held.push_str(text);
        let first_match = self.stops.iter().filter_map(|s| self.held.find(s)).min();
        if let Some(at) = first_match {
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return StopStep {
                emit,
                stopped: true,
            };
        }
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let split = self.held.len() - keep;
        let emit = self.held[..split].to_owned();
        self.held.drain(..split);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Releases the held-back text (at the end of generation, when no more text can follow).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length in bytes of the longest proper prefix of `stop` that `text` ends with.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&k| stop.is_char_boundary(k) && text.as_bytes().ends_with(&stop.as_bytes()[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let step = m.push(p);
            out.push_str(&step.emit);
            if step.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn no_stop_strings_passes_everything() {
        assert_eq!(run(&[], &["ab", "c"]), ("abc".into(), false));
    }

    #[test]
    fn stop_inside_one_piece_truncates() {
        assert_eq!(run(&["END"], &["abc END xyz"]), ("abc ".into(), true));
    }

    #[test]
    fn stop_spanning_pieces_is_caught_and_not_emitted() {
        assert_eq!(
            run(&["</s>"], &["hello <", "/", "s> more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn partial_prefix_is_held_then_released() {
        let stops = vec!["STOP".to_string()];
        let mut m = StopMatcher::new(&stops);
        let s = m.push("go ST");
        assert_eq!(s.emit, "go ");
        let s = m.push("ART");
        assert_eq!(
            s,
            StopStep {
                emit: "START".into(),
                stopped: false
            }
        );
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["b", "ab"], &["xxabyy"]), ("xx".into(), true));
    }

    #[test]
    fn held_text_flushed_at_end() {
        assert_eq!(run(&["Paris!"], &["Par", "is"]), ("Paris".into(), false));
    }

    #[test]
    fn multibyte_stop_prefix_respects_char_boundaries() {
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
        assert_eq!(run(&["é!"], &["café", "?"]), ("café?".into(), false));
    }
}
