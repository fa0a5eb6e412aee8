//! Plugin lifecycle states and the transitions between them.

use std::fmt;

/// Where a plugin is in its lifecycle.
///
/// ```text
/// Discovered ──load──▶ Loaded ──activate──▶ Active ──deactivate──▶ Inactive
///     ▲                  │                    ▲                        │
///     │                  └────── any failure ─┼──▶ Failed(reason) ◀────┘
///     │                                       └────────activate────────┘
/// ```
/// `unload` is allowed from every state (an active plugin is deactivated first). A failed
/// plugin can be loaded again, which creates a fresh instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginState {
    /// The manifest was read and passed its checks; no plugin code has run.
    Discovered,
    /// The library is loaded and an instance exists and is initialized.
    Loaded,
    /// The instance holds its device and model and serves requests.
    Active,
    /// The instance was deactivated; it can be activated again.
    Inactive,
    /// Something failed; the reason says what. Other plugins are unaffected.
    Failed(String),
}

/// The operations that change a plugin's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Load the library and create an initialized instance.
    Load,
    /// Acquire device and model.
    Activate,
    /// Release device and model.
    Deactivate,
    /// Serve a request.
    Execute,
}

impl Transition {
    /// The verb used in error messages.
    pub fn verb(self) -> &'static str {
        match self {
            Transition::Load => "load",
            Transition::Activate => "activate",
            Transition::Deactivate => "deactivate",
            Transition::Execute => "serve requests",
        }
    }
}

impl PluginState {
    /// Whether `transition` is allowed from this state.
    pub fn allows(&self, transition: Transition) -> bool {
        use PluginState::*;
        matches!(
            (self, transition),
            (Discovered | Failed(_), Transition::Load)
                | (Loaded | Inactive, Transition::Activate)
                | (Active, Transition::Deactivate | Transition::Execute)
        )
    }

    /// A short lowercase name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            PluginState::Discovered => "discovered",
            PluginState::Loaded => "loaded",
            PluginState::Active => "active",
            PluginState::Inactive => "inactive",
            PluginState::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for PluginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginState::Failed(reason) => write!(f, "failed ({reason})"),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documented_transitions_are_allowed() {
        let failed = PluginState::Failed("x".into());
        let cases = [
            (PluginState::Discovered, Transition::Load, true),
            (PluginState::Discovered, Transition::Activate, false),
            (PluginState::Discovered, Transition::Execute, false),
            (PluginState::Loaded, Transition::Load, false),
            (PluginState::Loaded, Transition::Activate, true),
            (PluginState::Loaded, Transition::Deactivate, false),
            (PluginState::Loaded, Transition::Execute, false),
            (PluginState::Active, Transition::Activate, false),
            (PluginState::Active, Transition::Execute, true),
            (PluginState::Active, Transition::Deactivate, true),
            (PluginState::Inactive, Transition::Activate, true),
            (PluginState::Inactive, Transition::Execute, false),
            (PluginState::Inactive, Transition::Deactivate, false),
            (failed.clone(), Transition::Load, true),
            (failed.clone(), Transition::Activate, false),
            (failed, Transition::Execute, false),
        ];
        for (state, transition, allowed) in cases {
            assert_eq!(state.allows(transition), allowed, "{state} {transition:?}");
        }
    }
}
