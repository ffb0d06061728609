//! MXNet RecordIO: insightface's `train.rec` + `train.idx` + `property` training sets, read and written.
//!
//! # The container (dmlc-core RecordIO)
//!
//! A `.rec` file is a sequence of records. Each stored part is
//!
//! ```text
//! u32 magic 0xced7230a | u32 lrec | payload (lrec & (2^29 - 1) bytes) | zero padding to a multiple of 4
//! ```
//!
//! all little-endian, with `cflag = lrec >> 29`. A record is stored whole (`cflag` 0) unless its payload
//! contains the magic at a 4-aligned offset: the writer then cuts the payload at each such occurrence, drops those
//! four bytes, and stores the pieces as a first part (`cflag` 1), middle parts (2) and a last part (3), so that
//! the magic appears in the file only at the start of a part. Pieces may be empty. A reader joins the pieces
//! with the magic between them. Only 4-aligned occurrences are cut (a magic at an unaligned payload offset is
//! stored as is); every piece but the last is therefore a multiple of 4 long and needs no padding.
//!
//! The `.idx` file is text, one line per record: `key\toffset\n`, the byte offset of the record's first part.
//!
//! # The payload (MXNet `recordio.pack`, `IRHeader`)
//!
//! `u32 flag, f32 label, u64 id, u64 id2` (24 bytes, little-endian); when `flag > 0`, `flag` more `f32` labels
//! follow (and `label` is unused, written 0); the rest is the encoded image.
//!
//! # insightface's layout
//!
//! Record 0 is a header with `flag >= 2` and labels `[a, b]`: images are keys `1..a`, and keys `a..b` are one
//! record per identity whose labels `[start, end)` are that identity's image keys (empty image data). An image's
//! class is its `label` (the first of its labels when `flag > 0`). The `property` file holds `num_classes,H,W`.
//!
//! Files without such a header (no key 0, or key 0 with `flag == 0`) are read as insightface's `MXFaceDataset`
//! reads them: every key of the `.idx` is an image, in ascending key order.
//!
//! # Reading
//!
//! [`RecordIoDataset`] keeps the index in memory (16 bytes per key) and reads records with positioned reads
//! (`pread` on Unix) on one shared file handle, so any number of loader threads read concurrently without locks
//! or seeks. Structural problems of the index (unparsable lines, duplicate keys, offsets past the end, image keys
//! the header promises but the index lacks) fail [`RecordIoDataset::open`]; problems of one record (a bad magic, a
//! truncated part, a label out of range, a corrupt JPEG) fail loading that record only, naming the file and key.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use elasticface_core::nn::ImageShape;

use super::decode::decode_rgb;
use super::{Dataset, Sample};

/// The RecordIO magic word that starts every stored part.
pub const MAGIC: u32 = 0xced7_230a;
/// Bits of `lrec` that hold the part's length; the top 3 bits hold `cflag`.
const LENGTH_MASK: u32 = (1 << 29) - 1;
/// Largest payload one record can hold (dmlc-core's limit): its length must fit the 29 length bits.
pub const MAX_RECORD_LEN: usize = LENGTH_MASK as usize;
/// Size of MXNet's `IRHeader`.
pub const IR_HEADER_LEN: usize = 24;

/// Integers below this are exact in `f32` (labels and keys of range records are stored as `f32`).
const F32_EXACT: u64 = 1 << 24;

/// `cflag` of a record stored whole.
const CFLAG_WHOLE: u32 = 0;
/// `cflag` of the first part of a split record.
const CFLAG_FIRST: u32 = 1;
/// `cflag` of a middle part.
const CFLAG_MIDDLE: u32 = 2;
/// `cflag` of the last part.
const CFLAG_LAST: u32 = 3;

/// Rounds `n` up to a multiple of 4.
const fn align4(n: u64) -> u64 {
    (n + 3) & !3
}

// ---------------------------------------------------------------------------------------------------------------
// Payload: IRHeader + labels + image
// ---------------------------------------------------------------------------------------------------------------

