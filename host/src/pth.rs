//! PyTorch checkpoints (`torch.save(model.state_dict(), "x.pth")`) read without Python, so that published
//! insightface and ElasticFace weights can be evaluated, exported or fine-tuned.
//!
//! The format (PyTorch 1.6 and later): a zip archive of stored entries under one folder `<name>/`:
//! - `<name>/data.pkl`: a pickle (protocol 2) of the state dict, a `dict` or `collections.OrderedDict` from
//!   names to tensors. Each tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//!   requires_grad, backward_hooks[, metadata])` and each storage a persistent id
//!   `("storage", torch.<Type>Storage, key, location, numel)`;
//! - `<name>/data/<key>`: the raw little-endian elements of storage `key`;
//! - `<name>/byteorder` (`little`; absent in older files, which are little-endian), `<name>/version`, ...
//!
//! The pickle is read by [`crate::pickle`], which runs no code: only the calls above are recognised (and
//! `torch._utils._rebuild_parameter` around them), anything else is an error. Float storages (`Float`, `Half`,
//! `BFloat16`, `Double`) become f32 tensors, integer storages (`Long`, `Int`) i64 ones; views with offsets and
//! strides are gathered. Keys prefixed `module.` (a `DataParallel` model) are stripped, and a dict that holds the
//! state dict under `state_dict` is unwrapped. The legacy (pre-1.6) format is refused with a hint.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::pickle::{Id, Object, Pickle};
use crate::tensorfile::TensorFile;

/// Reads the state dict of the PyTorch checkpoint at `path` into named tensors (no manifest).
pub fn read(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    from_bytes(&path.display().to_string(), &bytes)
}

/// Whether `bytes` start like a zip archive (the PyTorch format) rather than anything else.
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// [`read`] on a checkpoint held in memory; `name` is used in messages.
pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<TensorFile> {
    if !is_zip(bytes) {
        if bytes.first() == Some(&0x80) {
            bail!(
                "{name}: a legacy (PyTorch < 1.6) checkpoint, which is not read; load it in PyTorch and save it \
                 again with torch.save(state_dict, path)"
            );
        }
        bail!("{name}: not a PyTorch checkpoint (a .pth file written by torch.save is a zip archive)");
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).with_context(|| format!("{name}: corrupt zip archive"))?;
    let names = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<Vec<String>, _>>()
        .with_context(|| format!("{name}: corrupt zip directory"))?;
    let pkl: Vec<String> = names.into_iter().filter(|n| n.ends_with("/data.pkl") || n == "data.pkl").collect();
    let entry = match pkl.as_slice() {
        [one] => one.clone(),
        [] => bail!("{name}: no data.pkl in the archive: not a torch.save file"),
        _ => bail!("{name}: {} data.pkl entries in the archive", pkl.len()),
    };
    let prefix = entry.strip_suffix("data.pkl").expect("ends with data.pkl").to_string();
    let mut read_entry = |entry: &str| -> Result<Vec<u8>> {
        let mut f = zip.by_name(entry).with_context(|| format!("{name}: no entry {entry}"))?;
        let mut out = Vec::with_capacity(usize::try_from(f.size()).unwrap_or(0).min(1 << 30));
        f.read_to_end(&mut out).with_context(|| format!("{name}: cannot read entry {entry}"))?;
        Ok(out)
    };
    if let Ok(order) = read_entry(&format!("{prefix}byteorder")) {
        ensure!(
            order.trim_ascii() == b"little",
            "{name}: storages are {}-endian; only little-endian checkpoints are read",
            String::from_utf8_lossy(&order)
        );
    }
    let pickle_bytes = read_entry(&entry)?;
    let pickle = Pickle::parse(&pickle_bytes).with_context(|| format!("{name}: {entry}"))?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = TensorFile::new(name, serde_json::Value::Null);
    let dict = state_dict(&pickle).with_context(|| format!("{name}: {entry}"))?;
    for &(k, v) in dict {
        let key = pickle.str(k, &"a state dict key").with_context(|| format!("{name}: {entry}"))?;
        let key = key.strip_prefix("module.").unwrap_or(key);
        // `module.fc.weight` beside `fc.weight` would silently keep one of the two.
        ensure!(!out.contains(key), "{name}: tensor `{key}` appears twice (with and without `module.`)");
        let t = tensor(&pickle, v).with_context(|| format!("{name}: tensor `{key}`"))?;
        if !storages.contains_key(&t.storage.key) {
            let raw = read_entry(&format!("{prefix}data/{}", t.storage.key))
                .with_context(|| format!("{name}: tensor `{key}`: storage {}", t.storage.key))?;
            storages.insert(t.storage.key.clone(), raw);
        }
        let raw = &storages[&t.storage.key];
        t.insert_into(&mut out, key, raw).with_context(|| format!("{name}: tensor `{key}`"))?;
    }
    ensure!(!dict.is_empty(), "{name}: the state dict is empty");
    Ok(out)
}

