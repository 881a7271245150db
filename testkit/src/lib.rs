//! testkit: not built yet.