/// MXNet's `IRHeader` and the extra labels that follow it when `flag > 0`.
#[derive(Clone, Debug, PartialEq)]
pub struct IrHeader {
    /// Number of extra `f32` labels after the header (0: the single label is [`IrHeader::label`]).
    pub flag: u32,
    /// The label when `flag == 0` (MXNet writes 0 here otherwise).
    pub label: f32,
    /// First id field (insightface writes the record's key for images).
    pub id: u64,
    /// Second id field.
    pub id2: u64,
    /// The `flag` labels that follow the header (empty when `flag == 0`).
    pub labels: Vec<f32>,
}

impl IrHeader {
    /// A header with one label (`flag == 0`), as MXNet's `pack` writes for a scalar label.
    pub fn single(label: f32, id: u64, id2: u64) -> Self {
        Self { flag: 0, label, id, id2, labels: Vec::new() }
    }

    /// A header with several labels (`flag == labels.len()`), as MXNet's `pack` writes for an array label.
    pub fn multi(labels: Vec<f32>, id: u64, id2: u64) -> Self {
        Self { flag: labels.len() as u32, label: 0.0, id, id2, labels }
    }

    /// The record's class label as insightface reads it: `label` when `flag == 0`, else the first extra label.
    /// (NaN for a header whose `flag > 0` but that holds no label, which [`IrHeader::parse`] never returns.)
    pub fn primary_label(&self) -> f32 {
        match (self.flag, self.labels.first()) {
            (0, _) => self.label,
            (_, Some(&first)) => first,
            (_, None) => f32::NAN,
        }
    }

    /// Splits a record payload into its header and the data (image bytes) after it.
    pub fn parse(payload: &[u8]) -> Result<(Self, &[u8])> {
        ensure!(
            payload.len() >= IR_HEADER_LEN,
            "payload of {} bytes is shorter than the {IR_HEADER_LEN}-byte IRHeader",
            payload.len()
        );
        let u32_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
        let flag = u32_at(0);
        let label = f32::from_bits(u32_at(4));
        let (id, id2) = (u64_at(8), u64_at(16));
        let labels_end = (flag as usize).checked_mul(4).and_then(|n| n.checked_add(IR_HEADER_LEN));
        let labels_end = match labels_end {
            Some(end) if end <= payload.len() => end,
            _ => bail!(
                "IRHeader flag {flag} announces {flag} labels but the payload has only {} bytes after the header",
                payload.len() - IR_HEADER_LEN
            ),
        };
        let labels = payload[IR_HEADER_LEN..labels_end]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        Ok((Self { flag, label, id, id2, labels }, &payload[labels_end..]))
    }

