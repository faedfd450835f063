//! The report: a markdown table with each scenario's ratio to the floor and the targets it meets, written to stdout
//! and `bench/results/latest.md`, the same figures as JSON, and an SVG latency chart.

use crate::measure::Figures;
use std::fmt::Write as _;

/// Prints the table and the target checks, and writes the JSON and SVG files.
pub(crate) fn report(results: &[Figures], rss_mib: f64, quick: bool) {
    let find = |name: &str| results.iter().find(|f| f.name.starts_with(name)).unwrap();
    let floor = find("floor");
    let direct = find("direct Redis GET");
    let mut md = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "Run: {} mode, {} CPUs ({cpu}), loopback 3 + 3 Redis Cluster, release build.\n",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        md,
        "| scenario | concurrency | req/s | p50 µs | p99 µs | p99.9 µs | req/s ÷ floor | server CPU µs/req | CPU ÷ floor CPU | errors | note |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for f in results {
        let ratio = if f.per_second > 0.0 {
            format!("{:.2}", f.per_second / floor.per_second)
        } else {
            "—".into()
        };
        let (cpu, cpu_ratio) = match (f.cpu_us_per_request, floor.cpu_us_per_request) {
            (Some(cpu), Some(floor_cpu)) if floor_cpu > 0.0 => {
                (format!("{cpu:.1}"), format!("{:.2}", cpu / floor_cpu))
            }
            (Some(cpu), _) => (format!("{cpu:.1}"), "—".into()),
            _ => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
            f.name,
            f.concurrency,
            f.per_second,
            f.p50_us,
            f.p99_us,
            f.p999_us,
            ratio,
            cpu,
            cpu_ratio,
            f.errors,
            f.note
        );
    }
    let get_hit = find("Get hit (Redis)");
    let near = find("Get hit (near-cache)");
    let batch100 = find("BatchGet of 100");
    let check = |ok: bool| if ok { "met" } else { "MISSED" };
    let _ = writeln!(md, "\nTargets (figures from this run):\n");
    let near_ratio = near.per_second / floor.per_second;
    let _ = writeln!(
        md,
        "- near-cache Get hit throughput ≥ 0.9 × floor: {near_ratio:.2} × — {}",
        check(near_ratio >= 0.9)
    );
    let redis_ratio = get_hit.per_second / floor.per_second;
    let _ = writeln!(
        md,
        "- Redis Get hit throughput ≥ 0.6 × floor: {redis_ratio:.2} × — {}",
        check(redis_ratio >= 0.6)
    );
    let bound = direct.p50_us + floor.p50_us + 100.0;
    let _ = writeln!(
        md,
        "- Get hit p50 ≤ direct GET p50 + floor p50 + 100 µs: {:.0} µs vs {bound:.0} µs — {}",
        get_hit.p50_us,
        check(get_hit.p50_us <= bound)
    );
    let _ = writeln!(
        md,
        "- BatchGet of 100 ≤ 3 × one Get (p50): {:.0} µs vs {:.0} µs — {}",
        batch100.p50_us,
        3.0 * get_hit.p50_us,
        check(batch100.p50_us <= 3.0 * get_hit.p50_us)
    );
    let steady = find("Get hit (Redis)");
    for storm in results
        .iter()
        .filter(|f| f.name.starts_with("expiry storm"))
    {
        let ratio = storm.p99_us / steady.p99_us;
        let _ = writeln!(
            md,
            "- {} p99 ≤ 1.5 × steady Get-hit p99: {:.0} µs vs {:.0} µs ({ratio:.2} ×) — {}",
            storm.name,
            storm.p99_us,
            steady.p99_us,
            check(ratio <= 1.5)
        );
    }
    let storm = find("stampede, leases on");
    let _ = writeln!(
        md,
        "- stampede with leases: {} — {}",
        storm.note,
        check(storm.note.contains(": 1.00 loader"))
    );
    let aside = find("cache-aside stampede (no loader), leases on");
    let _ = writeln!(
        md,
        "- cache-aside stampede with caller leases: {} — {}",
        aside.note,
        check(aside.note.contains(": 1.00 database"))
    );
    if let (Some(small), Some(large)) = (
        results.iter().find(|f| f.name.ends_with("keyspace 10000")),
        results
            .iter()
            .find(|f| f.name.ends_with("keyspace 1000000")),
    ) {
        let ratio = large.p50_us / small.p50_us;
        let _ = writeln!(
            md,
            "- InvalidatePattern 1M ÷ 10k ≤ 1.5: {ratio:.2} — {}",
            check(ratio <= 1.5)
        );
    }
    let _ = writeln!(
        md,
        "- server peak RSS ≤ 64 MiB + near-cache budget (64 MiB): {rss_mib:.1} MiB — {}",
        check(rss_mib <= 128.0)
    );
    println!("{md}");

    std::fs::create_dir_all("bench/results").unwrap();
    std::fs::write("bench/results/latest.md", &md).unwrap();
    let json: Vec<String> = results
        .iter()
        .map(|f| {
            format!(
                r#"{{"scenario":{:?},"concurrency":{},"requests":{},"errors":{},"per_second":{:.1},"p50_us":{:.1},"p99_us":{:.1},"p999_us":{:.1},"cpu_us_per_request":{},"note":{:?}}}"#,
                f.name, f.concurrency, f.requests, f.errors, f.per_second, f.p50_us, f.p99_us, f.p999_us,
                f.cpu_us_per_request.map_or("null".to_owned(), |cpu| format!("{cpu:.1}")), f.note
            )
        })
        .collect();
    let json = format!(
        "{{\"quick\":{quick},\"server_peak_rss_mib\":{rss_mib:.1},\"results\":[\n{}\n]}}\n",
        json.join(",\n")
    );
    std::fs::write("bench/results/latest.json", json).unwrap();
    std::fs::write("bench/results/latest.svg", chart(results)).unwrap();
    eprintln!("wrote bench/results/latest.{{md,json,svg}}");
}

