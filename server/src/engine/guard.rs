//! The host's own enforcement of `max_tokens` and stop strings. A plugin is expected to honour
//! both, but the host does not trust it to: every token of a sequence passes through its
//! [`OutputGuard`], which relays at most `max_new_tokens` tokens, never relays a stop string's
//! text (holding back, as plugins do, a tail that may be the start of one), and says when the
//! host must end the sequence itself — the token callback then answers `Stop`, a batched
//! sequence is closed. For a plugin that honours its parameters the guard changes nothing: the
//! same text, tokens and finish reason.

use pio_host::{FinishReason, GenerationParams};

/// What the host relays of one sequence.
#[derive(Debug)]
pub(super) struct OutputGuard {
    max_tokens: u32,
    stops: Vec<String>,
    /// Bytes of the longest stop string.
    longest_stop: usize,
    /// Tokens accepted (at most `max_tokens`).
    tokens: u32,
    /// The accepted text, cut before the first stop string.
    text: String,
    /// Bytes of `text` relayed so far.
    sent: usize,
    /// Set once the host has ended the sequence.
    ended: Option<FinishReason>,
    /// Tokens the plugin sent after that (dropped).
    overrun: u32,
}

impl OutputGuard {
    /// A guard for a sequence generated with `params`.
    pub fn new(params: &GenerationParams) -> Self {
        let stops: Vec<String> = params
            .stop
            .iter()
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Self {
            max_tokens: params.max_new_tokens,
            longest_stop: stops.iter().map(String::len).max().unwrap_or(0),
            stops,
            tokens: 0,
            text: String::new(),
            sent: 0,
            ended: None,
            overrun: 0,
        }
    }

    /// Takes the plugin's next token with its `piece` of text; answers the text to relay now
    /// (possibly empty), or `None` when the host has already ended the sequence (the token is
    /// dropped).
    pub fn accept(&mut self, piece: &str) -> Option<String> {
        if self.ended.is_some() {
            self.overrun += 1;
            return None;
        }
        self.tokens += 1;
        // Only a stop string ending in the new piece can be new.
        let mut from = self
            .text
            .len()
            .saturating_sub(self.longest_stop.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(piece);
        let stop_at = self
            .stops
            .iter()
            .filter_map(|stop| self.text[from..].find(stop.as_str()).map(|at| from + at))
            .min();
        let end = if let Some(at) = stop_at {
            self.text.truncate(at);
            self.ended = Some(FinishReason::Stop);
            at
        } else if self.tokens >= self.max_tokens {
            self.ended = Some(FinishReason::Length);
            self.text.len()
        } else {
            self.text.len() - self.held_back()
        };
        let start = self.sent.min(end);
        self.sent = self.sent.max(end);
        Some(self.text[start..end].to_owned())
    }

    /// Bytes at the end of the text that may be the start of a stop string.
    fn held_back(&self) -> usize {
        let text = self.text.as_bytes();
        let Some(&last) = text.last() else {
            return 0;
        };
        self.stops
            .iter()
            .filter_map(|stop| {
                let stop = stop.as_bytes();
                (1..stop.len().min(text.len() + 1))
                    .rev()
                    .find(|&n| stop[n - 1] == last && text.ends_with(&stop[..n]))
            })
            .max()
            .unwrap_or(0)
    }

    /// Why the host ended the sequence, once it has.
    pub fn ended(&self) -> Option<FinishReason> {
        self.ended
    }

    /// Tokens accepted.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }

    /// Tokens the plugin sent past the end the host set.
    pub fn overrun(&self) -> u32 {
        self.overrun
    }

    /// The sequence is over: `plugin` is the plugin's finish reason (`None` when the host ended
    /// it and the plugin had not). Answers the held-back text still to relay and the finish
    /// reason to report.
    pub fn finish(&mut self, plugin: Option<FinishReason>) -> (String, FinishReason) {
        let tail = self.text[self.sent.min(self.text.len())..].to_owned();
        self.sent = self.text.len();
        let reason = match (self.ended, plugin) {
            (Some(FinishReason::Stop), _) => FinishReason::Stop,
            // The plugin ended on the last allowed token by itself: its reason stands.
            (Some(_), Some(p @ (FinishReason::Stop | FinishReason::Length)))
                if self.overrun == 0 =>
            {
                p
            }
            (Some(_), _) => FinishReason::Length,
            (None, Some(p)) => p,
            (None, None) => FinishReason::Cancelled,
        };
        (tail, reason)
    }

    /// The text relayed (all of it, after [`finish`](Self::finish)).
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max: u32, stops: &[&str]) -> OutputGuard {
        let mut params = GenerationParams::greedy(max);
        params.stop = stops.iter().map(|s| (*s).into()).collect();
        OutputGuard::new(&params)
    }