    /// The payload MXNet's `recordio.pack(header, data)` builds: this header, its labels, then `data`. The flag
    /// written is the number of labels (`self.flag` is not consulted).
    pub fn pack(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(IR_HEADER_LEN + 4 * self.labels.len() + data.len());
        out.extend_from_slice(&(self.labels.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.label.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.id2.to_le_bytes());
        for l in &self.labels {
            out.extend_from_slice(&l.to_le_bytes());
        }
        out.extend_from_slice(data);
        out
    }
}

/// `value` as a class index: it must be a finite integer in `[0, num_classes)`.
fn class_label(value: f32, num_classes: usize) -> Result<u32> {
    ensure!(value.is_finite() && value.fract() == 0.0, "label {value} is not an integer");
    ensure!(value >= 0.0 && (value as f64) < num_classes as f64, "label {value} is outside [0, {num_classes})");
    Ok(value as u32)
}

/// `value` as a record key: a finite non-negative integer below 2^53 (exact in f64; f32 holds exact integers
/// up to 2^24, the most any insightface header holds).
fn key_label(value: f32, what: &str) -> Result<u64> {
    ensure!(
        value.is_finite() && value.fract() == 0.0 && value >= 0.0,
        "{what} {value} is not a non-negative integer key"
    );
    Ok(value as u64)
}

// ---------------------------------------------------------------------------------------------------------------
// The .rec file: positioned reads
// ---------------------------------------------------------------------------------------------------------------

/// A `.rec` file opened for concurrent random access: [`RecordFile::read_record`] takes `&self`.
#[derive(Debug)]
pub struct RecordFile {
    file: File,
    path: PathBuf,
    len: u64,
}

impl RecordFile {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open RecordIO file {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
        Ok(Self { file, path: path.to_owned(), len })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file was empty when opened.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The payload of the record whose first part starts at `offset`, split parts joined with the magic.
    ///
    /// Errors (the offset and the problem; the caller names file and key): a part running past the end of the
    /// file, a wrong magic, a `cflag` out of sequence (a record must be `0`, or `1` then any `2`s then `3`).
    pub fn read_record(&self, offset: u64) -> Result<Vec<u8>> {
        let mut payload = Vec::new();
        let mut pos = offset;
        let mut first = true;
        loop {
            let mut head = [0u8; 8];
            self.read_at(&mut head, pos).with_context(|| format!("record part header at offset {pos}"))?;
            let magic = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
            ensure!(magic == MAGIC, "no RecordIO magic at offset {pos}: found {magic:#010x}, expected {MAGIC:#010x}");
            let lrec = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
            let (cflag, len) = (lrec >> 29, lrec & LENGTH_MASK);
            let expected = if first { "0 or 1" } else { "2 or 3 (a split record continues)" };
            let in_sequence = if first { cflag == CFLAG_WHOLE || cflag == CFLAG_FIRST } else { cflag >= CFLAG_MIDDLE };
            ensure!(in_sequence, "record part at offset {pos} has cflag {cflag}, expected {expected}");
            // Bounds first: a corrupt length must not allocate up to 512 MiB before failing.
            ensure!(
                pos + 8 + u64::from(len) <= self.len,
                "truncated: record part at offset {pos} holds {len} bytes but the file ends at {}",
                self.len
            );
            let start = payload.len();
            payload.resize(start + len as usize, 0);
            self.read_at(&mut payload[start..], pos + 8)
                .with_context(|| format!("record part of {len} bytes at offset {pos}"))?;
            pos += 8 + align4(u64::from(len));
            match cflag {
                CFLAG_WHOLE | CFLAG_LAST => return Ok(payload),
                _ => payload.extend_from_slice(&MAGIC.to_le_bytes()),
            }
            first = false;
        }
    }

    /// Fills `buf` from `offset`, or says how far the file falls short.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= self.len => {}
            _ => bail!("truncated: {} bytes needed at offset {offset} but the file has {} bytes", buf.len(), self.len),
        }
        read_exact_at(&self.file, buf, offset).map_err(anyhow::Error::from)
    }
}

/// `pread` until `buf` is full.
#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Positioned reads (`ReadFile` with an offset) until `buf` is full.
#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------------------

/// Writes RecordIO records exactly as dmlc-core's `RecordIOWriter::WriteRecord` (which MXNet uses) does.
#[derive(Debug)]
pub struct RecordWriter<W: Write> {
    out: W,
    pos: u64,
}

impl<W: Write> RecordWriter<W> {
    /// A writer whose first record goes at offset 0 of `out`.
    pub fn new(out: W) -> Self {
        Self { out, pos: 0 }
    }

    /// Offset the next record will start at.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Appends one record and returns the offset of its first part.
    ///
    /// The payload is cut at every 4-aligned occurrence of the magic (those four bytes are not written: the
    /// reader re-inserts them), giving parts with `cflag` 1, 2, ..., 2, 3; without such an occurrence it is one
    /// part with `cflag` 0. The last part is zero-padded to a multiple of 4.
    pub fn write_record(&mut self, payload: &[u8]) -> Result<u64> {
        ensure!(
            payload.len() <= MAX_RECORD_LEN,
            "record of {} bytes exceeds RecordIO's limit of {MAX_RECORD_LEN} bytes",
            payload.len()
        );
        let start = self.pos;
        let magic = MAGIC.to_le_bytes();
        let mut piece_start = 0;
        let mut split = false;
        for at in (0..payload.len() / 4 * 4).step_by(4) {
            if payload[at..at + 4] == magic {
                self.write_part(if split { CFLAG_MIDDLE } else { CFLAG_FIRST }, &payload[piece_start..at])?;
                piece_start = at + 4;
                split = true;
            }
        }
        self.write_part(if split { CFLAG_LAST } else { CFLAG_WHOLE }, &payload[piece_start..])?;
        Ok(start)
    }

