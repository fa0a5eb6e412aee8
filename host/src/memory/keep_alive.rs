//! [`KeepAlive`]: how long an idle plugin stays resident, with Ollama's semantics: a duration
//! (`"5m"`, `"1h30m"`, `"250ms"`, Go's syntax) or a number of seconds; 0 unloads right after
//! the request; a negative value keeps the plugin loaded until the host needs its memory.

use std::{fmt, time::Duration};

/// How long an idle plugin stays resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Until the memory manager needs the room (or the plugin is unloaded).
    Forever,
    /// This long after its last request ends; zero unloads it right after.
    For(Duration),
}

impl KeepAlive {
    /// Parses a duration (`"5m"`, `"1h30m"`, `"-1"`, `"0"`, `"90"` — a bare number is
    /// seconds); a negative one is [`KeepAlive::Forever`].
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = || {
            format!(
                "invalid keep_alive '{text}': expected a duration like \"5m\", \"1h30m\" or \
                 \"250ms\", or a number of seconds (0 unloads after the request, negative keeps \
                 the model loaded)"
            )
        };
        if let Ok(seconds) = text.parse::<f64>() {
            return Self::from_seconds(seconds).ok_or_else(invalid);
        }
        let (negative, mut rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total = 0f64;
        while !rest.is_empty() {
            let number_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(invalid)?;
            let number: f64 = rest[..number_end].parse().map_err(|_| invalid())?;
            rest = &rest[number_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_end] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(invalid()),
            };
            rest = &rest[unit_end..];
            total += number * scale;
        }
        Self::from_seconds(if negative { -total } else { total }).ok_or_else(invalid)
    }

    /// A JSON number of seconds as Ollama reads one; `None` if it is not finite.
    pub fn from_seconds(seconds: f64) -> Option<Self> {
        if !seconds.is_finite() {
            None
        } else if seconds < 0.0 {
            Some(KeepAlive::Forever)
        } else {
            Duration::try_from_secs_f64(seconds)
                .ok()
                .map(KeepAlive::For)
        }
    }
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAlive::Forever => f.write_str("forever"),
            KeepAlive::For(duration) => write!(f, "{}s", duration.as_secs_f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_ollama_reads_them() {
        let secs = |s: f64| KeepAlive::For(Duration::from_secs_f64(s));
        assert_eq!(KeepAlive::parse("5m"), Ok(secs(300.0)));
        assert_eq!(KeepAlive::parse("1h30m"), Ok(secs(5400.0)));
        assert_eq!(KeepAlive::parse("250ms"), Ok(secs(0.25)));
        assert_eq!(KeepAlive::parse("1.5s"), Ok(secs(1.5)));
        assert_eq!(KeepAlive::parse("90"), Ok(secs(90.0)));
        assert_eq!(KeepAlive::parse("0"), Ok(secs(0.0)));
        assert_eq!(KeepAlive::parse("-1"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse("-5m"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::from_seconds(-0.5), Some(KeepAlive::Forever));
        assert_eq!(KeepAlive::from_seconds(f64::NAN), None);
    }

    #[test]
    fn garbage_is_refused_with_the_accepted_forms() {
        for bad in ["", "soon", "5 minutes", "5d", "m", "-", "1.2.3s", "inf"] {
            let error = KeepAlive::parse(bad).unwrap_err();
            assert!(error.contains("invalid keep_alive"), "{bad}: {error}");
        }
    }
}
