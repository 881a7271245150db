//! Rebuilds testkit when the workspace's migrations change: `sqlx::migrate!` embeds them at
//! compile time, and cargo does not notice new files in that directory on its own.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