    /// Feeds `pieces`; returns what was relayed piece by piece, the finish and the text.
    fn run(
        guard: &mut OutputGuard,
        pieces: &[&str],
        plugin: Option<FinishReason>,
    ) -> (Vec<Option<String>>, String, FinishReason) {
        let relayed = pieces.iter().map(|p| guard.accept(p)).collect();
        let (tail, finish) = guard.finish(plugin);
        (relayed, tail, finish)
    }

    #[test]
    fn a_well_behaved_plugin_is_relayed_unchanged() {
        let mut g = guard(10, &["zz"]);
        let (relayed, tail, finish) = run(&mut g, &["a", "b", "c"], Some(FinishReason::Stop));
        let relayed: Vec<String> = relayed.into_iter().map(Option::unwrap).collect();
        assert_eq!(
            (relayed.concat() + &tail, finish),
            ("abc".to_owned(), FinishReason::Stop)
        );
        assert_eq!(g.text(), "abc");

        // Ending exactly at max_tokens by itself keeps the plugin's reason.
        let mut g = guard(3, &[]);
        let (_, _, finish) = run(&mut g, &["a", "b", "c"], Some(FinishReason::Stop));
        assert_eq!(finish, FinishReason::Stop);
        let mut g = guard(3, &[]);
        let (_, _, finish) = run(&mut g, &["a", "b", "c"], Some(FinishReason::Length));
        assert_eq!(finish, FinishReason::Length);
    }

    #[test]
    fn tokens_past_max_tokens_are_dropped() {
        let mut g = guard(2, &[]);
        let (relayed, tail, finish) = run(&mut g, &["a", "b", "c", "d"], Some(FinishReason::Stop));
        assert_eq!(
            relayed,
            [Some("a".into()), Some("b".into()), None, None],
            "nothing after the limit"
        );
        assert_eq!((tail.as_str(), finish), ("", FinishReason::Length));
        assert_eq!((g.tokens(), g.overrun(), g.text()), (2, 2, "ab"));

        // A plugin that stopped when told to (cancelled) still reports length.
        let mut g = guard(2, &[]);
        let (_, _, finish) = run(&mut g, &["a", "b"], Some(FinishReason::Cancelled));
        assert_eq!(finish, FinishReason::Length);
        let mut g = guard(2, &[]);
        let (_, _, finish) = run(&mut g, &["a", "b"], None);
        assert_eq!(finish, FinishReason::Length);
    }

    #[test]
    fn a_stop_string_is_never_relayed() {
        // Split over tokens: the possible start is held back, then cut.
        let mut g = guard(100, &["cd"]);
        let (relayed, tail, finish) =
            run(&mut g, &["ab", "c", "de", "f"], Some(FinishReason::Stop));
        assert_eq!(
            relayed,
            [
                Some("ab".into()),
                Some(String::new()),
                Some(String::new()),
                None
            ]
        );
        assert_eq!(
            (tail.as_str(), finish, g.text()),
            ("", FinishReason::Stop, "ab")
        );

        // Inside one piece, with a multi-byte character before it.
        let mut g = guard(100, &["STOP", "é!"]);
        let (relayed, _, finish) = run(&mut g, &["xé", "!y"], Some(FinishReason::Length));
        assert_eq!(relayed, [Some("x".into()), Some(String::new())]);
        assert_eq!((finish, g.text()), (FinishReason::Stop, "x"));

        // A held-back start that is not a stop is released.
        let mut g = guard(100, &["cX"]);
        let (relayed, tail, _) = run(&mut g, &["abc", "d"], Some(FinishReason::Stop));
        assert_eq!(relayed, [Some("ab".into()), Some("cd".into())]);
        assert_eq!(tail, "");
        // ... also when the sequence ends on it.
        let mut g = guard(100, &["cX"]);
        let (relayed, tail, _) = run(&mut g, &["abc"], Some(FinishReason::Stop));
        assert_eq!((relayed[0].as_deref(), tail.as_str()), (Some("ab"), "c"));
    }

    #[test]
    fn the_last_allowed_token_releases_held_back_text() {
        let mut g = guard(2, &["bX"]);
        let (relayed, tail, finish) = run(&mut g, &["a", "b"], None);
        assert_eq!(relayed, [Some("a".into()), Some("b".into())]);
        assert_eq!((tail.as_str(), finish), ("", FinishReason::Length));
    }
}
