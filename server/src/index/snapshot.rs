//! Index snapshots: the whole index in one file, so a restart reads one file instead of the
//! whole `faces` table, and an HNSW index comes back as its graph instead of being rebuilt.
//! The database stays the truth: after loading a snapshot the boot sequence reconciles it with
//! the database's face ids.
//!
//! Format (little endian): magic `RCFIDX02`, the stream id the snapshot is current to (`u16`
//! length and UTF-8 bytes, empty without Redis), then the index's own part: a kind byte, and
//! for exact search (`0`) the dimension (`u32`), the face count (`u64`) and per face `i64` face
//! id, `i64` user id and the embedding's `f32`s; for HNSW (`1`) the node count (`u64`), per
//! node face id, user id and a live flag, then the graph (parameters, vectors, links).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use super::{ExactIndex, FaceIndex, HnswIndex, HnswParams};

const MAGIC: &[u8; 8] = b"RCFIDX02";
/// Kind byte of an exact index.
pub(super) const KIND_EXACT: u8 = 0;
/// Kind byte of an HNSW index.
pub(super) const KIND_HNSW: u8 = 1;

/// Errors reading or writing a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read or written.
    #[error("snapshot I/O: {0}")]
    Io(io::Error),
    /// The file is not a snapshot of this format, or is damaged.
    #[error("not a Rollcall index snapshot of this version, or damaged: {0}")]
    Format(String),
}

impl From<io::Error> for SnapshotError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => {
                SnapshotError::Format(e.to_string())
            }
            _ => SnapshotError::Io(e),
        }
    }
}

/// A loaded snapshot.
pub struct Snapshot {
    /// The last event-stream id applied when it was written (empty when none).
    pub stream_id: String,
    /// The index, as it was.
    pub index: Arc<dyn FaceIndex>,
}

/// Reads `N` bytes.
pub(super) fn get<const N: usize>(r: &mut dyn Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Writes `f32`s.
pub(super) fn put_f32s(w: &mut dyn Write, v: &[f32]) -> io::Result<()> {
    for chunk in v.chunks(4096) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_all(&bytes)?;
    }
    Ok(())
}

/// Writes `u32`s.
pub(super) fn put_u32s(w: &mut dyn Write, v: &[u32]) -> io::Result<()> {
    for chunk in v.chunks(4096) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_all(&bytes)?;
    }
    Ok(())
}

fn get_words(r: &mut dyn Read, n: usize) -> io::Result<Vec<[u8; 4]>> {
    let mut out = Vec::with_capacity(n.min(1 << 28));
    let mut buf = vec![0u8; 16384];
    let mut left = n;
    while left > 0 {
        let take = left.min(4096);
        r.read_exact(&mut buf[..take * 4])?;
        out.extend(
            buf[..take * 4]
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]]),
        );
        left -= take;
    }
    Ok(out)
}

/// Reads `n` `f32`s.
pub(super) fn get_f32s(r: &mut dyn Read, n: usize) -> io::Result<Vec<f32>> {
    Ok(get_words(r, n)?
        .into_iter()
        .map(f32::from_le_bytes)
        .collect())
}

/// Reads `n` `u32`s.
pub(super) fn get_u32s(r: &mut dyn Read, n: usize) -> io::Result<Vec<u32>> {
    Ok(get_words(r, n)?
        .into_iter()
        .map(u32::from_le_bytes)
        .collect())
}

/// Writes `index` to `path` atomically (a temporary file renamed over it).
pub fn write(path: &Path, stream_id: &str, index: &dyn FaceIndex) -> Result<(), SnapshotError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| -> io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        w.write_all(MAGIC)?;
        let id = stream_id.as_bytes();
        w.write_all(&(id.len() as u16).to_le_bytes())?;
        w.write_all(id)?;
        index.write_snapshot(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(SnapshotError::Io(e));
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Reads the snapshot at `path`; an HNSW index searches with `params`' `ef_search`.
pub fn read(path: &Path, params: HnswParams) -> Result<Snapshot, SnapshotError> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path).map_err(SnapshotError::Io)?);
    if &get::<8>(&mut r)? != MAGIC {
        return Err(SnapshotError::Format("unknown magic".into()));
    }
    let len = u16::from_le_bytes(get(&mut r)?) as usize;
    let mut id = vec![0u8; len];
    r.read_exact(&mut id)?;
    let stream_id = String::from_utf8(id).map_err(|_| SnapshotError::Format("stream id".into()))?;
    let index: Arc<dyn FaceIndex> = match get::<1>(&mut r)?[0] {
        KIND_EXACT => Arc::new(ExactIndex::read_snapshot(&mut r)?),
        KIND_HNSW => Arc::new(HnswIndex::read_snapshot(&mut r, params)?),
        k => return Err(SnapshotError::Format(format!("index kind {k}"))),
    };
    if r.read(&mut [0u8; 1])? != 0 {
        return Err(SnapshotError::Format("trailing bytes".into()));
    }
    Ok(Snapshot { stream_id, index })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::testdata::clustered;

    fn round_trip(index: &dyn FaceIndex, queries: &[Vec<f32>]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/index.bin");
        write(&path, "1764000000000-3", index).unwrap();
        let back = read(&path, HnswParams::default()).unwrap();
        assert_eq!(back.stream_id, "1764000000000-3");
        assert_eq!(back.index.kind(), index.kind());
        assert_eq!(back.index.len(), index.len());
        assert_eq!(back.index.face_ids(), index.face_ids());
        assert_eq!(back.index.garbage_ratio(), index.garbage_ratio());
        for q in queries {
            assert_eq!(back.index.search(q, 3), index.search(q, 3));
        }
        // Damaged files are refused, not half-loaded.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(
            read(&path, HnswParams::default()),
            Err(SnapshotError::Format(_))
        ));
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(
            read(&path, HnswParams::default()),
            Err(SnapshotError::Format(_))
        ));
        assert!(matches!(
            read(&dir.path().join("none"), HnswParams::default()),
            Err(SnapshotError::Io(_))
        ));
    }

    #[test]
    fn exact_and_hnsw_indexes_round_trip_with_their_tombstones() {
        let (gallery, queries) = clustered(200, 2, 4);
        let exact = ExactIndex::new();
        let hnsw = HnswIndex::new(HnswParams::default());
        for (f, u, v) in &gallery {
            exact.upsert(*f, *u, v);
            hnsw.upsert(*f, *u, v);
        }
        for u in 1..=20 {
            exact.remove_user(u);
            hnsw.remove_user(u);
        }
        round_trip(&exact, &queries);
        round_trip(&hnsw, &queries);
        round_trip(&ExactIndex::new(), &queries);
    }
}
