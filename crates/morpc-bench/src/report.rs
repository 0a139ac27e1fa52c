//! What a run measured, and how it is printed.

use std::time::Duration;

use hdrhistogram::Histogram;

/// CPU time and peak RSS of a process, read from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    /// User + system CPU time.
    pub cpu: Duration,
    /// Peak resident set size in bytes.
    pub peak_rss: u64,
    /// Resident set size now, in bytes.
    pub rss: u64,
}

impl ProcUsage {
    /// Reads `/proc/<pid>` (`self` for this process); zeros where unavailable.
    pub fn read(pid: &str) -> Self {
        let ticks_per_sec = 100.0; // USER_HZ on Linux
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // Fields after the parenthesised command name; utime and stime are 14 and 15.
                let rest = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some(Duration::from_secs_f64((utime + stime) / ticks_per_sec))
            })
            .unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |field: &str| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        };
        let peak_rss = kib("VmHWM:").unwrap_or_default() * 1024;
        let rss = kib("VmRSS:").unwrap_or_default() * 1024;
        Self { cpu, peak_rss, rss }
    }
}

/// The figures of one measured run.
#[derive(Debug)]
pub struct RunReport {
    /// `morpc` or `baseline`.
    pub name: &'static str,
    /// Completed operations in the measured window.
    pub ops: u64,
    /// Application bytes per operation (body + payload, one direction).
    pub bytes_per_op: u64,
    /// The measured window.
    pub elapsed: Duration,
    /// Latency in nanoseconds (empty for one-way runs).
    pub latency: Histogram<u64>,
    /// Client CPU used during the window.
    pub client_cpu: Duration,
    /// Server CPU used during the window (zero for an external server).
    pub server_cpu: Duration,
    /// Client peak RSS.
    pub client_rss: u64,
    /// Server peak RSS (zero for an external server).
    pub server_rss: u64,
    /// Resident memory the run's connections added, per connection (client, server):
    /// RSS with every connection open at the end of the window minus RSS before they
    /// were opened. The client process runs morpc first, so the baseline's client side may
    /// reuse memory morpc freed and read low.
    pub rss_per_conn: (u64, u64),
    /// Connections of the run.
    pub conns: usize,
    /// Failed operations.
    pub errors: u64,
}

impl RunReport {
    /// Operations per second in the measured window.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// MiB per second (body and payload) in the measured window.
    pub fn mib_per_sec(&self) -> f64 {
        self.ops_per_sec() * self.bytes_per_op as f64 / (1024.0 * 1024.0)
    }

    fn percentile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.latency.value_at_quantile(q))
    }

    fn per_op(&self, cpu: Duration) -> Duration {
        if self.ops == 0 {
            return Duration::ZERO;
        }
        cpu / self.ops.min(u64::from(u32::MAX)) as u32
    }

    /// Prints the human-readable summary.
    pub fn print(&self) {
        println!(
            "{:<9} {:>12.0} ops/s {:>10.1} MiB/s  p50 {:>9.1?} p90 {:>9.1?} p99 {:>9.1?} p99.9 {:>9.1?}",
            self.name,
            self.ops_per_sec(),
            self.mib_per_sec(),
            self.percentile(0.5),
            self.percentile(0.9),
            self.percentile(0.99),
            self.percentile(0.999),
        );
        // Per-connection memory means something only with many connections; with one it
        // is the whole run's growth (runtime, caller tasks, buffers).
        let per_conn = if self.conns > 1 {
            format!(
                "   rss/conn client {:.1} KiB server {:.1} KiB",
                self.rss_per_conn.0 as f64 / 1024.0,
                self.rss_per_conn.1 as f64 / 1024.0,
            )
        } else {
            String::new()
        };
        println!(
            "{:<9} cpu/op client {:>7.2?} server {:>7.2?}   peak rss client {:>6.1} MiB server {:>6.1} MiB{per_conn}   errors {}",
            "",
            self.per_op(self.client_cpu),
            self.per_op(self.server_cpu),
            self.client_rss as f64 / 1048576.0,
            self.server_rss as f64 / 1048576.0,
            self.errors,
        );
    }

    /// The figures as JSON.
    pub fn json(&self) -> serde_json::Value {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        serde_json::json!({
            "name": self.name,
            "ops": self.ops,
            "ops_per_sec": self.ops_per_sec(),
            "mib_per_sec": self.mib_per_sec(),
            "latency_us": {
                "p50": us(self.percentile(0.5)),
                "p90": us(self.percentile(0.9)),
                "p99": us(self.percentile(0.99)),
                "p999": us(self.percentile(0.999)),
            },
            "cpu_per_op_us": { "client": us(self.per_op(self.client_cpu)), "server": us(self.per_op(self.server_cpu)) },
            "peak_rss_bytes": { "client": self.client_rss, "server": self.server_rss },
            "rss_per_conn_bytes": { "client": self.rss_per_conn.0, "server": self.rss_per_conn.1 },
            "errors": self.errors,
        })
    }
}
