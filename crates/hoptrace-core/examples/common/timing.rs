//! What the examples' benchmarks time with: this thread's CPU time and "median (best)".

/// This thread's CPU time (ns), which other work on a shared machine does not inflate.
pub fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// "median (best)" of some runs.
pub fn median(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!("{:.1} ({:.1})", v[v.len() / 2], v[0])
}
