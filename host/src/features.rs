//! Features kept on disk as they are computed, so that a long run stopped by Ctrl-C or a crash resumes where it
//! stopped instead of starting again: `eval --ijb`'s faces, `enroll`'s and `embed`'s images.
//!
//! [`compute_resumable`] computes the features of a list of records (faces, images) chunk after chunk. With a
//! [`Resume`] file, each chunk's features are also written to it; a run started again reads back the chunks the file
//! holds and computes only the rest. The result is the same, bit for bit, as that of a run that was never stopped.
//!
//! The file: a 32-byte header (the magic, the key, `D`, the records committed), then one record of `D` little-endian
//! f32 each, in record order. Each chunk's records are written and synced, then the header's count; only counted
//! records are trusted (space a crash left unwritten is not), and only whole chunks (so a resumed run computes in
//! the chunks an unstopped one does). Two runs must not share one file at a time: nothing locks it, but a run whose
//! file another run has taken meanwhile (its header or length changed) stops at its next chunk rather than
//! interleave records.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

/// Where and under what identity a computation keeps its features.
#[derive(Clone, Copy, Debug)]
pub struct Resume<'a> {
    /// The file.
    pub path: &'a Path,
    /// Eight bytes naming what the file holds (`EFIJBFT1`: IJB face features).
    pub magic: &'a [u8; 8],
    /// A fingerprint of the inputs ([`crate::fingerprint::Fnv1a`]): the records, their order, and whatever else
    /// makes their features (the input size, say). A file of another fingerprint is started afresh.
    pub key: u64,
    /// No note when records are read back (a file started afresh is always noted).
    pub quiet: bool,
}

/// The features of `total` records, `(total, D)`, computed `chunk` records at a time by `compute(start, count)`
/// (which returns `(count, D)`), each chunk handed to `take(start, D, features)` in record order as it is computed
/// or read back; `progress(done)` after each chunk.
///
/// With `resume`, the features are also kept in that file (its format: the module documentation): the first chunk
/// is always computed, and when the file holds this computation's records (its magic, key and `D`, and its first
/// chunk the same bits as the one just computed: the same model on the same device), the chunks it holds are read
/// back and only the rest computed; else it is started afresh, with a note on stderr. Returns `D`.
pub fn compute_resumable(
    total: usize,
    chunk: usize,
    resume: Option<Resume>,
    mut compute: impl FnMut(usize, usize) -> Result<Vec<f32>>,
    mut take: impl FnMut(usize, usize, &[f32]) -> Result<()>,
    mut progress: impl FnMut(usize),
) -> Result<usize> {
    ensure!(chunk > 0, "chunks of no records");
    if total == 0 {
        return Ok(0);
    }
    let first_count = chunk.min(total);
    let first = compute(0, first_count)?;
    let dim = first.len() / first_count;
    ensure!(dim > 0 && dim * first_count == first.len(), "{} values for {first_count} records", first.len());
    let mut file = match resume {
        Some(r) => Some(FeatureFile::open(r, &first, first_count, total)?),
        None => None,
    };
    // Records the file holds, read back a chunk at a time; then the first chunk's, then the rest computed.
    let mut done = 0;
    if let Some(f) = file.as_mut() {
        let held = f.records.min(total);
        while done < held {
            let count = chunk.min(held - done);
            take(done, dim, &f.read(count)?)?;
            done += count;
            progress(done);
        }
    }
    while done < total {
        let count = chunk.min(total - done);
        let features = if done == 0 { first.clone() } else { compute(done, count)? };
        ensure!(features.len() == count * dim, "{} values for {count} records of {dim}", features.len());
        take(done, dim, &features)?;
        if let Some(f) = file.as_mut() {
            f.append(&features)?;
        }
        done += count;
        progress(done);
    }
    Ok(dim)
}

/// A file of the features computed so far (its format: the module documentation).
struct FeatureFile {
    file: std::fs::File,
    path: PathBuf,
    dim: usize,
    /// Records in the file.
    records: usize,
    /// The header as this run wrote it last: compared before each append, so that another run that took the file
    /// meanwhile stops this one instead of the two interleaving their records.
    head: [u8; 32],
}

