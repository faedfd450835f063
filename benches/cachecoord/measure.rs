//! Measuring one scenario: a closed loop of calls at a fixed concurrency, its latency percentiles and throughput,
//! and a server process's peak memory.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The server process whose CPU time each closed loop charges to its requests (0: none).
static MEASURED_SERVER: AtomicU32 = AtomicU32::new(0);

/// Makes every later closed loop report the CPU time process `pid` spent per request.
pub(crate) fn measure_cpu_of(pid: u32) {
    MEASURED_SERVER.store(pid, Ordering::Relaxed);
}

/// CPU time (user + system) process `pid` has used, in seconds, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    static TICKS_PER_SECOND: OnceLock<f64> = OnceLock::new();
    let ticks = *TICKS_PER_SECOND.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after its closing parenthesis): utime and
    // stime are the 14th and 15th fields of the line, the 12th and 13th after the name.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// One scenario's outcome.
pub(crate) struct Figures {
    pub(crate) name: String,
    pub(crate) concurrency: usize,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) per_second: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    /// Server CPU time (user + system) per request, in µs, when a server is measured.
    pub(crate) cpu_us_per_request: Option<f64>,
    pub(crate) note: String,
}

/// Runs `call` from `concurrency` workers for `duration`, each worker waiting for its previous call.
pub(crate) async fn closed_loop<F, Fut>(
    name: &str,
    concurrency: usize,
    duration: Duration,
    call: F,
) -> Figures
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let server = MEASURED_SERVER.load(Ordering::Relaxed);
    let cpu_before = cpu_seconds(server);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut i) = (Vec::new(), 0u64, 0u64);
                while started.elapsed() < duration {
                    let t = Instant::now();
                    if !call(worker, i).await {
                        errors += 1;
                    }
                    latencies.push(t.elapsed().as_nanos() as u64);
                    i += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (latencies, worker_errors) = worker.await.unwrap();
        all.extend(latencies);
        errors += worker_errors;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_before.zip(cpu_seconds(server)).map(|(a, b)| b - a);
    let mut figures = figures(name, concurrency, all, errors, elapsed, String::new());
    if let Some(cpu) = cpu.filter(|_| figures.requests > 0) {
        let per_request = cpu * 1e6 / figures.requests as f64;
        eprintln!("{:<40} server CPU {per_request:.1} µs per request", "");
        figures.cpu_us_per_request = Some(per_request);
    }
    figures
}

/// Sorts the latencies (ns), takes percentiles and throughput, and prints one line.
pub(crate) fn figures(
    name: &str,
    concurrency: usize,
    mut latencies: Vec<u64>,
    errors: u64,
    elapsed: Duration,
    note: String,
) -> Figures {
    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied().unwrap_or(0) as f64 / 1e3
    };
    let figures = Figures {
        name: name.to_owned(),
        concurrency,
        requests: latencies.len() as u64,
        errors,
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        p999_us: at(0.999),
        cpu_us_per_request: None,
        note,
    };
    eprintln!(
        "{:<40} c={:<4} {:>10.0}/s p50 {:>8.0}µs p99 {:>8.0}µs p99.9 {:>8.0}µs errors {} {}",
        figures.name,
        concurrency,
        figures.per_second,
        figures.p50_us,
        figures.p99_us,
        figures.p999_us,
        errors,
        figures.note
    );
    figures
}

/// Peak resident set size of a process, from /proc (kB → MiB).
pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// Resident set size of a process now, from /proc (kB → MiB).
pub(crate) fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// The `field` line of /proc/<pid>/status, in MiB (0 when unreadable).
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
            })
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
