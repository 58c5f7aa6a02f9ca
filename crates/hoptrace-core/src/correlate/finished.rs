//! Finished paths as the join hands them on: flat columns, no object per path.

use crate::obs::Obs;

/// One finished path: its number (`p{num}`), the expiry step it finished in,
/// and its sightings, `sightings[start..end]` of the [`Finished`] it is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishedPath {
    pub num: u64,
    pub step: u64,
    pub start: usize,
    pub end: usize,
    /// One of its sightings was marked when fed (`Joiner::feed_with`).
    pub marked: bool,
}

/// Paths in the order they finished: the order they went idle (time of their
/// last sighting, then number) within one expiry step, steps in order. That is
/// the order in which what a path teaches (owned addresses, links, flows) must
/// be learnt. tests/reference/correlate.py hands out each step's paths sorted by number
/// ([`Finished::emission_order`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finished {
    pub paths: Vec<FinishedPath>,
    /// Indices into the stream of every sighting fed so far, path after path,
    /// each path's in path order (time, then arrival).
    pub sightings: Vec<u64>,
    /// The sightings themselves, parallel to `sightings` (only when the joiner keeps them).
    pub obs: Vec<Obs>,
    /// One of `obs` has a hop whose label is unnamed (known only when the joiner relabels
    /// them: `Joiner::add_hop_label`).
    pub unnamed: bool,
}

impl Finished {
    pub fn clear(&mut self) {
        self.paths.clear();
        self.sightings.clear();
        self.obs.clear();
        self.unnamed = false;
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub(super) fn push_path(&mut self, num: u64, step: u64, start: usize, marked: bool) {
        self.paths.push(FinishedPath {
            num,
            step,
            start,
            end: self.sightings.len(),
            marked,
        });
    }

    /// A path's sighting indices.
    pub fn sightings_of(&self, p: &FinishedPath) -> &[u64] {
        self.sightings.get(p.start..p.end).unwrap_or_default()
    }

    /// Indices into `paths` in the order tests/reference/correlate.py emits them: step by
    /// step, each step's paths by number.
    pub fn emission_order(&self) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.paths.len()).collect();
        o.sort_by_key(|&i| self.paths.get(i).map(|p| (p.step, p.num)));
        o
    }
}
