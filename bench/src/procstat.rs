//! Process accounting read from `/proc`: CPU seconds (user + system) and memory high-water marks
//! of any process, and the load average. Linux only, like the benchmarks.

use std::sync::OnceLock;

use anyhow::{Context, bail};

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds consumed so far by `pid` (`"self"` for this process), all threads.
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses; the fields start after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5), counted from the state field (3).
    if fields.len() < 13 {
        bail!("unexpected /proc stat format");
    }
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// A `kB` field of `/proc/{pid}/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: &str, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reports_cpu_time_that_grows_with_work() {
        let before = cpu_seconds("self").expect("own stat");
        let mut x = 0u64;
        let mut after = before;
        // Spin until the kernel has charged some CPU; the generous deadline only guards a hang
        // (a loaded machine gives this thread less of each second, never none).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while after - before < 0.05 && std::time::Instant::now() < deadline {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            after = cpu_seconds("self").expect("own stat");
        }
        assert!(after - before >= 0.05, "before {before} after {after}");
    }

    #[test]
    fn this_process_has_a_resident_high_water_mark_at_least_its_rss() {
        let rss = status_kib("self", "VmRSS").expect("rss");
        let hwm = status_kib("self", "VmHWM").expect("hwm");
        assert!(hwm >= rss && rss > 0);
    }
}
