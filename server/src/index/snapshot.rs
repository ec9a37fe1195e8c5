//! Index snapshots: every face of the index in one file, so a restart reads one file instead of
//! the whole `faces` table. The database stays the truth: after loading a snapshot the boot
//! sequence reconciles it with the database's face ids.
//!
//! Format (little endian): magic `RCFIDX01`, `u32` dimension, `u64` face count, the stream id
//! the snapshot is current to (`u16` length and UTF-8 bytes, empty without Redis), then per face
//! `i64` face id, `i64` user id and `dimension` `f32`s.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::StoredEmbedding;

const MAGIC: &[u8; 8] = b"RCFIDX01";

/// Errors reading or writing a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read or written.
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    /// The file is not a snapshot of this format.
    #[error("not a Rollcall index snapshot (or a different version)")]
    Format,
}

/// The contents of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The last event-stream id applied when it was written (empty when none).
    pub stream_id: String,
    /// Every face.
    pub entries: Vec<StoredEmbedding>,
}

/// Writes `snapshot` to `path` atomically (a temporary file renamed over it).
pub fn write(path: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut w = BufWriter::new(File::create(&tmp)?);
        let dim = snapshot.entries.first().map_or(0, |e| e.embedding.len());
        w.write_all(MAGIC)?;
        w.write_all(&(dim as u32).to_le_bytes())?;
        w.write_all(&(snapshot.entries.len() as u64).to_le_bytes())?;
        let id = snapshot.stream_id.as_bytes();
        w.write_all(&(id.len() as u16).to_le_bytes())?;
        w.write_all(id)?;
        for e in &snapshot.entries {
            if e.embedding.len() != dim {
                return Err(SnapshotError::Format);
            }
            w.write_all(&e.face_id.to_le_bytes())?;
            w.write_all(&e.user_id.to_le_bytes())?;
            for x in &e.embedding {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Reads the snapshot at `path`.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let truncated = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => SnapshotError::Format,
        _ => SnapshotError::Io(e),
    };
    if &array::<8>(&mut r).map_err(truncated)? != MAGIC {
        return Err(SnapshotError::Format);
    }
    let dim = u32::from_le_bytes(array(&mut r).map_err(truncated)?) as usize;
    let count = u64::from_le_bytes(array(&mut r).map_err(truncated)?) as usize;
    let id_len = u16::from_le_bytes(array(&mut r).map_err(truncated)?) as usize;
    let mut id = vec![0u8; id_len];
    r.read_exact(&mut id).map_err(truncated)?;
    let stream_id = String::from_utf8(id).map_err(|_| SnapshotError::Format)?;
    if dim > 4096 {
        return Err(SnapshotError::Format);
    }
    let mut entries = Vec::with_capacity(count.min(1 << 24));
    let mut row = vec![0u8; 16 + 4 * dim];
    for _ in 0..count {
        r.read_exact(&mut row).map_err(truncated)?;
        let int = |at: usize| i64::from_le_bytes(row[at..at + 8].try_into().expect("8 bytes"));
        entries.push(StoredEmbedding {
            face_id: int(0),
            user_id: int(8),
            embedding: crate::store::embedding_from_bytes(&row[16..]),
        });
    }
    if r.read(&mut [0u8; 1])? != 0 {
        return Err(SnapshotError::Format);
    }
    Ok(Snapshot { stream_id, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/index.bin");
        let snapshot = Snapshot {
            stream_id: "1764000000000-3".into(),
            entries: (1..=5)
                .map(|i| StoredEmbedding {
                    face_id: i,
                    user_id: i * 10,
                    embedding: vec![i as f32 / 10.0; 128],
                })
                .collect(),
        };
        write(&path, &snapshot).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.stream_id, snapshot.stream_id);
        assert_eq!(back.entries.len(), 5);
        assert_eq!(back.entries[4].user_id, 50);
        assert_eq!(back.entries[4].embedding, vec![0.5; 128]);

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Format)));
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Format)));
        assert!(matches!(
            read(&dir.path().join("none")),
            Err(SnapshotError::Io(_))
        ));
    }
}
