//! insightface verification packs (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, `calfw.bin`, `cplfw.bin`, ...).
//!
//! A pack is a pickle of `(bins, issame_list)`: `2N` encoded images (JPEG or PNG), pair `k` being images `2k`
//! and `2k + 1`, and `N` booleans. The published packs were written by Python 2 (protocol 2, images as `str`);
//! re-packed ones by Python 3 (images as `bytes`, often protocol 4). Both are read by the strict reader of
//! [`crate::pickle`]; anything else (another structure, an item that is not bytes or a bool, an odd image count,
//! images and labels that do not pair up) is an error naming the file and the item.

use std::ops::Range;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::pickle::{Object, Pickle};

/// A verification pack in memory: the file's bytes and where each encoded image lies in them.
#[derive(Clone, Debug)]
pub struct VerificationPack {
    /// The file, for messages.
    pub name: String,
    bytes: Vec<u8>,
    images: Vec<Range<usize>>,
    /// Whether each pair shows one person, `(N)`.
    pub issame: Vec<bool>,
}

impl VerificationPack {
    /// Reads the pack at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_bytes(&path.display().to_string(), bytes)
    }

    /// Parses a pack held in memory; `name` is used in messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        let (images, issame) =
            parse(&bytes).with_context(|| format!("{name}: not an insightface verification pack"))?;
        Ok(Self { name: name.to_string(), bytes, images, issame })
    }

    /// Number of pairs `N`.
    pub fn pairs(&self) -> usize {
        self.issame.len()
    }

    /// Number of images, `2N`.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether the pack holds no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The encoded bytes (JPEG or PNG) of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.bytes[self.images[i].clone()]
    }
}

/// The image ranges and labels of a pack's pickle.
fn parse(bytes: &[u8]) -> Result<(Vec<Range<usize>>, Vec<bool>)> {
    let p = Pickle::parse(bytes)?;
    let root = p.tuple(p.root, &"the pickled object").context("expected a tuple (bins, issame_list)")?;
    let [bins, issame] = root else {
        bail!("the pickled tuple has {} items, expected 2 (bins, issame_list)", root.len());
    };
    let bins = p.list(*bins, &"bins (item 0)")?;
    let issame = p.list(*issame, &"issame_list (item 1)")?;
    let images = bins
        .iter()
        .enumerate()
        .map(|(i, &id)| match p.get(id) {
            Object::Bytes(r) => Ok(r.clone()),
            other => Err(anyhow!("bins[{i}] is a {}, expected the bytes of an encoded image", other.kind())),
        })
        .collect::<Result<Vec<_>>>()?;
    let issame = issame
        .iter()
        .enumerate()
        .map(|(i, &id)| p.bool(id, &format!("issame_list[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    if images.len() % 2 == 1 {
        bail!("{} images, an odd count: pairs are images 2k and 2k+1", images.len());
    }
    if images.len() != 2 * issame.len() {
        bail!("{} images form {} pairs, but issame_list has {} labels", images.len(), images.len() / 2, issame.len());
    }
    if issame.is_empty() {
        bail!("the pack holds no pair");
    }
    // The protocol needs both kinds: TAR at FAR and the ROC are undefined with one (found here, not after embedding).
    if issame.iter().all(|&s| s) || !issame.iter().any(|&s| s) {
        bail!(
            "all {} pairs are {}: verification needs same and different pairs",
            issame.len(),
            if issame[0] { "of one person" } else { "of two people" }
        );
    }
    Ok((images, issame))
}

/// Writes `(bins, issame_list)` as Python 2's `pickle.dump(..., protocol=2)` does (`SHORT_BINSTRING`/`BINSTRING`
/// images, `APPENDS` in batches of 1000, memoised): the layout of insightface's published packs. For tests and
/// for tools that make packs.
pub fn write_python2_pack(images: &[Vec<u8>], issame: &[bool]) -> Vec<u8> {
    let mut out = vec![0x80, 2];
    let mut memo = 0u32;
    let mut put = |out: &mut Vec<u8>| {
        if memo < 256 {
            out.extend([b'q', memo as u8]);
        } else {
            out.push(b'r');
            out.extend(memo.to_le_bytes());
        }
        memo += 1;
    };
    out.push(b']');
    put(&mut out);
    for chunk in images.chunks(1000) {
        if chunk.len() > 1 {
            out.push(b'(');
        }
        for img in chunk {
            if img.len() < 256 {
                out.extend([b'U', img.len() as u8]);
            } else {
                out.push(b'T');
                out.extend((img.len() as i32).to_le_bytes());
            }
            out.extend(img);
            put(&mut out);
        }
        out.push(if chunk.len() > 1 { b'e' } else { b'a' });
    }
    out.push(b']');
    put(&mut out);
    for chunk in issame.chunks(1000) {
        if chunk.len() > 1 {
            out.push(b'(');
        }
        out.extend(chunk.iter().map(|&s| if s { 0x88 } else { 0x89 }));
        out.push(if chunk.len() > 1 { b'e' } else { b'a' });
    }
    out.push(0x86);
    put(&mut out);
    out.push(b'.');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_packs_read_back() {
        let images: Vec<Vec<u8>> = (0..2004).map(|i| vec![i as u8; if i == 3 { 300 } else { 5 + i % 7 }]).collect();
        let issame: Vec<bool> = (0..1002).map(|i| i % 3 == 0).collect();
        let pack = VerificationPack::from_bytes("t.bin", write_python2_pack(&images, &issame)).unwrap();
        assert_eq!((pack.len(), pack.pairs()), (2004, 1002));
        assert_eq!(pack.issame, issame);
        for (i, img) in images.iter().enumerate() {
            assert_eq!(pack.image(i), img.as_slice());
        }
    }

    #[test]
    fn malformed_packs_are_named() {
        let err = |bytes: Vec<u8>| format!("{:#}", VerificationPack::from_bytes("bad.bin", bytes).unwrap_err());
        let img = vec![vec![1u8, 2, 3]; 3];
        let e = err(write_python2_pack(&img, &[true]));
        assert!(e.starts_with("bad.bin: ") && e.contains("3 images, an odd count"), "{e}");
        let e = err(write_python2_pack(&img[..2], &[true, false]));
        assert!(e.contains("2 images form 1 pairs, but issame_list has 2 labels"), "{e}");
        let mut truncated = write_python2_pack(&img[..2], &[true]);
        truncated.truncate(truncated.len() - 8);
        let e = err(truncated);
        assert!(e.starts_with("bad.bin: ") && e.contains("truncated"), "{e}");
        // (bins, issame) with a number among the images, and a non-pickle.
        let e = err(b"\x80\x02](K\x05e](\x88e\x86.".to_vec());
        assert!(e.contains("bins[0] is a int"), "{e}");
        let e = err(b"\x80\x02](U\x01aU\x01be](K\x01e\x86.".to_vec());
        assert!(e.contains("issame_list[0] is a int, expected bool"), "{e}");
        let e = err(b"<html>".to_vec());
        assert!(e.contains("unsupported pickle opcode 0x3c ('<') at byte 0"), "{e}");
        let e = err(write_python2_pack(&[], &[]));
        assert!(e.contains("no pair"), "{e}");
        // One kind of pair only: no TAR, no ROC.
        let e = err(write_python2_pack(&vec![vec![1u8, 2, 3]; 4], &[true, true]));
        assert!(e.contains("all 2 pairs are of one person: verification needs same and different pairs"), "{e}");
        let e = err(write_python2_pack(&vec![vec![1u8, 2, 3]; 2], &[false]));
        assert!(e.contains("all 1 pairs are of two people"), "{e}");
    }
}
