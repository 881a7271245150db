//! The `tgingest` binary (its command line arrives with the runtime skeleton).

fn main() {}