const HEADER: u64 = 32;

impl FeatureFile {
    /// Opens the file of `r` for `total` records whose first chunk (`chunk` records) has the features `first`
    /// (`(chunk, D)`): the records already there when they are this computation's (see [`compute_resumable`]);
    /// else a new file.
    fn open(r: Resume, first: &[f32], chunk: usize, total: usize) -> Result<Self> {
        let path = r.path;
        let dim = first.len() / chunk;
        let record = 4 * dim as u64;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
        let mut records = 0;
        if len >= HEADER {
            let mut head = [0u8; 32];
            file.read_exact(&mut head).with_context(|| format!("cannot read {}", path.display()))?;
            let word = |k: usize| u64::from_le_bytes(head[k..k + 8].try_into().expect("8 bytes"));
            let present = (len - HEADER) / record;
            let committed = word(24).min(present) as usize;
            // Whole chunks, or all the records.
            let usable = if committed == total { total } else { committed / chunk * chunk };
            let fits = usable >= chunk.min(total) && usable <= total;
            if &head[..8] == r.magic && word(8) == r.key && word(16) == dim as u64 && fits {
                let mut stored = vec![0u8; first.len() * 4];
                file.read_exact(&mut stored).with_context(|| format!("cannot read {}", path.display()))?;
                if stored.chunks_exact(4).zip(first).all(|(b, v)| b == v.to_le_bytes()) {
                    records = usable;
                }
            }
            if records == 0 && word(24) > 0 {
                eprintln!(
                    "note: {} holds features of other inputs or another model (or of no whole chunk): starting \
                     afresh",
                    path.display()
                );
            } else if records > 0 && !r.quiet {
                eprintln!("note: the features of {records} of {total} read back from {}", path.display());
            }
        }
        // Keep the trusted records, or start afresh.
        file.set_len(HEADER + records as u64 * record).with_context(|| format!("cannot write {}", path.display()))?;
        let mut head = [0u8; 32];
        head[..8].copy_from_slice(r.magic);
        head[8..16].copy_from_slice(&r.key.to_le_bytes());
        head[16..24].copy_from_slice(&(dim as u64).to_le_bytes());
        head[24..].copy_from_slice(&(records as u64).to_le_bytes());
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&head))
            .and_then(|()| file.seek(SeekFrom::Start(HEADER)))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { file, path: path.to_path_buf(), dim, records, head })
    }

    /// Reads the next `count` records (all present).
    fn read(&mut self, count: usize) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; count * self.dim * 4];
        self.file.read_exact(&mut bytes).with_context(|| format!("cannot read {}", self.path.display()))?;
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect())
    }

    /// Appends records (after every record read), makes them durable, then counts them in the header. Errors when
    /// the file is not as this run left it (its header or its length changed: another run writes it).
    fn append(&mut self, features: &[f32]) -> Result<()> {
        let here = HEADER + (self.records * self.dim * 4) as u64;
        let mut head = [0u8; 32];
        let len = self
            .file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_exact(&mut head))
            .and_then(|()| self.file.metadata())
            .and_then(|m| self.file.seek(SeekFrom::Start(here)).map(|_| m.len()))
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        ensure!(
            head == self.head && len == here,
            "{} changed while this run wrote it (another run with the same --out?): stopped; give each run its own \
             --out",
            self.path.display()
        );
        let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
        let records = self.records + features.len() / self.dim;
        let end = HEADER + (records * self.dim * 4) as u64;
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data())
            .and_then(|()| self.file.seek(SeekFrom::Start(24)))
            .and_then(|_| self.file.write_all(&(records as u64).to_le_bytes()))
            .and_then(|()| self.file.sync_data())
            .and_then(|()| self.file.seek(SeekFrom::Start(end)))
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.records = records;
        self.head[24..].copy_from_slice(&(records as u64).to_le_bytes());
        Ok(())
    }
}
