//! Kernel launchers: one module per WGSL kernel.
//!
//! Each kernel is a struct created once per model shape (`new` compiles or looks up its pipeline,
//! so call it at activation) whose `bind` method checks buffer sizes and returns a [`Dispatch`]
//! to record into a compute pass.
//!
//! All activations are f32, row-major, one row per token: `[T][width]` unless a
//! [`RowLayout`](crate::RowLayout) says otherwise. `T` (the token count) is given to `bind`;
//! shapes fixed by the model are pipeline-overridable constants.
//!
//! [`Dispatch`]: crate::Dispatch

pub mod attention;
pub mod embed;
pub mod kv_cache;
pub mod linear;
pub mod qk_norm_rope;
pub mod residual_norm;
pub mod rope;
pub mod sample;
