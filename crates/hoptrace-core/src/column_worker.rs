//! `report --parquet`'s columns (columns.rs) built on a thread of their own beside the
//! engine: each shown path is copied (its head, sightings and NAT events) into a batch,
//! and full batches go to the thread, which makes the rows exactly as
//! [`Columns::add_path`] would have on the engine's thread, path by path in the same
//! order, with the labels as they were when the path was shown (a copy goes along
//! whenever they changed). Emptied batches come back to be filled again, so the run
//! allocates a few batches, not one per 1024 paths. When no thread can be made, the
//! columns are built in line.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::columns::Columns;
use crate::finish::ShownPath;
use crate::labels::Labels;
use crate::nat::{NatEvent, Verdict};
use crate::obs::Obs;

/// Paths per batch (about 1 MB of sightings on 5-hop paths).
const BATCH_PATHS: usize = 1024;
/// Full batches waiting for the thread before the engine waits for it.
const IN_FLIGHT: usize = 2;

#[derive(Debug, Clone, Copy)]
struct Head {
    num: u64,
    flow: Option<u64>,
    verdict: Verdict,
    hops: usize,
    nat: usize,
}

#[derive(Debug, Default)]
struct Batch {
    /// The labels from this batch on, when they changed.
    labels: Option<Arc<Labels>>,
    heads: Vec<Head>,
    hops: Vec<Obs>,
    nat: Vec<NatEvent>,
}

/// Where the columns are being built.
#[derive(Debug)]
pub enum ColumnBuilder {
    Here(Box<Columns>),
    Thread(Box<Worker>),
}

#[derive(Debug)]
pub struct Worker {
    batch: Batch,
    /// The generation of the labels last sent.
    sent: Option<u64>,
    tx: Option<SyncSender<Batch>>,
    spare: Mutex<Receiver<Batch>>,
    thread: Option<JoinHandle<Columns>>,
}

impl ColumnBuilder {
    /// On a thread of its own if one can be made, else here.
    pub fn start() -> ColumnBuilder {
        let (tx, rx) = mpsc::sync_channel::<Batch>(IN_FLIGHT);
        let (back_tx, back_rx) = mpsc::sync_channel::<Batch>(IN_FLIGHT + 1);
        let spawned = std::thread::Builder::new()
            .name("hoptrace-columns".into())
            .spawn(move || build(&rx, &back_tx));
        match spawned {
            Ok(thread) => ColumnBuilder::Thread(Box::new(Worker {
                batch: Batch::default(),
                sent: None,
                tx: Some(tx),
                spare: Mutex::new(back_rx),
                thread: Some(thread),
            })),
            Err(_) => ColumnBuilder::Here(Box::default()),
        }
    }

    /// Built here, on the caller's thread.
    pub fn here() -> ColumnBuilder {
        ColumnBuilder::Here(Box::default())
    }

    #[inline]
    pub fn add_path(&mut self, p: &ShownPath<'_>, labels: &Labels) {
        match self {
            ColumnBuilder::Here(c) => c.add_path(p, labels),
            ColumnBuilder::Thread(w) => w.add_path(p, labels),
        }
    }

    /// Every path is in: the columns (None if their thread failed).
    pub fn finish(self) -> Option<Columns> {
        match self {
            ColumnBuilder::Here(c) => Some(*c),
            ColumnBuilder::Thread(mut w) => {
                w.send();
                w.tx = None; // the thread's loop ends with the last batch
                w.thread.take()?.join().ok()
            }
        }
    }
}

impl Worker {
    #[inline]
    fn add_path(&mut self, p: &ShownPath<'_>, labels: &Labels) {
        if self.sent != Some(labels.generation()) {
            // A batch's paths are built with the labels it carries: the paths before the
            // change go with the labels they were shown with.
            if !self.batch.heads.is_empty() {
                self.send();
            }
            self.batch.labels = Some(Arc::new(labels.clone()));
            self.sent = Some(labels.generation());
        }
        let b = &mut self.batch;
        b.heads.push(Head {
            num: p.num,
            flow: p.flow,
            verdict: p.verdict,
            hops: p.hops.len(),
            nat: p.nat.len(),
        });
        b.hops.extend_from_slice(p.hops);
        b.nat.extend_from_slice(p.nat);
        if b.heads.len() >= BATCH_PATHS {
            self.send();
        }
    }

