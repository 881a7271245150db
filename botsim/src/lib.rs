//! botsim: not built yet.
