//! A strict reader for the subset of Python's pickle format that insightface verification packs (`.bin`) and
//! PyTorch checkpoints (`.pth`, `data.pkl`) are written in.
//!
//! This is not an unpickler: nothing is ever imported, constructed or called. The stream is run on a small
//! stack machine that knows only the opcodes those files use and builds a tree of plain [`Object`]s:
//!
//! | opcodes | result |
//! |---|---|
//! | `PROTO`, `FRAME`, `STOP` | framing (protocols 2 to 4) |
//! | `NONE`, `NEWTRUE`, `NEWFALSE`, `BININT`, `BININT1`, `BININT2`, `LONG1`, `BINFLOAT` | [`Object::None`], [`Object::Bool`], [`Object::Int`], [`Object::Float`] |
//! | `SHORT_BINSTRING`, `BINSTRING` (Python 2 `str`), `SHORT_BINBYTES`, `BINBYTES`, `BINBYTES8` | [`Object::Bytes`] |
//! | `SHORT_BINUNICODE`, `BINUNICODE`, `BINUNICODE8` | [`Object::Str`] (checked UTF-8) |
//! | `MARK`, `EMPTY_TUPLE`, `TUPLE`, `TUPLE1..3`, `EMPTY_LIST`, `APPEND(S)`, `EMPTY_DICT`, `SETITEM(S)` | containers |
//! | `BINPUT`, `LONG_BINPUT`, `MEMOIZE`, `BINGET`, `LONG_BINGET` | the memo (shared references, as in Python) |
//! | `GLOBAL`, `STACK_GLOBAL` | [`Object::Global`]: a name only, never imported |
//! | `REDUCE` | [`Object::Call`]: a record of the call, never made (except `collections.OrderedDict()`, read as a dict) |
//! | `BUILD` | the state is recorded beside the object ([`Pickle::state`]) |
//! | `BINPERSID` | [`Object::PersistentId`] (PyTorch's storage references) |
//!
//! Anything else (`INST`, `OBJ`, `NEWOBJ`, text-protocol opcodes, extensions, ...) is an error naming the opcode
//! and its byte offset, as is a stream that ends early, a length that runs past the end, a `MARK` that is never
//! closed, or a memo key that was never stored. Byte strings are not copied: [`Object::Bytes`] holds a range of
//! the input, so a 100 MB verification pack is parsed in place.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use anyhow::{anyhow, bail, ensure, Result};

/// Index of an object in a [`Pickle`].
pub type Id = usize;

/// One object of the pickled tree.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// A float.
    Float(f64),
    /// A byte string (Python 2 `str` or Python 3 `bytes`): its range in the input.
    Bytes(Range<usize>),
    /// A text string, checked to be UTF-8: its range in the input.
    Str(Range<usize>),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict (or `collections.OrderedDict`), in insertion order.
    Dict(Vec<(Id, Id)>),
    /// A reference to `module.name`, never imported.
    Global {
        /// The module, e.g. `torch._utils`.
        module: String,
        /// The name in it, e.g. `_rebuild_tensor_v2`.
        name: String,
    },
    /// A persistent id (`BINPERSID`): the object it names is the caller's to resolve.
    PersistentId(Id),
    /// `func(*args)` as recorded by `REDUCE`, not executed.
    Call {
        /// The callable (usually an [`Object::Global`]).
        func: Id,
        /// The argument tuple.
        args: Id,
    },
}

impl Object {
    /// The kind of object, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::None => "None",
            Object::Bool(_) => "bool",
            Object::Int(_) => "int",
            Object::Float(_) => "float",
            Object::Bytes(_) => "bytes",
            Object::Str(_) => "str",
            Object::Tuple(_) => "tuple",
            Object::List(_) => "list",
            Object::Dict(_) => "dict",
            Object::Global { .. } => "global",
            Object::PersistentId(_) => "persistent id",
            Object::Call { .. } => "call",
        }
    }
}

