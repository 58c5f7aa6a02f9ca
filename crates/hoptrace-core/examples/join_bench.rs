//! The join's speed on a file of OBS_DTYPE rows (a `.npy` saved from
//! FileSource's batches, or raw rows):
//!
//!     cargo run --release -p hoptrace-core --example join_bench -- ROWS.npy [BATCH_ROWS]
//!
//! Prints ns per sighting for parsing rows into `Obs` and for the join (feed in
//! batches of BATCH_ROWS, default 4096 as FileSource yields them, then flush),
//! the median and best of 7 runs, in wall time and in this thread's CPU time
//! (on a shared machine, wall time counts other processes' turns).

use hoptrace_core::correlate::{Finished, JoinConfig, Joiner};
use hoptrace_core::obs::{read_rows, ROW_SIZE};
use std::time::Instant;

const RUNS: usize = 7;

fn rows_of(data: &[u8]) -> Result<&[u8], String> {
    // .npy: magic, version (1 or 2/3), header length (u16 or u32 LE), header, data
    if !data.starts_with(b"\x93NUMPY") {
        return Ok(data);
    }
    let major = *data.get(6).ok_or("short .npy")?;
    let (len, at) = if major == 1 {
        let b = data.get(8..10).ok_or("short .npy")?;
        (u16::from_le_bytes([b[0], b[1]]) as usize, 10)
    } else {
        let b = data.get(8..12).ok_or("short .npy")?;
        (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
    };
    data.get(at + len..).ok_or_else(|| "short .npy".to_string())
}

#[path = "common/timing.rs"]
mod timing;
use timing::{cpu_ns, median};

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: join_bench ROWS.npy [BATCH_ROWS]")?;
    let batch: usize = args
        .next()
        .map(|s| s.parse().map_err(|e| format!("BATCH_ROWS: {e}")))
        .transpose()?
        .unwrap_or(4096);
    let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let raw = rows_of(&data)?;
    if raw.len() % ROW_SIZE != 0 {
        return Err(format!("{path}: not whole {ROW_SIZE}-byte rows"));
    }
    let n = raw.len() / ROW_SIZE;
    let (mut parse, mut join, mut keep) = (Vec::new(), Vec::new(), Vec::new());
    let (mut join_cpu, mut keep_cpu) = (Vec::new(), Vec::new());
    let mut summary = (0, 0, 0);
    for _ in 0..RUNS {
        let t = Instant::now();
        let obs = read_rows(raw);
        parse.push(t.elapsed().as_nanos() as f64 / n as f64);
        for (keep_obs, times, cpu) in [
            (false, &mut join, &mut join_cpu),
            (true, &mut keep, &mut keep_cpu),
        ] {
            let mut j = Joiner::new(JoinConfig {
                keep_obs,
                ..JoinConfig::default()
            });
            let mut out = Finished::default();
            let (mut paths, mut sightings) = (0, 0);
            let c = cpu_ns();
            let t = Instant::now();
            for b in obs.chunks(batch.max(1)) {
                j.feed(b, None, &mut out);
                paths += out.paths.len();
                sightings += out.sightings.len();
                out.clear();
            }
            j.flush(None, &mut out);
            paths += out.paths.len();
            sightings += out.sightings.len();
            times.push(t.elapsed().as_nanos() as f64 / n as f64);
            cpu.push((cpu_ns() - c) as f64 / n as f64);
            summary = (n, paths, sightings);
        }
    }
    let (n, paths, sightings) = summary;
    println!("{n} sightings -> {paths} paths ({sightings} sightings in them), batches of {batch}");
    println!("ns per sighting, median (best) of {RUNS} runs: wall time; this thread's CPU time");
    println!("parse rows:            {}", median(parse));
    println!(
        "join:                  {}; {}",
        median(join),
        median(join_cpu)
    );
    println!(
        "join, keeping the Obs: {}; {}",
        median(keep),
        median(keep_cpu)
    );
    Ok(())
}