/// The root dict of tensors; a dict holding it under `state_dict` (a training checkpoint), or the backbone's under
/// `state_dict_backbone` (arcface_torch's `checkpoint_gpu_*.pt`), is unwrapped.
fn state_dict<'p>(p: &'p Pickle<'_>) -> Result<&'p [(Id, Id)]> {
    let root = p.dict(p.root, &"the pickled object").context("a state dict is a dict of tensors")?;
    for wrapper in ["state_dict", "state_dict_backbone"] {
        for &(k, v) in root {
            if matches!(p.get(k), Object::Str(_)) && p.str(k, &"key")? == wrapper {
                return p.dict(v, &format!("`{wrapper}`"));
            }
        }
    }
    Ok(root)
}

/// Element types of PyTorch storages this reader converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
}

impl Dtype {
    fn from_storage(name: &str) -> Result<Self> {
        Ok(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            other => bail!("storage type torch.{other} is not read (float and integer storages are)"),
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64 | Self::F16 | Self::BF16)
    }
}

/// A storage reference: `("storage", torch.<Type>Storage, key, location, numel)`.
#[derive(Debug)]
struct Storage {
    dtype: Dtype,
    key: String,
    numel: usize,
}

/// A tensor as the pickle describes it: a strided view of a storage.
#[derive(Debug)]
struct TensorRef {
    storage: Storage,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Reads the call that rebuilds a tensor.
fn tensor(p: &Pickle<'_>, id: Id) -> Result<TensorRef> {
    let Object::Call { func, args } = *p.get(id) else {
        bail!("is a {}, not a tensor", p.get(id).kind());
    };
    let args = p.tuple(args, &"the arguments")?;
    match p.global(func, &"the constructor")? {
        ("torch._utils", "_rebuild_parameter") => {
            // A Parameter: (tensor, requires_grad, backward_hooks). It wraps a tensor, never another Parameter: one
            // that does is refused rather than followed (a file nesting them deeply would exhaust the stack).
            ensure!(!args.is_empty(), "_rebuild_parameter without arguments");
            if let Object::Call { func, .. } = *p.get(args[0]) {
                ensure!(
                    p.global(func, &"the constructor")? != ("torch._utils", "_rebuild_parameter"),
                    "a Parameter wrapping a Parameter"
                );
            }
            tensor(p, args[0])
        }
        ("torch._utils", "_rebuild_tensor_v2") => {
            ensure!((6..=7).contains(&args.len()), "_rebuild_tensor_v2 with {} arguments, not 6 or 7", args.len());
            let Object::PersistentId(pid) = *p.get(args[0]) else {
                bail!("the storage is a {}, not a persistent id", p.get(args[0]).kind());
            };
            let storage = storage(p, pid)?;
            let ints = |id: Id, what: &str| -> Result<Vec<usize>> {
                p.tuple(id, &what)?
                    .iter()
                    .map(|&i| usize::try_from(p.int(i, &what)?).map_err(|_| anyhow!("{what}: negative entry")))
                    .collect()
            };
            let offset = usize::try_from(p.int(args[1], &"the storage offset")?)
                .map_err(|_| anyhow!("negative storage offset"))?;
            let (size, stride) = (ints(args[2], "the size")?, ints(args[3], "the stride")?);
            ensure!(size.len() == stride.len(), "size {size:?} and stride {stride:?} differ in rank");
            Ok(TensorRef { storage, offset, size, stride })
        }
        (module, name) => bail!("is built by {module}.{name}, which this reader does not run"),
    }
}

/// Reads a storage persistent id.
fn storage(p: &Pickle<'_>, pid: Id) -> Result<Storage> {
    let t = p.tuple(pid, &"the persistent id")?;
    ensure!(t.len() == 5, "the persistent id has {} items, not 5", t.len());
    ensure!(p.str(t[0], &"the persistent id tag")? == "storage", "the persistent id is not a storage");
    let (module, name) = p.global(t[1], &"the storage type")?;
    ensure!(module == "torch", "storage type {module}.{name} is not a torch storage");
    let dtype = Dtype::from_storage(name)?;
    let key = p.str(t[2], &"the storage key")?.to_string();
    ensure!(!key.is_empty() && !key.contains(['/', '\\']) && key != "..", "storage key `{key}` is not a file name");
    let numel = usize::try_from(p.int(t[4], &"the storage size")?).map_err(|_| anyhow!("negative storage size"))?;
    Ok(Storage { dtype, key, numel })
}

impl TensorRef {
    /// Gathers the view from the storage's raw bytes and adds it to `out` as `key`.
    fn insert_into(&self, out: &mut TensorFile, key: &str, raw: &[u8]) -> Result<()> {
        let s = &self.storage;
        let bytes = s.numel.checked_mul(s.dtype.size()).ok_or_else(|| anyhow!("storage size overflows"))?;
        ensure!(
            raw.len() == bytes,
            "storage {} holds {} bytes, {} {:?} elements need {bytes}",
            s.key,
            raw.len(),
            s.numel,
            s.dtype
        );
        let count =
            self.size.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| anyhow!("size overflows"))?;
        // A state dict's tensors hold their own elements; a view repeating them (stride 0) could claim terabytes of
        // a one-element storage.
        ensure!(
            count <= s.numel,
            "the view (size {:?}, stride {:?}) has {count} elements, more than its storage's {}",
            self.size,
            self.stride,
            s.numel
        );
        if count > 0 {
            // The last element the view touches must lie inside the storage.
            let last = self
                .size
                .iter()
                .zip(&self.stride)
                .try_fold(self.offset, |a, (&d, &st)| (d - 1).checked_mul(st).and_then(|x| a.checked_add(x)));
            ensure!(
                last.is_some_and(|l| l < s.numel),
                "the view (offset {}, size {:?}, stride {:?}) reaches past the storage's {} elements",
                self.offset,
                self.size,
                self.stride,
                s.numel
            );
        }
        let indices = strided_indices(self.offset, &self.size, &self.stride, count);
        let at = |i: usize| &raw[i * s.dtype.size()..(i + 1) * s.dtype.size()];
        if s.dtype.is_float() {
            let data = indices.map(|i| float_at(s.dtype, at(i))).collect();
            out.insert_f32(key, &self.size, data)
        } else {
            let data = indices.map(|i| int_at(s.dtype, at(i))).collect();
            out.insert_i64(key, &self.size, data)
        }
    }
}