/// A parsed pickle: the objects, the root (what `pickle.loads` would return) and the input they point into.
pub struct Pickle<'a> {
    data: &'a [u8],
    objects: Vec<Object>,
    states: HashMap<Id, Id>,
    /// The object the stream returns.
    pub root: Id,
}

impl fmt::Debug for Pickle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pickle").field("objects", &self.objects.len()).field("root", &self.root).finish()
    }
}

/// The opcodes this reader knows, by byte.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES: u8 = b'B';
    pub const BINBYTES8: u8 = 0x8e;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const EMPTY_LIST: u8 = b']';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
}

/// Reads the input front to back, with the offset for messages.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The next `n` bytes as a range of the input; `what` names the opcode for the error of a truncated stream.
    fn take(&mut self, n: usize, what: &str) -> Result<Range<usize>> {
        let remain = self.data.len() - self.pos;
        ensure!(
            n <= remain,
            "truncated: {what} at byte {} needs {n} more bytes, the input has {remain}",
            self.pos.saturating_sub(1)
        );
        let r = self.pos..self.pos + n;
        self.pos += n;
        Ok(r)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let r = self.take(N, what)?;
        Ok(self.data[r].try_into().expect("N bytes"))
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.bytes::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A length stored as u64, checked to fit the input before any allocation.
    fn len64(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        usize::try_from(n).map_err(|_| anyhow!("{what} at byte {}: length {n} is too large", self.pos - 9))
    }

    /// A newline-terminated ASCII line (the arguments of `GLOBAL`).
    fn line(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let end = self.data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("truncated: {what} at byte {} has no end of line", start.saturating_sub(1)))?;
        self.pos = start + end + 1;
        let text = std::str::from_utf8(&self.data[start..start + end])
            .map_err(|_| anyhow!("{what} at byte {start}: the name is not ASCII"))?;
        Ok(text.to_string())
    }
}

/// The machine's state while it runs.
struct Machine<'a> {
    reader: Reader<'a>,
    objects: Vec<Object>,
    stack: Vec<Id>,
    /// Stack heights at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    states: HashMap<Id, Id>,
}

impl<'a> Pickle<'a> {
    /// Runs the pickle stream `data` and returns its object tree. `data` must hold exactly one pickle: bytes
    /// after `STOP` are an error (a verification pack or `data.pkl` holds nothing else).
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let mut m = Machine {
            reader: Reader { data, pos: 0 },
            objects: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            states: HashMap::new(),
        };
        let root = m.run()?;
        let rest = data.len() - m.reader.pos;
        ensure!(rest == 0, "{rest} bytes follow the pickle's STOP at byte {}", m.reader.pos - 1);
        Ok(Self { data, objects: m.objects, states: m.states, root })
    }

    /// The object `id`.
    pub fn get(&self, id: Id) -> &Object {
        &self.objects[id]
    }

    /// The state a `BUILD` gave object `id`, if any (e.g. an `OrderedDict`'s `_metadata`).
    pub fn state(&self, id: Id) -> Option<Id> {
        self.states.get(&id).copied()
    }

    /// The bytes of a [`Object::Bytes`]; `what` names it in the error.
    pub fn bytes(&self, id: Id, what: &dyn fmt::Display) -> Result<&'a [u8]> {
        match self.get(id) {
            Object::Bytes(r) => Ok(&self.data[r.clone()]),
            other => bail!("{what} is a {}, expected bytes", other.kind()),
        }
    }

    /// The text of a [`Object::Str`].
    pub fn str(&self, id: Id, what: &dyn fmt::Display) -> Result<&'a str> {
        match self.get(id) {
            Object::Str(r) => Ok(std::str::from_utf8(&self.data[r.clone()]).expect("checked when parsed")),
            other => bail!("{what} is a {}, expected str", other.kind()),
        }
    }

    /// The value of an [`Object::Int`].
    pub fn int(&self, id: Id, what: &dyn fmt::Display) -> Result<i64> {
        match self.get(id) {
            Object::Int(v) => Ok(*v),
            other => bail!("{what} is a {}, expected int", other.kind()),
        }
    }

    /// The value of an [`Object::Bool`].
    pub fn bool(&self, id: Id, what: &dyn fmt::Display) -> Result<bool> {
        match self.get(id) {
            Object::Bool(v) => Ok(*v),
            other => bail!("{what} is a {}, expected bool", other.kind()),
        }
    }

    /// The items of an [`Object::Tuple`].
    pub fn tuple(&self, id: Id, what: &dyn fmt::Display) -> Result<&[Id]> {
        match self.get(id) {
            Object::Tuple(v) => Ok(v),
            other => bail!("{what} is a {}, expected a tuple", other.kind()),
        }
    }

    /// The items of an [`Object::List`].
    pub fn list(&self, id: Id, what: &dyn fmt::Display) -> Result<&[Id]> {
        match self.get(id) {
            Object::List(v) => Ok(v),
            other => bail!("{what} is a {}, expected a list", other.kind()),
        }
    }

    /// The items of an [`Object::Dict`].
    pub fn dict(&self, id: Id, what: &dyn fmt::Display) -> Result<&[(Id, Id)]> {
        match self.get(id) {
            Object::Dict(v) => Ok(v),
            other => bail!("{what} is a {}, expected a dict", other.kind()),
        }
    }

    /// `module.name` of an [`Object::Global`].
    pub fn global(&self, id: Id, what: &dyn fmt::Display) -> Result<(&str, &str)> {
        match self.get(id) {
            Object::Global { module, name } => Ok((module, name)),
            other => bail!("{what} is a {}, expected a global name", other.kind()),
        }
    }
}

