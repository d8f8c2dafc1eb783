//! What a scenario hands back, and the machine facts every result carries: load average, and
//! the CPU time the load generator and any watched processes (`--watch-pid`) used during the
//! measured phase.

use std::time::Instant;

use serde_json::{Value, json};

use crate::plot;

/// A finished scenario: its JSON result and the charts of its plot.
pub struct Report {
    /// File-name stem, e.g. `rest-mix` or `fanout-stack`.
    pub name: String,
    pub json: Value,
    pub title: String,
    /// Lines under the plot's title: the set-up and the headline figures.
    pub description: Vec<String>,
    pub charts: Vec<plot::Chart>,
}

/// `/proc/loadavg`'s first three fields (1, 5 and 15 minutes).
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// User plus system CPU seconds `pid` has used so far (`/proc/<pid>/stat` fields 14 and 15, in
/// clock ticks of 1/100 s, the value on every Linux this runs on).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim().to_owned())
}

/// CPU use of this process and of watched ones over a measured phase.
pub struct CpuWatch {
    started: Instant,
    load_start: Option<String>,
    before: Vec<(u32, Option<f64>)>,
}

impl CpuWatch {
    pub fn start(watched: &[u32]) -> Self {
        let mut pids = vec![std::process::id()];
        pids.extend(watched.iter().copied().filter(|&p| p != std::process::id()));
        Self {
            started: Instant::now(),
            load_start: load_average(),
            before: pids
                .into_iter()
                .map(|pid| (pid, cpu_seconds(pid)))
                .collect(),
        }
    }

    /// `{seconds, loadAverageStart, loadAverageEnd, processes: [{pid, name, cpuSeconds,
    /// cores}]}` where `cores` is CPU seconds per wall second (2.0 = both cores busy). The first
    /// process is the load generator itself.
    pub fn finish(&self) -> Value {
        let wall = self.started.elapsed().as_secs_f64().max(f64::EPSILON);
        let processes: Vec<Value> = self
            .before
            .iter()
            .map(|&(pid, before)| {
                let used = before.zip(cpu_seconds(pid)).map(|(b, a)| a - b);
                json!({
                    "pid": pid,
                    "name": process_name(pid),
                    "cpuSeconds": used,
                    "cores": used.map(|u| (u / wall * 100.0).round() / 100.0),
                })
            })
            .collect();
        json!({
            "seconds": wall,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "loadAverageStart": self.load_start,
            "loadAverageEnd": load_average(),
            "processes": processes,
        })
    }
}

/// One line naming each watched process's share of the CPU, for the plot's description.
pub fn cpu_line(watch: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(processes) = watch["processes"].as_array() {
        for (i, process) in processes.iter().enumerate() {
            let name = if i == 0 {
                "loadtest".to_owned()
            } else {
                process["name"].as_str().unwrap_or("?").to_owned()
            };
            if let Some(cores) = process["cores"].as_f64() {
                parts.push(format!("{name} {cores:.2}"));
            }
        }
    }
    format!(
        "CPU cores used during the run: {}; load average {} -> {}",
        parts.join(", "),
        watch["loadAverageStart"].as_str().unwrap_or("?"),
        watch["loadAverageEnd"].as_str().unwrap_or("?"),
    )
}

/// `p50 1.2 / p99 3.4 / max 5.6 ms` from a summary object of [`crate::stats::Samples`].
pub fn short_summary(summary: &Value) -> String {
    let ms = |key: &str| {
        summary[key]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
    };
    format!(
        "p50 {} / p99 {} / max {} ms",
        ms("p50"),
        ms("p99"),
        ms("max")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_load() {
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(load_average().is_some());
        let watch = CpuWatch::start(&[]);
        let result = watch.finish();
        assert_eq!(result["processes"][0]["pid"], std::process::id());
        assert!(cpu_line(&result).starts_with("CPU cores used during the run: loadtest"));
    }

    #[test]
    fn short_summaries() {
        let summary = json!({"p50": 1.24, "p99": 10.0, "max": null});
        assert_eq!(short_summary(&summary), "p50 1.2 / p99 10.0 / max - ms");
    }
}
