//! The report: a markdown table with each scenario's ratio to the floor and the targets it meets, written to stdout
//! and `bench/results/latest.md`, the same figures as JSON, and an SVG latency chart.

use crate::measure::Figures;
use std::fmt::Write as _;

/// Prints the table and the target checks, and writes the JSON and SVG files.
pub(crate) fn report(results: &[Figures], rss_mib: f64, idle_rss_mib: f64, quick: bool) {
    let find = |name: &str| results.iter().find(|f| f.name.starts_with(name)).unwrap();
    let floor = find("floor");
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
    let _ = writeln!(md, "\nTargets (figures from this run):\n");
    let check = |ok: bool| if ok { "met" } else { "MISSED" };
    let per_floor = |f: &Figures| f.per_second / floor.per_second;
    let cpu_per_floor = |f: &Figures| {
        f.cpu_us_per_request
            .zip(floor.cpu_us_per_request)
            .map_or(f64::NAN, |(cpu, floor)| cpu / floor)
    };
    let mut throughput = |f: &Figures, target: f64| {
        let _ = writeln!(
            md,
            "- {} ≥ {target} × floor req/s: {:.2} × — {}",
            f.name,
            per_floor(f),
            check(per_floor(f) >= target)
        );
    };
    throughput(get_hit, 0.7);
    throughput(find("Get hit (near-cache)"), 0.95);
    throughput(find("Set"), 0.5);
    throughput(find("Invalidate"), 0.4);
    let miss = find("Get miss → load (loader 1 ms)");
    throughput(miss, 0.3);
    let _ = writeln!(
        md,
        "- Get hit (Redis) server CPU ≤ 1.6 × the floor's per request: {:.2} × — {}",
        cpu_per_floor(get_hit),
        check(cpu_per_floor(get_hit) <= 1.6)
    );
    let sampled = find("Get hit (Redis), staleness sampling 1 %");
    let (off, again) = (
        find("Get hit (Redis), sampling off"),
        find("Get hit (Redis), sampling off, again"),
    );
    let cpu_of = |f: &Figures| f.cpu_us_per_request.unwrap_or(f64::NAN);
    let plain_cpu = (cpu_of(off) + cpu_of(again)) / 2.0;
    let plain_p50 = (off.p50_us + again.p50_us) / 2.0;
    let _ = writeln!(
        md,
        "- Staleness sampling at 1 % on Get hits (measured, no target): server CPU {:.1} µs/request vs {:.1} and \
         {:.1} with it off, before and after ({:+.1} µs on their mean); p50 {:.0} µs vs {:.0} and {:.0} ({:+.0} µs)",
        cpu_of(sampled),
        cpu_of(off),
        cpu_of(again),
        cpu_of(sampled) - plain_cpu,
        sampled.p50_us,
        off.p50_us,
        again.p50_us,
        sampled.p50_us - plain_p50
    );
    let bound = 1000.0 + 3.0 * get_hit.p50_us;
    let _ = writeln!(
        md,
        "- Get miss → load p50 ≤ loader latency (1 ms) + 3 × Get-hit p50: {:.0} µs vs {bound:.0} µs — {}",
        miss.p50_us,
        check(miss.p50_us <= bound)
    );
    let (batch100, batch1000) = (find("BatchGet of 100 "), find("BatchGet of 1000 "));
    let piped100 = find("direct pipelined GETs of 100 ");
    let _ = writeln!(
        md,
        "- BatchGet of 100 p50 ≤ 2 × Get-hit p50: {:.0} µs vs {:.0} µs — {}",
        batch100.p50_us,
        2.0 * get_hit.p50_us,
        check(batch100.p50_us <= 2.0 * get_hit.p50_us)
    );
    let _ = writeln!(
        md,
        "- BatchGet of 100 p50 ≤ 1.5 × direct pipelined GETs of 100: {:.0} µs vs {:.0} µs — {}",
        batch100.p50_us,
        1.5 * piped100.p50_us,
        check(batch100.p50_us <= 1.5 * piped100.p50_us)
    );
    let _ = writeln!(
        md,
        "- BatchGet of 1000 p50 ≤ 6 × BatchGet of 100: {:.0} µs vs {:.0} µs ({:.1} ×) — {}",
        batch1000.p50_us,
        6.0 * batch100.p50_us,
        batch1000.p50_us / batch100.p50_us,
        check(batch1000.p50_us <= 6.0 * batch100.p50_us)
    );
    let storm = find("expiry storm, XFetch + stale-while-revalidate on");
    let ratio = storm.p99_us / get_hit.p99_us;
    let _ = writeln!(
        md,
        "- {} p99 ≤ 1.5 × steady Get-hit p99: {:.0} µs vs {:.0} µs ({ratio:.2} ×) — {}",
        storm.name,
        storm.p99_us,
        get_hit.p99_us,
        check(ratio <= 1.5)
    );
    let per_window = storm
        .note
        .rsplit_once(": ")
        .and_then(|(_, tail)| tail.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let _ = writeln!(
        md,
        "- expiry storm loader calls ≤ one per key per TTL window: {per_window:.2} — {}",
        check(per_window <= 1.0)
    );
    let stampede = find("stampede, leases on");
    let _ = writeln!(
        md,
        "- stampede with leases: {} — {}",
        stampede.note,
        check(stampede.note.contains(": 1.00 loader"))
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
    let _ = writeln!(
        md,
        "- server idle RSS after start ≤ 24 MiB: {idle_rss_mib:.1} MiB — {}",
        check(idle_rss_mib <= 24.0)
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
        "{{\"quick\":{quick},\"server_peak_rss_mib\":{rss_mib:.1},\"server_idle_rss_mib\":{idle_rss_mib:.1},\"results\":[\n{}\n]}}\n",
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