    /// Writes one part: magic, lrec, data, padding.
    fn write_part(&mut self, cflag: u32, data: &[u8]) -> Result<()> {
        let lrec = (cflag << 29) | data.len() as u32;
        let pad = align4(data.len() as u64) as usize - data.len();
        self.out.write_all(&MAGIC.to_le_bytes())?;
        self.out.write_all(&lrec.to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.pos += 8 + (data.len() + pad) as u64;
        Ok(())
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes a training set in insightface's layout: `train.rec`, `train.idx` and `property`.
///
/// Images are added in class order (all images of class 0, then class 1, ...; a class may have none) and get
/// keys 1, 2, ...; [`RecordIoWriter::finish`] then appends one range record per class (`[first key, end key)`,
/// empty data) and the header record (key 0, labels `[first range key, end key]`), and writes `property` as
/// `num_classes,H,W`. Without `finish` the files are incomplete (no header): always call it.
#[derive(Debug)]
pub struct RecordIoWriter {
    rec: RecordWriter<BufWriter<File>>,
    idx: BufWriter<File>,
    paths: RecordIoPaths,
    num_classes: usize,
    shape: ImageShape,
    next_key: u64,
    /// `class_starts[c]`: key of the first image of class `c`, for the classes begun so far.
    class_starts: Vec<u64>,
}

/// Where the three files of a RecordIO training set are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordIoPaths {
    /// The records (`train.rec`).
    pub rec: PathBuf,
    /// The index (`train.idx`).
    pub idx: PathBuf,
    /// `num_classes,H,W` (`property`).
    pub property: PathBuf,
}

impl RecordIoPaths {
    /// insightface's names in `dir`: `train.rec`, `train.idx`, `property`.
    pub fn in_dir(dir: &Path) -> Self {
        Self { rec: dir.join("train.rec"), idx: dir.join("train.idx"), property: dir.join("property") }
    }

    /// The files of `path`: a directory holds insightface's names; a `.rec` file has its `.idx` beside it (same
    /// stem) and the `property` file in the same directory.
    pub fn resolve(path: &Path) -> Self {
        if path.is_dir() {
            return Self::in_dir(path);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        Self { rec: path.to_owned(), idx: path.with_extension("idx"), property: dir.join("property") }
    }
}

impl RecordIoWriter {
    /// Creates (or truncates) the files of `paths`, and their folders, for a set of `num_classes` classes of
    /// `shape` images.
    pub fn create(paths: &RecordIoPaths, num_classes: usize, shape: ImageShape) -> Result<Self> {
        ensure!(num_classes > 0, "a training set needs at least one class");
        ensure!((num_classes as u64) < F32_EXACT, "{num_classes} classes: labels are f32, exact below {F32_EXACT}");
        shape.validate().map_err(|e| anyhow::anyhow!("image shape {}x{}: {e}", shape.h, shape.w))?;
        let create = |p: &Path| {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            File::create(p).with_context(|| format!("cannot create {}", p.display()))
        };
        Ok(Self {
            rec: RecordWriter::new(BufWriter::new(create(&paths.rec)?)),
            idx: BufWriter::new(create(&paths.idx)?),
            paths: paths.clone(),
            num_classes,
            shape,
            next_key: 1,
            class_starts: Vec::new(),
        })
    }

    /// Adds an encoded image (JPEG or PNG bytes, stored as given) of class `label`; returns its key.
    ///
    /// Errors: `label >= num_classes`, or a label smaller than the previous image's (images go in class order).
    pub fn add_image(&mut self, label: u32, image: &[u8]) -> Result<u64> {
        self.add(label, &[], image)
    }

    /// As [`RecordIoWriter::add_image`], with more labels stored after the class (`flag = 1 + extra.len()`,
    /// labels `[label, extra...]`), as some insightface sets carry.
    pub fn add_image_with_extra_labels(&mut self, label: u32, extra: &[f32], image: &[u8]) -> Result<u64> {
        self.add(label, extra, image)
    }

    fn add(&mut self, label: u32, extra: &[f32], image: &[u8]) -> Result<u64> {
        let class = label as usize;
        ensure!(class < self.num_classes, "label {label} is outside [0, {})", self.num_classes);
        ensure!(
            class + 1 >= self.class_starts.len(),
            "label {label} after label {}: images must be added in class order",
            self.class_starts.len() - 1
        );
        let key = self.next_key;
        // Labels and the keys of range and header records are stored as f32: exact only up to 2^24.
        ensure!(
            key + (self.num_classes as u64) < F32_EXACT,
            "insightface's layout stores keys as f32, exact below {F32_EXACT}: too many images and classes"
        );
        while self.class_starts.len() <= class {
            self.class_starts.push(key);
        }
        let header = if extra.is_empty() {
            IrHeader::single(label as f32, key, 0)
        } else {
            IrHeader::multi(std::iter::once(label as f32).chain(extra.iter().copied()).collect(), key, 0)
        };
        self.write(key, &header.pack(image))?;
        self.next_key += 1;
        Ok(key)
    }

    /// Writes one record and its index line.
    fn write(&mut self, key: u64, payload: &[u8]) -> Result<()> {
        let offset = self.rec.write_record(payload).with_context(|| format!("writing {}", self.paths.rec.display()))?;
        writeln!(self.idx, "{key}\t{offset}").with_context(|| format!("writing {}", self.paths.idx.display()))?;
        Ok(())
    }

    /// Number of images added so far.
    pub fn num_images(&self) -> u64 {
        self.next_key - 1
    }

    /// Writes the identity range records, the header record and `property`, and flushes everything.
    pub fn finish(mut self) -> Result<RecordIoPaths> {
        let end_key = self.next_key;
        while self.class_starts.len() < self.num_classes {
            self.class_starts.push(end_key);
        }
        let first_range_key = end_key;
        let mut key = first_range_key;
        for class in 0..self.num_classes {
            let start = self.class_starts[class];
            let end = self.class_starts.get(class + 1).copied().unwrap_or(end_key);
            self.write(key, &IrHeader::multi(vec![start as f32, end as f32], 0, 0).pack(&[]))?;
            key += 1;
        }
        self.write(0, &IrHeader::multi(vec![first_range_key as f32, key as f32], 0, 0).pack(&[]))?;
        let paths = self.paths;
        self.rec.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        self.idx.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::write(&paths.property, format!("{},{},{}", self.num_classes, self.shape.h, self.shape.w))
            .with_context(|| format!("cannot write {}", paths.property.display()))?;
        Ok(paths)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reading a training set
// ---------------------------------------------------------------------------------------------------------------

/// Reads insightface's `property` file: `num_classes,H,W` (surrounding whitespace allowed).
pub fn read_property(path: &Path) -> Result<(usize, ImageShape)> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("cannot read the property file {} (insightface's `num_classes,H,W`)", path.display())
    })?;
    let fields: Vec<&str> = text.trim().split(',').map(str::trim).collect();
    let parse = |s: &str| s.parse::<usize>().ok().filter(|&v| v > 0);
    match fields[..] {
        [c, h, w] => match (parse(c), parse(h), parse(w)) {
            (Some(num_classes), Some(h), Some(w)) => Ok((num_classes, ImageShape { h, w })),
            _ => bail!("property file {}: {:?} is not `num_classes,H,W` of positive integers", path.display(), text),
        },
        _ => bail!("property file {}: {:?} is not `num_classes,H,W`", path.display(), text),
    }
}

/// Reads a `.idx` file: `(key, offset)` pairs sorted by key, each offset checked against the `.rec` length.
fn read_index(path: &Path, rec_len: u64, rec_path: &Path) -> Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the index {}", path.display()))?;
    let mut entries = Vec::with_capacity(text.len() / 12);
    for (n, line) in text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        let (key, offset) = match (fields.next(), fields.next(), fields.next()) {
            (None, _, _) => continue,
            (Some(k), Some(o), None) => (k, o),
            _ => bail!("index {} line {}: {line:?} is not `key<TAB>offset`", path.display(), n + 1),
        };
        let (Ok(key), Ok(offset)) = (key.parse::<u64>(), offset.parse::<u64>()) else {
            bail!("index {} line {}: {line:?} is not `key<TAB>offset` of integers", path.display(), n + 1);
        };
        ensure!(
            offset < rec_len,
            "index {} line {}: key {key} has offset {offset}, past the end of {} ({rec_len} bytes)",
            path.display(),
            n + 1,
            rec_path.display()
        );
        entries.push((key, offset));
    }
    entries.sort_unstable();
    if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!("index {}: key {} appears more than once", path.display(), w[0].0);
    }
    Ok(entries)
}

