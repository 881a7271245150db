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

/// The CPU fields of one `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// The parent process.
    pub ppid: u32,
    /// User + system seconds of the process itself, all threads.
    pub cpu: f64,
    /// User + system seconds of its children that exited and were waited for.
    pub reaped_children_cpu: f64,
}

/// Parses a `/proc/PID/stat` line.
fn parse_stat(stat: &str) -> anyhow::Result<Stat> {
    // The command name may contain spaces and parentheses; the fields start after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 4 (ppid), 14 (utime), 15 (stime), 16 (cutime) and 17 (cstime) of proc(5), counted
    // from the state field (3).
    if fields.len() < 15 {
        bail!("unexpected /proc stat format");
    }
    let ticks = |i: usize| -> anyhow::Result<f64> { Ok(fields[i].parse::<f64>()? / clock_ticks()) };
    Ok(Stat {
        ppid: fields[1].parse()?,
        cpu: ticks(11)? + ticks(12)?,
        reaped_children_cpu: ticks(13)? + ticks(14)?,
    })
}

/// The CPU fields of `pid` (`"self"` for this process).
pub fn read_stat(pid: &str) -> anyhow::Result<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat(&stat)
}

/// User + system CPU seconds consumed so far by `pid` (`"self"` for this process), all threads.
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    Ok(read_stat(pid)?.cpu)
}

/// User + system CPU seconds of every live child of `parent` (their own and their reaped
/// children's). A process that exits during the scan is skipped.
pub fn children_cpu_seconds(parent: u32) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let name = entry?.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let stat = parse_stat(&stat)?;
        if stat.ppid == parent {
            total += stat.cpu + stat.reaped_children_cpu;
        }
    }
    Ok(total)
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
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let line =
            "4242 (post gres) (x)) S 77 4242 4242 0 -1 4194304 1 2 3 4 150 50 300 100 20 0 1 0";
        let stat = parse_stat(line).expect("parse");
        let ticks = clock_ticks();
        assert_eq!(stat.ppid, 77);
        assert!((stat.cpu - 200.0 / ticks).abs() < 1e-9, "{stat:?}");
        assert!(
            (stat.reaped_children_cpu - 400.0 / ticks).abs() < 1e-9,
            "{stat:?}"
        );
    }

    #[test]
    fn a_child_is_counted_while_it_runs_and_in_the_reaped_time_once_waited_for() {
        let me = std::process::id();
        let before = read_stat("self").expect("own stat").reaped_children_cpu;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 2000000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("spawn sh");
        // The generous deadline only guards a hang; the loop runs for seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut live = 0.0;
        while live < 0.05 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            live = children_cpu_seconds(me).expect("scan");
        }
        child.wait().expect("wait");
        let after = read_stat("self").expect("own stat").reaped_children_cpu;
        assert!(live >= 0.05, "a running child was not counted: {live}");
        assert!(
            after - before >= live,
            "before {before} after {after}, live {live}"
        );
    }

    #[test]
    fn this_process_has_a_resident_high_water_mark_at_least_its_rss() {
        let rss = status_kib("self", "VmRSS").expect("rss");
        let hwm = status_kib("self", "VmHWM").expect("hwm");
        assert!(hwm >= rss && rss > 0);
    }
}