/// Storage indices of a strided view, in row-major order of the view.
fn strided_indices(offset: usize, size: &[usize], stride: &[usize], count: usize) -> impl Iterator<Item = usize> {
    let (size, stride) = (size.to_vec(), stride.to_vec());
    let mut index = vec![0usize; size.len()];
    (0..count).map(move |n| {
        if n > 0 {
            // Advance the multi-index like an odometer, last dimension fastest.
            for d in (0..size.len()).rev() {
                index[d] += 1;
                if index[d] < size[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        offset + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>()
    })
}

/// One float element as f32 (f64 rounds to nearest; f16 and bf16 are exact).
fn float_at(dtype: Dtype, b: &[u8]) -> f32 {
    match dtype {
        Dtype::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
        Dtype::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        Dtype::F16 => f16_to_f32(u16::from_le_bytes(b.try_into().expect("2 bytes"))),
        Dtype::BF16 => f32::from_bits(u32::from(u16::from_le_bytes(b.try_into().expect("2 bytes"))) << 16),
        Dtype::I64 | Dtype::I32 => unreachable!("integer storage"),
    }
}

/// One integer element as i64.
fn int_at(dtype: Dtype, b: &[u8]) -> i64 {
    match dtype {
        Dtype::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")),
        Dtype::I32 => i32::from_le_bytes(b.try_into().expect("4 bytes")).into(),
        _ => unreachable!("float storage"),
    }
}

/// IEEE half precision to single precision, exactly (subnormals, infinities and NaN included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal: frac * 2^-24, exact in f32.
        (0, f) => {
            let magnitude = f as f32 * f32::powi(2.0, -24);
            return if sign != 0 { -magnitude } else { magnitude };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A pickle protocol-2 writer for the test files: just the opcodes `torch.save` emits for a state dict.
    struct PickleWriter {
        out: Vec<u8>,
        memo: u32,
    }

    impl PickleWriter {
        fn new() -> Self {
            Self { out: vec![0x80, 2], memo: 0 }
        }
        fn put(&mut self) {
            if self.memo < 256 {
                self.out.extend([b'q', self.memo as u8]);
            } else {
                self.out.push(b'r');
                self.out.extend(self.memo.to_le_bytes());
            }
            self.memo += 1;
        }
        fn str(&mut self, s: &str) {
            self.out.push(b'X');
            self.out.extend((s.len() as u32).to_le_bytes());
            self.out.extend(s.as_bytes());
            self.put();
        }
        fn int(&mut self, v: usize) {
            if v < 256 {
                self.out.extend([b'K', v as u8]);
            } else {
                self.out.push(b'J');
                self.out.extend((v as i32).to_le_bytes());
            }
        }
        fn ints(&mut self, v: &[usize]) {
            match v.len() {
                0 => self.out.push(b')'),
                n @ 1..=3 => {
                    v.iter().for_each(|&x| self.int(x));
                    self.out.push(0x84 + n as u8);
                }
                _ => {
                    self.out.push(b'(');
                    v.iter().for_each(|&x| self.int(x));
                    self.out.push(b't');
                }
            }
            self.put();
        }
        fn global(&mut self, module: &str, name: &str) {
            self.out.push(b'c');
            self.out.extend(format!("{module}\n{name}\n").as_bytes());
            self.put();
        }
        /// `_rebuild_tensor_v2(storage(key), offset, size, stride, False, OrderedDict())`.
        fn tensor(&mut self, storage: &str, key: &str, numel: usize, offset: usize, size: &[usize], stride: &[usize]) {
            self.global("torch._utils", "_rebuild_tensor_v2");
            self.out.extend(b"((");
            self.str("storage");
            self.global("torch", storage);
            self.str(key);
            self.str("cpu");
            self.int(numel);
            self.out.push(b't');
            self.put();
            self.out.push(b'Q');
            self.int(offset);
            self.ints(size);
            self.ints(stride);
            self.out.push(0x89);
            self.global("collections", "OrderedDict");
            self.out.extend(b")R");
            self.put();
            self.out.push(b't');
            self.put();
            self.out.push(b'R');
            self.put();
        }
    }

    /// A torch.save-style zip: `archive/data.pkl`, `archive/byteorder` and `archive/data/<key>` entries, stored.
    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            w.start_file(format!("archive/{name}"), opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn a_hand_built_checkpoint_with_views_and_dtypes() {
        // OrderedDict {
        //   "module.a": f32 (2, 3) transposed view of a (3, 2) storage at offset 1 (7 elements),
        //   "b": f16 (2,) [1.5, -0.25], "c": i64 scalar 42, "d": f64 (1,) [0.1] }, with `_metadata`
        let mut p = PickleWriter::new();
        p.global("collections", "OrderedDict");
        p.out.extend(b")R");
        p.put();
        p.out.push(b'(');
        p.str("module.a");
        p.tensor("FloatStorage", "0", 7, 1, &[2, 3], &[1, 2]);
        p.str("b");
        p.tensor("HalfStorage", "1", 2, 0, &[2], &[1]);
        p.str("c");
        p.tensor("LongStorage", "2", 1, 0, &[], &[]);
        p.str("d");
        p.tensor("DoubleStorage", "3", 1, 0, &[1], &[1]);
        p.out.push(b'u');
        // state_dict() carries `_metadata` (an OrderedDict of per-module versions), set by BUILD.
        p.out.push(b'}');
        p.put();
        p.str("_metadata");
        p.global("collections", "OrderedDict");
        p.out.extend(b")R");
        p.put();
        p.str("");
        p.out.push(b'}');
        p.put();
        p.str("version");
        p.int(1);
        p.out.extend(b"sssb.");
        let a: Vec<u8> = (0..7).flat_map(|i| (i as f32 * 10.0).to_le_bytes()).collect();
        let b: Vec<u8> = [0x3e00u16, 0xb400].iter().flat_map(|h| h.to_le_bytes()).collect();
        let zip = zip_of(&[
            ("data.pkl", &p.out),
            ("byteorder", b"little"),
            ("data/0", &a),
            ("data/1", &b),
            ("data/2", &42i64.to_le_bytes()),
            ("data/3", &0.1f64.to_le_bytes()),
        ]);
        let f = from_bytes("test.pth", &zip).unwrap();
        assert_eq!(f.keys(), ["a", "b", "c", "d"]);
        assert_eq!(f.get("a").unwrap().shape, [2, 3]);
        // a[i][j] = storage[1 + i + 2 j] = 10 (1 + i + 2 j)
        assert_eq!(f.f32("a").unwrap(), &[10.0, 30.0, 50.0, 20.0, 40.0, 60.0]);
        assert_eq!(f.f32("b").unwrap(), &[1.5, -0.25]);
        assert_eq!(f.i64("c").unwrap(), &[42]);
        assert_eq!(f.get("c").unwrap().shape, Vec::<usize>::new());
        assert_eq!(f.f32("d").unwrap(), &[0.1f64 as f32]);
    }

    #[test]
    fn bad_checkpoints_are_errors() {
        let err = |bytes: &[u8]| format!("{:#}", from_bytes("x.pth", bytes).unwrap_err());
        assert!(err(b"\x80\x02}q\x00.").contains("legacy"));
        assert!(err(b"hello").contains("not a PyTorch checkpoint"));
        assert!(err(&zip_of(&[("other", b"")])).contains("no data.pkl"));

        // A storage shorter than its numel, and a view that runs past its storage.
        let mut p = PickleWriter::new();
        p.out.extend(b"}q\x00(");
        p.memo = 1;
        p.str("w");
        p.tensor("FloatStorage", "0", 4, 0, &[4], &[1]);
        p.out.extend(b"u.");
        let short = zip_of(&[("data.pkl", &p.out), ("data/0", &[0u8; 12])]);
        assert!(err(&short).contains("holds 12 bytes"), "{}", err(&short));
        let missing = zip_of(&[("data.pkl", &p.out)]);
        assert!(err(&missing).contains("storage 0"), "{}", err(&missing));
        let mut q = PickleWriter::new();
        q.out.extend(b"}q\x00(");
        q.memo = 1;
        q.str("w");
        q.tensor("FloatStorage", "0", 4, 2, &[3], &[1]);
        q.out.extend(b"u.");
        let past = zip_of(&[("data.pkl", &q.out), ("data/0", &[0u8; 16])]);
        assert!(err(&past).contains("reaches past"), "{}", err(&past));
        // An unknown constructor is named, never run.
        let evil = b"\x80\x02}q\x00(X\x01\x00\x00\x00wcos\nsystem\nX\x02\x00\x00\x00ls\x85Ru.";
        let e = err(&zip_of(&[("data.pkl", evil)]));
        assert!(e.contains("os.system"), "{e}");
        // Big-endian storages are refused.
        assert!(err(&zip_of(&[("data.pkl", &p.out), ("byteorder", b"big")])).contains("big-endian"));

        // A view repeating one element (stride 0) 2^40 times is refused before anything is allocated.
        let mut z = PickleWriter::new();
        z.out.extend(b"}q\x00(");
        z.memo = 1;
        z.str("w");
        z.tensor("FloatStorage", "0", 1, 0, &[1 << 20, 1 << 20], &[0, 0]);
        z.out.extend(b"u.");
        let e = err(&zip_of(&[("data.pkl", &z.out), ("data/0", &[0u8; 4])]));
        assert!(e.contains("has 1099511627776 elements, more than its storage's 1"), "{e}");
        // `module.w` beside `w`: one would silently replace the other.
        let mut d = PickleWriter::new();
        d.out.extend(b"}q\x00(");
        d.memo = 1;
        d.str("w");
        d.tensor("FloatStorage", "0", 1, 0, &[1], &[1]);
        d.str("module.w");
        d.tensor("FloatStorage", "0", 1, 0, &[1], &[1]);
        d.out.extend(b"u.");
        let e = err(&zip_of(&[("data.pkl", &d.out), ("data/0", &[0u8; 4])]));
        assert!(e.contains("tensor `w` appears twice"), "{e}");
        // A Parameter wrapping a Parameter (a file nesting them deeply would exhaust the stack) is refused.
        let mut n = PickleWriter::new();
        n.out.extend(b"}q\x00(");
        n.memo = 1;
        n.str("w");
        for _ in 0..2 {
            n.global("torch._utils", "_rebuild_parameter");
        }
        n.tensor("FloatStorage", "0", 1, 0, &[1], &[1]);
        for _ in 0..2 {
            n.out.push(0x89); // requires_grad False, then the argument tuple (tensor, False) and the call
            n.out.extend(b"\x86R");
            n.put();
        }
        n.out.extend(b"u.");
        let e = err(&zip_of(&[("data.pkl", &n.out), ("data/0", &[0u8; 4])]));
        assert!(e.contains("a Parameter wrapping a Parameter"), "{e}");
    }

    #[test]
    fn arcface_torch_checkpoints_are_unwrapped() {
        // {"epoch": 3, "state_dict_backbone": {"w": tensor}}, as arcface_torch's checkpoint_gpu_0.pt holds it.
        let mut p = PickleWriter::new();
        p.out.extend(b"}q\x00(");
        p.memo = 1;
        p.str("epoch");
        p.int(3);
        p.str("state_dict_backbone");
        p.out.push(b'}');
        p.put();
        p.out.push(b'(');
        p.str("module.w");
        p.tensor("FloatStorage", "0", 1, 0, &[1], &[1]);
        p.out.extend(b"uu.");
        let f = from_bytes("checkpoint_gpu_0.pt", &zip_of(&[("data.pkl", &p.out), ("data/0", &2.5f32.to_le_bytes())]))
            .unwrap();
        assert_eq!((f.keys(), f.f32("w").unwrap()), (vec!["w"], &[2.5f32][..]));
    }

    #[test]
    fn half_precision_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }
}