    /// The batch to the thread (if it has paths), and an emptied one to fill.
    fn send(&mut self) {
        if self.batch.heads.is_empty() && self.batch.labels.is_none() {
            return;
        }
        let next = self
            .spare
            .lock()
            .ok()
            .and_then(|rx| rx.try_recv().ok())
            .unwrap_or_default();
        let full = std::mem::replace(&mut self.batch, next);
        if let Some(tx) = &self.tx {
            // The thread is gone only if it failed: finish says so.
            let _ = tx.send(full);
        }
    }
}

/// The thread: batches into columns until the engine's side hangs up.
fn build(rx: &Receiver<Batch>, back: &SyncSender<Batch>) -> Columns {
    let mut columns = Columns::default();
    let mut labels = Arc::new(Labels::new());
    for mut b in rx {
        if let Some(l) = b.labels.take() {
            labels = l;
        }
        let (mut h, mut n) = (0, 0);
        for head in &b.heads {
            let hops = b.hops.get(h..h + head.hops).unwrap_or_default();
            let nat = b.nat.get(n..n + head.nat).unwrap_or_default();
            (h, n) = (h + head.hops, n + head.nat);
            let p = ShownPath {
                num: head.num,
                flow: head.flow,
                verdict: head.verdict,
                hops,
                nat,
            };
            columns.add_path(&p, &labels);
        }
        b.heads.clear();
        b.hops.clear();
        b.nat.clear();
        let _ = back.try_send(b); // kept for reuse, unless enough are
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(hop: u32, ts_ns: u64, drop_reason: u32) -> Obs {
        Obs {
            hop,
            ts_ns,
            family: 4,
            ethertype: 0x800,
            dir: 1,
            drop_reason,
            ..Obs::default()
        }
    }

    /// The thread's columns are the ones built in line, labels changing along the way
    /// (new hops, a drop reason renamed) and paths across several batches.
    #[test]
    fn thread_builds_what_the_caller_would() {
        let mut labels = Labels::new();
        let mut here = ColumnBuilder::here();
        let mut there = ColumnBuilder::start();
        assert!(matches!(there, ColumnBuilder::Thread(_)));
        let mut hops = Vec::new();
        for i in 0..(3 * BATCH_PATHS as u64 + 7) {
            if i % 500 == 0 {
                labels.intern(&format!("node{i}"), "eth0");
                labels.set_drop_reason(2, &format!("REASON_{}", i / 1000));
            }
            let n = labels.len() as u32;
            hops.clear();
            hops.extend(
                (0..1 + i % 4).map(|k| obs((i as u32 + k as u32) % n, i * 10 + k, (k % 3) as u32)),
            );
            let p = ShownPath {
                num: i,
                flow: (i % 3 != 0).then_some(i / 3),
                verdict: Verdict::Delivered,
                hops: &hops,
                nat: &[],
            };
            here.add_path(&p, &labels);
            there.add_path(&p, &labels);
        }
        let (Some(mut a), Some(mut b)) = (here.finish(), there.finish()) else {
            panic!("no columns");
        };
        let (pa, pb) = (a.finish(), b.finish());
        assert_eq!((pa.0.data, pa.1.data), (pb.0.data, pb.1.data));
        let (a, b) = (&a.obs, &b.obs);
        assert_eq!(a.ts_ns.to_vec(), b.ts_ns.to_vec());
        assert_eq!(a.node.codes.to_vec(), b.node.codes.to_vec());
        assert_eq!(a.node.values.data, b.node.values.data);
        assert_eq!(a.drop_reason.codes.to_vec(), b.drop_reason.codes.to_vec());
        assert_eq!(a.drop_reason.values.data, b.drop_reason.values.data);
        let ids = |c: &crate::columns::ChunkedStr| -> Vec<u8> {
            c.chunks
                .iter()
                .flat_map(|s| s.data.iter().copied())
                .collect()
        };
        assert_eq!(ids(&a.path_id), ids(&b.path_id));
        assert_eq!(ids(&a.flow), ids(&b.flow));
        assert_eq!(a.flow_valid.to_vec(), b.flow_valid.to_vec());
    }
}
