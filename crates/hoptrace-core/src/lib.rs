//! hoptrace's engine: everything that runs once per sighting or once per path.
//!
//! Pure Rust with no Python in it (the binding crate `hoptrace-py` exposes it as
//! `tracer._core`), so it is tested with `cargo test` and fuzzed on its own.
//! It parses untrusted captures as root: no `unsafe` anywhere in this crate (the
//! compiler holds it to that), and no panic on any input (every read is bounds-checked).
#![forbid(unsafe_code)]

/// The core's version, which the binding reports so that a stale build is visible.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod annotate;
pub mod bpf;
pub mod column_worker;
pub mod columns;
pub mod correlate;
pub mod decode;
pub mod drops;
pub mod ebpf;
pub mod engine;
pub mod files;
pub mod finish;
pub mod flow_view;
pub mod flows;
pub mod hash;
pub mod labels;
pub mod learned;
pub mod local;
pub mod meta;
pub mod nat;
pub mod obs;
pub mod pcap;
pub mod pcapng;
pub mod pcapng_writer;
pub mod pyjson;
pub mod pytext;
pub mod raw_block;
pub mod reader;
pub mod record_step;
pub mod relay;
pub mod render;
pub mod report;
pub mod safe_text;
pub mod synth;
pub mod text;
pub mod text_render;
pub mod tpacket;
pub mod view;