/// A horizontal bar chart of p50 and p99 latency per scenario (log scale), with throughput printed beside it.
fn chart(results: &[Figures]) -> String {
    let rows: Vec<&Figures> = results.iter().filter(|f| f.p50_us > 0.0).collect();
    let (left, width, row) = (330.0, 520.0, 22.0);
    let height = 60.0 + row * rows.len() as f64;
    let max = rows
        .iter()
        .map(|f| f.p99_us)
        .fold(1.0, f64::max)
        .log10()
        .ceil();
    let x = |us: f64| left + width * (us.max(1.0).log10() / max);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11">"#,
        left + width + 150.0
    );
    svg.push_str(r#"<text x="10" y="18" font-size="13">cachecoord benchmark: p50 (dark) and p99 (light) latency, log scale; req/s on the right</text>"#);
    for decade in 0..=max as i32 {
        let us = 10f64.powi(decade);
        let label = if us >= 1000.0 {
            format!("{} ms", us / 1000.0)
        } else {
            format!("{us} µs")
        };
        let _ = write!(
            svg,
            r##"<line x1="{0}" x2="{0}" y1="30" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle">{label}</text>"##,
            x(us),
            height - 20.0,
            height - 6.0
        );
    }
    for (i, f) in rows.iter().enumerate() {
        let y = 36.0 + row * i as f64;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{left}" y="{y}" width="{}" height="14" fill="#9ecae1"/><rect x="{left}" y="{y}" width="{}" height="14" fill="#3182bd"/><text x="{}" y="{}">{}</text>"##,
            left - 6.0,
            y + 11.0,
            f.name.replace('&', "&amp;").replace('<', "&lt;"),
            x(f.p99_us) - left,
            x(f.p50_us) - left,
            left + width + 8.0,
            y + 11.0,
            if f.per_second > 0.0 {
                format!("{:.0}/s", f.per_second)
            } else {
                String::new()
            }
        );
    }
    svg.push_str("</svg>\n");
    svg
}
