//! A Hierarchical Navigable Small World graph (Malkov & Yashunin, 2016) over normalised vectors
//! with cosine distance `1 - a·b`: the structure behind [`super::HnswIndex`].
//!
//! Laid out flat for speed: vectors in one buffer, layer-0 links in fixed-size rows of
//! `2·M` `u32`s, upper-layer links (a few percent of the nodes) in small vectors, and a
//! per-thread visited list reused across searches, so a search allocates almost nothing.
//! Nodes are never removed (the index above tombstones them); neighbours are chosen with the
//! paper's diversity heuristic, which keeps clusters (several photos of one person) connected
//! to the rest of the graph.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use std::io::{self, Read, Write};

use super::dot;
use super::snapshot::{get, get_f32s, get_u32s, put_f32s, put_u32s};

/// A distance with a total order, for the heaps.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Dist(f32);

impl Eq for Dist {}

impl PartialOrd for Dist {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Dist {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Asks the CPU to start loading `v` into cache; a hint that never faults (a no-op off x86-64).
#[inline(always)]
fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        // SAFETY: a prefetch is only a hint and never faults; SSE is baseline on x86-64.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                line.as_ptr().cast::<i8>(),
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Nodes inserted one at a time before [`Graph::extend`] switches to batches.
const SEQUENTIAL_NODES: usize = 2048;
/// Nodes per parallel batch of [`Graph::extend`].
const BATCH: usize = 256;

/// `f` over `items` on one scoped thread per worker state in `states` (each thread owns one),
/// results in order.
fn parallel_map<T: Sync, R: Send, S: Send>(
    items: &[T],
    states: &mut [S],
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let per = items.len().div_ceil(states.len().max(1)).max(1);
    if per >= items.len() {
        let state = &mut states[0];
        return items.iter().map(|item| f(state, item)).collect();
    }
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(per)
            .zip(states.iter_mut())
            .map(|(part, state)| {
                s.spawn(move || part.iter().map(|item| f(state, item)).collect::<Vec<R>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("an index build thread panicked"))
            .collect()
    })
}

/// Visit marks of one search at a time: `marks[node] == epoch` means visited.
#[derive(Default)]
struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    /// Forgets every visit and makes room for `len` nodes.
    fn reset(&mut self, len: usize) {
        if self.marks.len() < len {
            self.marks.resize(len, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
    }

    /// Marks `node` visited; false when it already was.
    #[inline]
    fn visit(&mut self, node: u32) -> bool {
        let m = &mut self.marks[node as usize];
        let fresh = *m != self.epoch;
        *m = self.epoch;
        fresh
    }

    #[inline]
    fn seen(&self, node: u32) -> bool {
        self.marks[node as usize] == self.epoch
    }
}

thread_local! {
    /// Visit marks of the searches on this thread.
    static VISITED: RefCell<Visited> = RefCell::new(Visited::default());
}

/// The graph. Node ids are dense, in insertion order.
pub struct Graph {
    dim: usize,
    /// Links per node on the upper layers (`M`); layer 0 holds twice as many.
    m: usize,
    ef_construction: usize,
    vectors: Vec<f32>,
    /// Layer-0 links: row `i` is `2·M` slots, the first `counts0[i]` in use.
    links0: Vec<u32>,
    counts0: Vec<u8>,
    /// Links on layers 1.. of each node (empty for the ~1 - 1/M nodes on layer 0 only).
    upper: Vec<Vec<Vec<u32>>>,
    entry: Option<u32>,
    top: usize,
    level_scale: f64,
    rng: u64,
}

impl Graph {
    /// An empty graph of `dim`-dimensional vectors with `m` links per node and layer.
    pub fn new(dim: usize, m: usize, ef_construction: usize, capacity: usize) -> Self {
        let m = m.clamp(2, 127);
        Self {
            dim,
            m,
            ef_construction: ef_construction.max(m),
            vectors: Vec::with_capacity(capacity * dim),
            links0: Vec::with_capacity(capacity * 2 * m),
            counts0: Vec::with_capacity(capacity),
            upper: Vec::with_capacity(capacity),
            entry: None,
            top: 0,
            level_scale: 1.0 / (m as f64).ln(),
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.counts0.len()
    }

    /// Links per node on the upper layers (`M`).
    pub fn m(&self) -> usize {
        self.m
    }

    /// Candidates explored while inserting.
    pub fn ef_construction(&self) -> usize {
        self.ef_construction
    }

    /// Dimension of the vectors (0 until the first insert fixes it).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The vector of node `i`.
    pub fn vector(&self, i: u32) -> &[f32] {
        let i = i as usize;
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    fn distance(&self, q: &[f32], i: u32) -> f32 {
        1.0 - dot(q, self.vector(i))
    }

    fn links(&self, i: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            let row = i as usize * 2 * self.m;
            &self.links0[row..row + self.counts0[i as usize] as usize]
        } else {
            &self.upper[i as usize][layer - 1]
        }
    }

    fn set_links(&mut self, i: u32, layer: usize, links: &[u32]) {
        if layer == 0 {
            let row = i as usize * 2 * self.m;
            self.links0[row..row + links.len()].copy_from_slice(links);
            self.counts0[i as usize] = links.len() as u8;
        } else {
            let l = &mut self.upper[i as usize][layer - 1];
            l.clear();
            l.extend_from_slice(links);
        }
    }

    fn capacity(&self, layer: usize) -> usize {
        if layer == 0 {
            2 * self.m
        } else {
            self.m
        }
    }

    fn random_level(&mut self) -> usize {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let u = ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        ((-u.ln() * self.level_scale) as usize).min(16)
    }

    /// Greedy walk to the node closest to `q` on `layer`, from `start`.
    fn greedy(&self, q: &[f32], mut best: (f32, u32), layer: usize) -> (f32, u32) {
        loop {
            let mut moved = false;
            for &n in self.links(best.1, layer) {
                let d = self.distance(q, n);
                if d < best.0 {
                    best = (d, n);
                    moved = true;
                }
            }
            if !moved {
                return best;
            }
        }
    }

    /// The `ef` nodes closest to `q` on `layer` reachable from `entry`, closest first.
    fn search_layer(
        &self,
        q: &[f32],
        entry: &[(f32, u32)],
        ef: usize,
        layer: usize,
        visited: &mut Visited,
    ) -> Vec<(f32, u32)> {
        visited.reset(self.len());
        let mut candidates: BinaryHeap<Reverse<(Dist, u32)>> = BinaryHeap::with_capacity(ef * 2);
        let mut found: BinaryHeap<(Dist, u32)> = BinaryHeap::with_capacity(ef + 1);
        for &(d, n) in entry {
            if visited.visit(n) {
                candidates.push(Reverse((Dist(d), n)));
                found.push((Dist(d), n));
            }
        }
        while found.len() > ef {
            found.pop();
        }
        while let Some(Reverse((Dist(d), c))) = candidates.pop() {
            let worst = found.peek().map_or(f32::INFINITY, |w| w.0 .0);
            if d > worst && found.len() >= ef {
                break;
            }
            let links = self.links(c, layer);
            // Start loading every unvisited neighbour's vector before computing the first
            // distance: at a million faces they live in RAM, not cache.
            for &n in links {
                if !visited.seen(n) {
                    prefetch(self.vector(n));
                }
            }
            for &n in links {
                if !visited.visit(n) {
                    continue;
                }
                let dn = self.distance(q, n);
                let worst = found.peek().map_or(f32::INFINITY, |w| w.0 .0);
                if found.len() < ef || dn < worst {
                    candidates.push(Reverse((Dist(dn), n)));
                    found.push((Dist(dn), n));
                    if found.len() > ef {
                        found.pop();
                    }
                }
            }
        }
        let mut out: Vec<(f32, u32)> = found.into_iter().map(|(d, n)| (d.0, n)).collect();
        out.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// The paper's heuristic with pruned connections kept: closest first, passing over a
    /// candidate that is closer to an already chosen neighbour than to the node itself, then
    /// filling the remaining places with the closest passed-over candidates (face embeddings
    /// are tight clusters at nearly equal distances from each other, where the bare heuristic
    /// leaves too few links); at most `max` of `candidates` (closest first).
    fn select(&self, candidates: &[(f32, u32)], max: usize) -> Vec<u32> {
        let mut chosen: Vec<u32> = Vec::with_capacity(max);
        let mut passed: Vec<u32> = Vec::new();
        for &(d, c) in candidates {
            if chosen.len() == max {
                break;
            }
            let v = self.vector(c);
            if chosen.iter().all(|&s| 1.0 - dot(v, self.vector(s)) > d) {
                chosen.push(c);
            } else {
                passed.push(c);
            }
        }
        let room = max - chosen.len();
        chosen.extend(passed.into_iter().take(room));
        chosen
    }

    /// Appends `vector` as a node without links and returns its id and level.
    fn push_node(&mut self, vector: &[f32]) -> (u32, usize) {
        if self.len() == 0 {
            self.dim = vector.len();
        }
        let id = self.len() as u32;
        let level = self.random_level();
        self.vectors.extend_from_slice(vector);
        self.links0.extend(std::iter::repeat_n(0, 2 * self.m));
        self.counts0.push(0);
        self.upper.push(vec![Vec::new(); level]);
        (id, level)
    }

    /// The level of node `i` (its highest layer).
    fn level(&self, i: u32) -> usize {
        self.upper[i as usize].len()
    }

    /// Adds `vector` as the next node and returns its id.
    pub fn insert(&mut self, vector: &[f32]) -> u32 {
        let id = self.len() as u32;
        VISITED.with(|v| self.insert_batch(&[vector], std::slice::from_mut(&mut v.borrow_mut())));
        id
    }

    /// `from`'s links on `layer` once `to` are added: all of them while they fit, else the
    /// heuristic's choice among the current and new ones.
    fn links_with(&self, from: u32, to: &[u32], layer: usize) -> Vec<u32> {
        let cap = self.capacity(layer);
        let mut all = self.links(from, layer).to_vec();
        for &t in to {
            if t != from && !all.contains(&t) {
                all.push(t);
            }
        }
        if all.len() <= cap {
            return all;
        }
        let base = self.vector(from);
        let mut candidates: Vec<(f32, u32)> =
            all.iter().map(|&n| (self.distance(base, n), n)).collect();
        candidates.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        self.select(&candidates, cap)
    }

    /// Adds `vectors` as the next nodes, in order, on up to `threads` threads; the same
    /// graph whatever `threads` is. Past the first [`SEQUENTIAL_NODES`] nodes they go in
    /// batches of [`BATCH`]: each new node's neighbours are searched in parallel in the graph
    /// as it was before the batch plus, exactly, among the batch itself, then all links are
    /// written, the reverse links re-selected in parallel as well.
    pub fn extend(&mut self, vectors: &[&[f32]], threads: usize) {
        let mut visited: Vec<Visited> = (0..threads.max(1)).map(|_| Visited::default()).collect();
        let mut rest = vectors;
        while !rest.is_empty() {
            let size = if self.len() < SEQUENTIAL_NODES {
                1
            } else {
                BATCH
            };
            let (batch, tail) = rest.split_at(rest.len().min(size));
            self.insert_batch(batch, &mut visited);
            rest = tail;
        }
    }

    /// Inserts `vectors` as one batch (see [`Graph::extend`]), one thread per visit list.
    fn insert_batch(&mut self, vectors: &[&[f32]], visited: &mut [Visited]) {
        let start = self.len() as u32;
        for v in vectors {
            self.push_node(v);
        }
        let batch: Vec<u32> = (start..self.len() as u32).collect();
        let plans = parallel_map(&batch, visited, |v, &id| self.plan(id, &batch, v));
        let mut reverse: Vec<(usize, u32, u32)> = Vec::new();
        for (&id, layers) in batch.iter().zip(&plans) {
            for (layer, neighbours) in layers.iter().enumerate() {
                self.set_links(id, layer, neighbours);
                reverse.extend(neighbours.iter().map(|&n| (layer, n, id)));
            }
        }
        reverse.sort_unstable();
        let groups: Vec<&[(usize, u32, u32)]> =
            reverse.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)).collect();
        let relinked = parallel_map(&groups, visited, |_, group| {
            let (layer, from, _) = group[0];
            let to: Vec<u32> = group.iter().map(|g| g.2).collect();
            self.links_with(from, &to, layer)
        });
        for (group, links) in groups.iter().zip(relinked) {
            let (layer, from, _) = group[0];
            self.set_links(from, layer, &links);
        }
        if let Some(&high) = batch.iter().max_by_key(|&&id| self.level(id)) {
            if self.entry.is_none() || self.level(high) > self.top {
                self.top = self.level(high);
                self.entry = Some(high);
            }
        }
    }

    /// Neighbours of the new node `id` on each of its layers, chosen among the graph as it
    /// was before `batch` (searched as in [`Graph::insert`]) and the batch's other nodes.
    fn plan(&self, id: u32, batch: &[u32], visited: &mut Visited) -> Vec<Vec<u32>> {
        let level = self.level(id);
        let q = self.vector(id);
        let mut entries = Vec::new();
        if let Some(entry) = self.entry {
            let mut best = (self.distance(q, entry), entry);
            for layer in (level + 1..=self.top).rev() {
                best = self.greedy(q, best, layer);
            }
            entries.push(best);
        }
        let mut plan = vec![Vec::new(); level + 1];
        for layer in (0..=level).rev() {
            let found = if layer <= self.top && !entries.is_empty() {
                self.search_layer(q, &entries, self.ef_construction, layer, visited)
            } else {
                Vec::new()
            };
            let mut candidates = found.clone();
            candidates.extend(
                batch
                    .iter()
                    .filter(|&&p| p != id && self.level(p) >= layer)
                    .map(|&p| (self.distance(q, p), p)),
            );
            candidates.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
            plan[layer] = self.select(&candidates, self.m);
            if !found.is_empty() {
                entries = found;
            }
        }
        plan
    }

    /// The `ef` nodes closest to `q` (at least `ef` are examined), closest first, as
    /// `(distance, node)`.
    pub fn search(&self, q: &[f32], ef: usize) -> Vec<(f32, u32)> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        if q.len() != self.dim {
            return Vec::new();
        }
        let mut best = (self.distance(q, entry), entry);
        for layer in (1..=self.top).rev() {
            best = self.greedy(q, best, layer);
        }
        VISITED.with(|v| self.search_layer(q, &[best], ef.max(1), 0, &mut v.borrow_mut()))
    }

    /// Writes the graph: parameters, vectors and links (read back by [`Graph::read`]).
    pub fn write(&self, w: &mut dyn Write) -> io::Result<()> {
        for v in [self.dim, self.m, self.ef_construction, self.top] {
            w.write_all(&(v as u32).to_le_bytes())?;
        }
        w.write_all(&(self.len() as u64).to_le_bytes())?;
        w.write_all(&self.entry.map_or(-1i64, i64::from).to_le_bytes())?;
        w.write_all(&self.rng.to_le_bytes())?;
        put_f32s(w, &self.vectors)?;
        put_u32s(w, &self.links0)?;
        w.write_all(&self.counts0)?;
        for levels in &self.upper {
            w.write_all(&[levels.len() as u8])?;
            for l in levels {
                w.write_all(&[l.len() as u8])?;
                put_u32s(w, l)?;
            }
        }
        Ok(())
    }

    /// Reads a graph written by [`Graph::write`], checking that every link points at a node.
    pub fn read(r: &mut dyn Read) -> io::Result<Self> {
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("index graph: {what}"));
        let mut u32s = [0u32; 4];
        for v in &mut u32s {
            *v = u32::from_le_bytes(get(r)?);
        }
        let [dim, m, ef_construction, top] = u32s.map(|v| v as usize);
        let len = u64::from_le_bytes(get(r)?) as usize;
        let entry = i64::from_le_bytes(get(r)?);
        let rng = u64::from_le_bytes(get(r)?);
        if !(2..=127).contains(&m) || dim > 4096 || top > 16 || len > u32::MAX as usize {
            return Err(bad("parameters out of range"));
        }
        let mut g = Graph::new(dim, m, ef_construction, 0);
        g.top = top;
        g.rng = rng;
        g.entry = match entry {
            -1 if len == 0 => None,
            e if (0..len as i64).contains(&e) => Some(e as u32),
            _ => return Err(bad("entry point")),
        };
        g.vectors = get_f32s(r, len * dim)?;
        g.links0 = get_u32s(r, len * 2 * m)?;
        g.counts0 = vec![0u8; len];
        r.read_exact(&mut g.counts0)?;
        g.upper = Vec::with_capacity(len);
        for _ in 0..len {
            let levels = get::<1>(r)?[0] as usize;
            if levels > top {
                return Err(bad("node level"));
            }
            let mut node = Vec::with_capacity(levels);
            for _ in 0..levels {
                let n = get::<1>(r)?[0] as usize;
                if n > m {
                    return Err(bad("upper links"));
                }
                node.push(get_u32s(r, n)?);
            }
            g.upper.push(node);
        }
        let in_range = |l: &u32| (*l as usize) < len;
        if g.counts0.iter().any(|&c| c as usize > 2 * m)
            || !g.links0.iter().all(in_range)
            || !g.upper.iter().flatten().flatten().all(in_range)
        {
            return Err(bad("links"));
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::testdata::clustered;

    fn built(threads: usize) -> (Graph, Vec<Vec<f32>>) {
        let (gallery, queries) = clustered(1200, 3, 7);
        let vectors: Vec<&[f32]> = gallery.iter().map(|(_, _, v)| v.as_slice()).collect();
        let mut g = Graph::new(0, 16, 64, vectors.len());
        g.extend(&vectors, threads);
        (g, queries)
    }

    fn bytes(g: &Graph) -> Vec<u8> {
        let mut out = Vec::new();
        g.write(&mut out).unwrap();
        out
    }

    #[test]
    fn batched_extend_builds_the_same_graph_on_any_number_of_threads() {
        let (one, _) = built(1);
        let (three, _) = built(3);
        assert!(one.len() > SEQUENTIAL_NODES + BATCH, "batches were used");
        assert_eq!(bytes(&one), bytes(&three));
    }

    #[test]
    fn batched_extend_links_every_node_and_finds_each_cluster() {
        let (g, queries) = built(2);
        for i in 0..g.len() as u32 {
            assert!(!g.links(i, 0).is_empty(), "node {i} has no layer-0 links");
        }
        // Query u is a fresh sample of identity u, whose faces are nodes 3u..3u+3.
        let hits = queries
            .iter()
            .enumerate()
            .filter(|(u, q)| g.search(q, 32)[0].1 as usize / 3 == *u)
            .count();
        assert!(
            hits as f32 >= 0.99 * queries.len() as f32,
            "{hits} of {}",
            queries.len()
        );
    }
}