/// How the images of a [`RecordIoDataset`] were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordIoLayout {
    /// insightface's layout: record 0 says images are keys `1..image_end`; when it has a second label, keys
    /// `image_end..range_end` are identity range records.
    Insightface {
        /// One past the last image key.
        image_end: u64,
        /// One past the last identity range record, when the header names it.
        range_end: Option<u64>,
    },
    /// No header record (no key 0, or key 0 with `flag == 0`): every key of the index is an image.
    AllKeys,
}

/// An insightface RecordIO training set: a [`Dataset`] of the images of `train.rec`.
///
/// Sample `i` is the `i`-th image key in ascending order (key `i + 1` in insightface's layout). See the
/// [module documentation](self) for the format and what is checked when.
#[derive(Debug)]
pub struct RecordIoDataset {
    rec: RecordFile,
    paths: RecordIoPaths,
    num_classes: usize,
    shape: ImageShape,
    layout: RecordIoLayout,
    /// Every `(key, offset)` of the index, sorted by key.
    entries: Vec<(u64, u64)>,
    /// The images: `entries[images.start + i]` is sample `i`.
    images: std::ops::Range<usize>,
}

/// One image record, undecoded.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRecord {
    /// The record's key.
    pub key: u64,
    /// The record's header (with every label it carries).
    pub header: IrHeader,
    /// The class, checked against the number of classes.
    pub label: u32,
    /// The encoded image bytes.
    pub image: Vec<u8>,
}