impl Machine<'_> {
    fn push(&mut self, o: Object) {
        self.objects.push(o);
        self.stack.push(self.objects.len() - 1);
    }

    fn pop(&mut self, at: usize, what: &str) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        ensure!(self.stack.len() > floor, "{what} at byte {at}: the stack is empty");
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self, at: usize, what: &str) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        ensure!(self.stack.len() > floor, "{what} at byte {at}: the stack is empty");
        Ok(*self.stack.last().expect("checked"))
    }

    /// Everything above the innermost mark, which is closed.
    fn pop_mark(&mut self, at: usize, what: &str) -> Result<Vec<Id>> {
        let mark = self.marks.pop().ok_or_else(|| anyhow!("{what} at byte {at} without a MARK"))?;
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u64, at: usize) -> Result<()> {
        let top = self.top(at, "BINPUT")?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64, at: usize) -> Result<()> {
        let id = *self.memo.get(&key).ok_or_else(|| anyhow!("BINGET at byte {at}: memo key {key} was never stored"))?;
        self.stack.push(id);
        Ok(())
    }

    fn text(&mut self, range: Range<usize>, at: usize) -> Result<()> {
        std::str::from_utf8(&self.reader.data[range.clone()])
            .map_err(|_| anyhow!("string at byte {at} is not valid UTF-8"))?;
        self.push(Object::Str(range));
        Ok(())
    }

    fn append(&mut self, target: Id, items: Vec<Id>, at: usize) -> Result<()> {
        match &mut self.objects[target] {
            Object::List(v) => {
                v.extend(items);
                Ok(())
            }
            other => bail!("APPEND(S) at byte {at} onto a {}, not a list", other.kind()),
        }
    }

    fn set_items(&mut self, target: Id, items: Vec<Id>, at: usize) -> Result<()> {
        ensure!(items.len().is_multiple_of(2), "SETITEMS at byte {at}: an odd number of keys and values");
        match &mut self.objects[target] {
            Object::Dict(v) => {
                v.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            other => bail!("SETITEM(S) at byte {at} onto a {}, not a dict", other.kind()),
        }
    }

    /// Runs to `STOP` and returns the root.
    fn run(&mut self) -> Result<Id> {
        loop {
            let at = self.reader.pos;
            let Some(&code) = self.reader.data.get(at) else {
                bail!("truncated: the input ends at byte {at} before the pickle's STOP");
            };
            self.reader.pos += 1;
            let r = &mut self.reader;
            match code {
                op::PROTO => {
                    let v = r.u8("PROTO")?;
                    ensure!((2..=5).contains(&v), "PROTO at byte {at}: protocol {v} is not 2 to 5");
                }
                op::FRAME => {
                    // A frame is only a read-ahead hint; its length must still lie within the input.
                    let n = r.len64("FRAME")?;
                    ensure!(n <= r.data.len() - r.pos, "truncated: FRAME at byte {at} announces {n} bytes");
                }
                op::STOP => {
                    ensure!(self.marks.is_empty(), "STOP at byte {at} with an unclosed MARK");
                    ensure!(self.stack.len() == 1, "STOP at byte {at} with {} objects on the stack", self.stack.len());
                    return Ok(self.stack[0]);
                }
                op::MARK => self.marks.push(self.stack.len()),
                op::NONE => self.push(Object::None),
                op::NEWTRUE => self.push(Object::Bool(true)),
                op::NEWFALSE => self.push(Object::Bool(false)),
                op::BININT => {
                    let v = i32::from_le_bytes(r.bytes("BININT")?);
                    self.push(Object::Int(v.into()));
                }
                op::BININT1 => {
                    let v = r.u8("BININT1")?;
                    self.push(Object::Int(v.into()));
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(r.bytes("BININT2")?);
                    self.push(Object::Int(v.into()));
                }
                op::LONG1 => {
                    let n = usize::from(r.u8("LONG1")?);
                    ensure!(n <= 8, "LONG1 at byte {at}: a {n}-byte integer does not fit 64 bits");
                    let b = &r.data[r.take(n, "LONG1")?];
                    // Little-endian two's complement, sign-extended from the last byte.
                    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xFF } else { 0 };
                    let mut full = [fill; 8];
                    full[..n].copy_from_slice(b);
                    self.push(Object::Int(i64::from_le_bytes(full)));
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(r.bytes("BINFLOAT")?);
                    self.push(Object::Float(v));
                }
                op::SHORT_BINSTRING | op::SHORT_BINBYTES => {
                    let n = usize::from(r.u8("SHORT_BINSTRING")?);
                    let range = r.take(n, "SHORT_BINSTRING")?;
                    self.push(Object::Bytes(range));
                }
                op::BINSTRING => {
                    let n = i32::from_le_bytes(r.bytes("BINSTRING")?);
                    let n = usize::try_from(n).map_err(|_| anyhow!("BINSTRING at byte {at}: negative length {n}"))?;
                    let range = r.take(n, "BINSTRING")?;
                    self.push(Object::Bytes(range));
                }
                op::BINBYTES => {
                    let n = r.u32("BINBYTES")? as usize;
                    let range = r.take(n, "BINBYTES")?;
                    self.push(Object::Bytes(range));
                }
                op::BINBYTES8 => {
                    let n = r.len64("BINBYTES8")?;
                    let range = r.take(n, "BINBYTES8")?;
                    self.push(Object::Bytes(range));
                }
                op::SHORT_BINUNICODE => {
                    let n = usize::from(r.u8("SHORT_BINUNICODE")?);
                    let range = r.take(n, "SHORT_BINUNICODE")?;
                    self.text(range, at)?;
                }
                op::BINUNICODE => {
                    let n = r.u32("BINUNICODE")? as usize;
                    let range = r.take(n, "BINUNICODE")?;
                    self.text(range, at)?;
                }
                op::BINUNICODE8 => {
                    let n = r.len64("BINUNICODE8")?;
                    let range = r.take(n, "BINUNICODE8")?;
                    self.text(range, at)?;
                }
                op::EMPTY_TUPLE => self.push(Object::Tuple(Vec::new())),
                op::TUPLE => {
                    let items = self.pop_mark(at, "TUPLE")?;
                    self.push(Object::Tuple(items));
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(code - op::TUPLE1 + 1);
                    let mut items = vec![0; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop(at, "TUPLE1/2/3")?;
                    }
                    self.push(Object::Tuple(items));
                }
                op::EMPTY_LIST => self.push(Object::List(Vec::new())),
                op::APPEND => {
                    let item = self.pop(at, "APPEND")?;
                    let list = self.top(at, "APPEND")?;
                    self.append(list, vec![item], at)?;
                }
                op::APPENDS => {
                    let items = self.pop_mark(at, "APPENDS")?;
                    let list = self.top(at, "APPENDS")?;
                    self.append(list, items, at)?;
                }
                op::EMPTY_DICT => self.push(Object::Dict(Vec::new())),
                op::SETITEM => {
                    let value = self.pop(at, "SETITEM")?;
                    let key = self.pop(at, "SETITEM")?;
                    let dict = self.top(at, "SETITEM")?;
                    self.set_items(dict, vec![key, value], at)?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark(at, "SETITEMS")?;
                    let dict = self.top(at, "SETITEMS")?;
                    self.set_items(dict, items, at)?;
                }
                op::BINPUT => {
                    let key = r.u8("BINPUT")?;
                    self.memo_put(key.into(), at)?;
                }
                op::LONG_BINPUT => {
                    let key = r.u32("LONG_BINPUT")?;
                    self.memo_put(key.into(), at)?;
                }
                op::MEMOIZE => {
                    let key = self.memo.len() as u64;
                    self.memo_put(key, at)?;
                }
                op::BINGET => {
                    let key = r.u8("BINGET")?;
                    self.memo_get(key.into(), at)?;
                }
                op::LONG_BINGET => {
                    let key = r.u32("LONG_BINGET")?;
                    self.memo_get(key.into(), at)?;
                }
                op::GLOBAL => {
                    let module = r.line("GLOBAL")?;
                    let name = r.line("GLOBAL")?;
                    self.push(Object::Global { module, name });
                }
                op::STACK_GLOBAL => {
                    let name = self.pop(at, "STACK_GLOBAL")?;
                    let module = self.pop(at, "STACK_GLOBAL")?;
                    let text = |id: Id| match &self.objects[id] {
                        Object::Str(r) => Ok(std::str::from_utf8(&self.reader.data[r.clone()]).expect("checked")),
                        other => Err(anyhow!("STACK_GLOBAL at byte {at}: a {} is not a name", other.kind())),
                    };
                    let (module, name) = (text(module)?.to_string(), text(name)?.to_string());
                    self.push(Object::Global { module, name });
                }
                op::REDUCE => {
                    let args = self.pop(at, "REDUCE")?;
                    let func = self.pop(at, "REDUCE")?;
                    let is_ordered_dict = matches!(&self.objects[func],
                        Object::Global { module, name } if module == "collections" && name == "OrderedDict");
                    match (&self.objects[args], is_ordered_dict) {
                        // `OrderedDict()`: an empty dict that SETITEMS fill next.
                        (Object::Tuple(a), true) if a.is_empty() => self.push(Object::Dict(Vec::new())),
                        (Object::Tuple(_), _) => self.push(Object::Call { func, args }),
                        (other, _) => bail!("REDUCE at byte {at}: arguments are a {}, not a tuple", other.kind()),
                    }
                }
                op::BUILD => {
                    let state = self.pop(at, "BUILD")?;
                    let obj = self.top(at, "BUILD")?;
                    self.states.insert(obj, state);
                }
                op::BINPERSID => {
                    let pid = self.pop(at, "BINPERSID")?;
                    self.push(Object::PersistentId(pid));
                }
                other => {
                    let shown =
                        if other.is_ascii_graphic() { format!(" ('{}')", other as char) } else { String::new() };
                    bail!(
                        "unsupported pickle opcode 0x{other:02x}{shown} at byte {at}: only the opcodes of insightface \
                         verification packs and PyTorch state dicts are read"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python2_pack_of_bytes_and_bools() {
        // pickle.dumps((['ab', 'c'], [True, False]), protocol=2) in Python 2.
        let data = b"\x80\x02]q\x00(U\x02abq\x01U\x01cq\x02e]q\x03(\x88\x89e\x86q\x04.";
        let p = Pickle::parse(data).unwrap();
        let root = p.tuple(p.root, &"root").unwrap();
        let images = p.list(root[0], &"images").unwrap();
        assert_eq!(p.bytes(images[0], &"0").unwrap(), b"ab");
        assert_eq!(p.bytes(images[1], &"1").unwrap(), b"c");
        let same = p.list(root[1], &"issame").unwrap();
        assert!(p.bool(same[0], &"0").unwrap());
        assert!(!p.bool(same[1], &"1").unwrap());
    }

    #[test]
    fn memo_references_are_shared_and_mutations_seen() {
        // l = []; (l, l) with l appended after both references are taken would need a different stream; here
        // the list is memoised, appended to, then fetched again: both tuple items are the same object.
        let data = b"\x80\x02]q\x00K\x01ah\x00\x86.";
        let p = Pickle::parse(data).unwrap();
        let t = p.tuple(p.root, &"root").unwrap();
        assert_eq!(t[0], t[1]);
        assert_eq!(p.list(t[0], &"l").unwrap().len(), 1);
    }

    #[test]
    fn integers_of_every_width() {
        // (255, 65535, -2, LONG1 2^40, LONG1 -1)
        let data = b"\x80\x02(K\xffM\xff\xffJ\xfe\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x01\xfft.";
        let p = Pickle::parse(data).unwrap();
        let t = p.tuple(p.root, &"root").unwrap();
        let v: Vec<i64> = t.iter().map(|&i| p.int(i, &"x").unwrap()).collect();
        assert_eq!(v, [255, 65535, -2, 1 << 40, -1]);
    }

    #[test]
    fn ordered_dict_and_build_state() {
        // collections.OrderedDict() with one item, then BUILD with a state dict.
        let data = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aK\x07s}q\x02b.";
        let p = Pickle::parse(data).unwrap();
        let d = p.dict(p.root, &"root").unwrap();
        assert_eq!(p.str(d[0].0, &"key").unwrap(), "a");
        assert_eq!(p.int(d[0].1, &"value").unwrap(), 7);
        assert!(p.state(p.root).is_some());
    }

    #[test]
    fn bad_streams_are_errors_with_offsets() {
        let err = |d: &[u8]| format!("{:#}", Pickle::parse(d).unwrap_err());
        assert!(err(b"\x80\x02]U\x05ab").contains("truncated"), "{}", err(b"\x80\x02]U\x05ab"));
        assert!(err(b"\x80\x02]").contains("before the pickle's STOP"));
        assert!(err(b"\x80\x02cos\nsystem\n(U\x02lsto.").contains("unsupported pickle opcode 0x6f ('o') at byte 19"));
        assert!(err(b"\x80\x02h\x05.").contains("memo key 5 was never stored"));
        assert!(err(b"\x80\x02(K\x01.").contains("unclosed MARK"));
        assert!(err(b"\x80\x02K\x01.junk").contains("4 bytes follow"));
        assert!(err(b"\x80\x02K\x01K\x02a.").contains("onto a int, not a list"));
        assert!(err(b"\x80\x02K\x01a.").contains("stack is empty"));
        assert!(err(b"\x80\x02T\xff\xff\xff\xff.").contains("negative length"));
        assert!(err(b"\x80\x02X\x02\x00\x00\x00\xff\xfe.").contains("not valid UTF-8"));
        assert!(err(b"\x80\x02e.").contains("without a MARK"));
        assert!(err(b"\x80\x02.").contains("0 objects"));
        assert!(err(b"").contains("before the pickle's STOP"));
    }
}