impl RecordIoDataset {
    /// Opens a training set: `path` is a directory with `train.rec`, `train.idx` and `property`, or a `.rec` file
    /// with its `.idx` beside it and `property` in the same directory (see [`RecordIoPaths::resolve`]).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_paths(&RecordIoPaths::resolve(path))
    }

    /// Opens the training set of three explicit files.
    pub fn open_paths(paths: &RecordIoPaths) -> Result<Self> {
        let (num_classes, shape) = read_property(&paths.property)?;
        let rec = RecordFile::open(&paths.rec)?;
        let entries = read_index(&paths.idx, rec.len(), &paths.rec)?;
        ensure!(!entries.is_empty(), "index {} lists no records", paths.idx.display());
        let mut ds = Self {
            rec,
            paths: paths.clone(),
            num_classes,
            shape,
            layout: RecordIoLayout::AllKeys,
            images: 0..entries.len(),
            entries,
        };
        ds.find_images()?;
        Ok(ds)
    }

    /// Reads the header record (key 0) and sets the layout and the image range from it.
    fn find_images(&mut self) -> Result<()> {
        if self.entries[0].0 != 0 {
            return Ok(()); // no key 0: every key is an image
        }
        let payload = self.read_key(0)?;
        let (header, _) = IrHeader::parse(&payload).with_context(|| self.at_key(0))?;
        if header.flag == 0 {
            return Ok(()); // key 0 is an image itself
        }
        let image_end = key_label(header.labels[0], "header record: first label (one past the last image key)")
            .with_context(|| self.at_key(0))?;
        let range_end = match header.labels.get(1) {
            Some(&l) => Some(key_label(l, "header record: second label").with_context(|| self.at_key(0))?),
            None => None,
        };
        ensure!(image_end >= 1, "{}: header record says images end before key 1", self.at_key(0));
        let first = self.entries.partition_point(|&(k, _)| k < 1);
        let count = usize::try_from(image_end - 1).unwrap_or(usize::MAX);
        // Keys are sorted and unique: all of 1..image_end are present iff there are `count` entries from key 1's
        // position on and the last of them is key `image_end - 1`.
        let all_present = count == 0
            || (count <= self.entries.len() - first
                && self.entries[first].0 == 1
                && self.entries[first + count - 1].0 == image_end - 1);
        if !all_present {
            // At most `entries.len() + 1` keys are tried before one is missing.
            let missing = (1..image_end).find(|k| self.entries.binary_search_by_key(k, |&(key, _)| key).is_err());
            bail!(
                "{}: the header record says images are keys 1..={}, but key {} is not in {}",
                self.at_key(0),
                image_end - 1,
                missing.unwrap_or(1),
                self.paths.idx.display()
            );
        }
        self.images = first..first + count;
        self.layout = RecordIoLayout::Insightface { image_end, range_end };
        Ok(())
    }

    /// The three files.
    pub fn paths(&self) -> &RecordIoPaths {
        &self.paths
    }

    /// How the images were found (insightface header or all keys).
    pub fn layout(&self) -> RecordIoLayout {
        self.layout
    }

    /// The key of sample `index` (`None` past the end).
    pub fn key(&self, index: usize) -> Option<u64> {
        (index < self.images.len()).then(|| self.entries[self.images.start + index].0)
    }

    /// Every key of the index, ascending (images, identity ranges and the header).
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|&(k, _)| k)
    }

    /// "key K of FILE": how errors name a record.
    fn at_key(&self, key: u64) -> String {
        format!("record key {key} of {}", self.paths.rec.display())
    }

    /// The payload of any key of the index, split parts joined.
    pub fn read_key(&self, key: u64) -> Result<Vec<u8>> {
        let i = self
            .entries
            .binary_search_by_key(&key, |&(k, _)| k)
            .map_err(|_| anyhow::anyhow!("key {key} is not in {}", self.paths.idx.display()))?;
        self.rec.read_record(self.entries[i].1).with_context(|| self.at_key(key))
    }

    /// Sample `index` undecoded: key, header, checked label and image bytes.
    pub fn read_image_record(&self, index: usize) -> Result<ImageRecord> {
        let Some(key) = self.key(index) else {
            bail!("sample {index} is past the {} images of {}", self.images.len(), self.paths.rec.display());
        };
        let payload =
            self.rec.read_record(self.entries[self.images.start + index].1).with_context(|| self.at_key(key))?;
        let (header, image) = IrHeader::parse(&payload).with_context(|| self.at_key(key))?;
        let label = class_label(header.primary_label(), self.num_classes)
            .with_context(|| format!("{} (property file says {} classes)", self.at_key(key), self.num_classes))?;
        let image = image.to_vec();
        Ok(ImageRecord { key, header, label, image })
    }

    /// The identity ranges `[start, end)` of image keys, one per class, from the range records the header names
    /// (`None` when the file has no such records).
    pub fn identity_ranges(&self) -> Result<Option<Vec<(u64, u64)>>> {
        let RecordIoLayout::Insightface { image_end, range_end: Some(range_end) } = self.layout else {
            return Ok(None);
        };
        let mut ranges = Vec::new();
        for key in image_end..range_end {
            let payload = self.read_key(key)?;
            let (header, _) = IrHeader::parse(&payload).with_context(|| self.at_key(key))?;
            ensure!(header.labels.len() >= 2, "{}: an identity range record needs 2 labels", self.at_key(key));
            let start = key_label(header.labels[0], "range start").with_context(|| self.at_key(key))?;
            let end = key_label(header.labels[1], "range end").with_context(|| self.at_key(key))?;
            ranges.push((start, end));
        }
        Ok(Some(ranges))
    }
}

impl Dataset for RecordIoDataset {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn image_shape(&self) -> ImageShape {
        self.shape
    }

    fn load(&self, index: usize) -> Result<Sample> {
        let record = self.read_image_record(index)?;
        let rgb = decode_rgb(&record.image, self.shape).with_context(|| self.at_key(record.key))?;
        Ok(Sample { rgb, label: record.label })
    }

    fn describe(&self, index: usize) -> String {
        match self.key(index) {
            Some(key) => self.at_key(key),
            None => format!("sample {index} (past the end) of {}", self.paths.rec.display()),
        }
    }
}
