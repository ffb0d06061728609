//! RecordIO: the MXNet-written fixture, our writer against MXNet's bytes, round trips, a writer built by hand in
//! this file, and damaged files (clear errors naming file and key, never a panic).

use std::fs;
use std::path::{Path, PathBuf};

use elasticface::data::decode::{decode_rgb, encode_jpeg, encode_png};
use elasticface::data::recordio::{IrHeader, RecordFile, RecordIoLayout, RecordWriter, MAGIC};
use elasticface::data::{Dataset, RecordIoDataset, RecordIoPaths, RecordIoWriter, SyntheticDataset};
use elasticface_core::nn::ImageShape;
use serde_json::Value;
use sha2::{Digest, Sha256};

const SHAPE: ImageShape = ImageShape { h: 112, w: 112 };

fn formats_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/reference/formats")
}

fn fixture_dir() -> PathBuf {
    formats_dir().join("recordio")
}

fn expected() -> Value {
    let text = fs::read_to_string(formats_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str::<Value>(&text).expect("json")["recordio"].clone()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn as_u64s(v: &Value) -> Vec<u64> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("integer")).collect()
}

/// The full message of an error that must have happened.
fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// Offsets and `cflag`s of every part stored in a `.rec` file, walked from the start.
fn parts_on_disk(rec: &[u8]) -> Vec<(usize, u32, usize)> {
    let mut parts = Vec::new();
    let mut pos = 0;
    while pos + 8 <= rec.len() {
        assert_eq!(u32::from_le_bytes(rec[pos..pos + 4].try_into().unwrap()), MAGIC, "magic at {pos}");
        let lrec = u32::from_le_bytes(rec[pos + 4..pos + 8].try_into().unwrap());
        let len = (lrec & ((1 << 29) - 1)) as usize;
        parts.push((pos, lrec >> 29, len));
        pos += 8 + len.div_ceil(4) * 4;
    }
    assert_eq!(pos, rec.len(), "parts end exactly at the end of the file");
    parts
}

// -------------------------------------------------------------------------------------------------------------
// The fixture written by MXNet 1.9.1
// -------------------------------------------------------------------------------------------------------------

#[test]
fn mxnet_fixture_reads_as_expected_json_says() {
    let exp = expected();
    let ds = RecordIoDataset::open(&fixture_dir()).expect("open the MXNet fixture");
    assert_eq!(ds.num_classes() as u64, exp["num_classes"].as_u64().unwrap());
    assert_eq!(vec![ds.image_shape().h as u64, ds.image_shape().w as u64], as_u64s(&exp["image_size"]));
    assert_eq!(ds.len() as u64, exp["num_images"].as_u64().unwrap());

    let header_labels = as_u64s(&exp["header_record_label"]);
    assert_eq!(
        ds.layout(),
        RecordIoLayout::Insightface { image_end: header_labels[0], range_end: Some(header_labels[1]) }
    );
    let payload = ds.read_key(0).unwrap();
    let (header, rest) = IrHeader::parse(&payload).unwrap();
    assert_eq!(header.labels, header_labels.iter().map(|&k| k as f32).collect::<Vec<_>>());
    assert!(rest.is_empty());
    let image_keys = as_u64s(&exp["image_keys"]);
    assert_eq!(
        (ds.key(0), ds.key(ds.len() - 1), ds.key(ds.len())),
        (Some(image_keys[0]), Some(image_keys[1] - 1), None)
    );
    assert_eq!(ds.keys().collect::<Vec<_>>(), (0..header_labels[1]).collect::<Vec<_>>());

    let ranges: Vec<(u64, u64)> = exp["identity_ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
        .collect();
    assert_eq!(ds.identity_ranges().unwrap(), Some(ranges));

    for (i, im) in exp["images"].as_array().unwrap().iter().enumerate() {
        let record = ds.read_image_record(i).unwrap();
        assert_eq!(record.key, im["key"].as_u64().unwrap());
        assert_eq!(u64::from(record.label), im["label"].as_u64().unwrap());
        assert_eq!((record.header.flag, record.header.id), (0, record.key), "MXNet's IRHeader(0, label, key, 0)");
        assert_eq!(sha256_hex(&record.image), im["jpeg_sha256"].as_str().unwrap(), "JPEG bytes of key {}", record.key);
        let sample = ds.load(i).unwrap();
        assert_eq!((sample.label, sample.rgb.len()), (record.label, SHAPE.len()));
    }
}

#[test]
fn mxnet_fixture_split_record_is_really_split_on_disk() {
    let exp = expected();
    let split = exp["images"].as_array().unwrap().iter().find(|im| im["split"].as_bool().unwrap()).unwrap();
    let split_key = split["key"].as_u64().unwrap();
    let idx = fs::read_to_string(fixture_dir().join("train.idx")).unwrap();
    let offset: usize = idx
        .lines()
        .find_map(|l| l.split_once('\t').filter(|(k, _)| k.parse::<u64>().unwrap() == split_key))
        .map(|(_, o)| o.parse().unwrap())
        .unwrap();
    let rec = fs::read(fixture_dir().join("train.rec")).unwrap();
    let parts = parts_on_disk(&rec);
    let mut flags_seen: Vec<u32> = parts.iter().map(|p| p.1).collect();
    flags_seen.sort();
    flags_seen.dedup();
    assert_eq!(
        flags_seen.iter().map(|&f| u64::from(f)).collect::<Vec<_>>(),
        as_u64s(&exp["record_part_flags_seen_on_disk"])
    );
    let first = parts.iter().position(|p| p.0 == offset).expect("the idx offset starts a part");
    let flags: Vec<u32> = parts[first..first + 3].iter().map(|p| p.1).collect();
    assert_eq!(flags, [1, 2, 3], "the record is stored as first, middle and last part");

    let ds = RecordIoDataset::open(&fixture_dir()).unwrap();
    let index = (0..ds.len()).find(|&i| ds.key(i) == Some(split_key)).unwrap();
    let record = ds.read_image_record(index).unwrap();
    assert_eq!(sha256_hex(&record.image), split["jpeg_sha256"].as_str().unwrap());
    let magic = MAGIC.to_le_bytes();
    assert_eq!(record.image.windows(4).filter(|w| *w == magic).count(), 2, "both magics re-inserted");
}

#[test]
fn our_record_writer_reproduces_mxnet_rec_and_idx_byte_for_byte() {
    // Read every record of the fixture, write them again in the fixture's index order: same bytes.
    let paths = RecordIoPaths::in_dir(&fixture_dir());
    let rec = RecordFile::open(&paths.rec).unwrap();
    let idx = fs::read_to_string(&paths.idx).unwrap();
    let mut writer = RecordWriter::new(Vec::new());
    let mut our_idx = String::new();
    for line in idx.lines() {
        let (key, offset) = line.split_once('\t').unwrap();
        let payload = rec.read_record(offset.parse().unwrap()).unwrap();
        let (header, data) = IrHeader::parse(&payload).unwrap();
        assert_eq!(header.pack(data), payload, "IrHeader::pack(parse(payload)) is the payload");
        let ours = writer.write_record(&payload).unwrap();
        our_idx.push_str(&format!("{key}\t{ours}\n"));
    }
    assert!(writer.into_inner().unwrap() == fs::read(&paths.rec).unwrap(), "train.rec differs");
    assert_eq!(our_idx, idx);
}

#[test]
fn fixture_jpeg_decoding_against_pil() {
    // recordio_pil_rgb.png: the 12 fixture images as PIL 13.0 (libjpeg-turbo) decodes them, stacked vertically,
    // saved by PIL as PNG. Each slice must hash to expected.json's rgb_sha256, which proves both that the file
    // holds PIL's pixels and that our PNG decoding is exact.
    let exp = expected();
    let images = exp["images"].as_array().unwrap();
    let png = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/recordio_pil_rgb.png")).unwrap();
    let stacked = decode_rgb(&png, ImageShape { h: SHAPE.h * images.len(), w: SHAPE.w }).unwrap();
    let ds = RecordIoDataset::open(&fixture_dir()).unwrap();
    let (mut max_diff, mut sum_diff, mut differing, mut bit_exact) = (0u8, 0u64, 0usize, 0usize);
    for (i, im) in images.iter().enumerate() {
        let pil = &stacked[i * SHAPE.len()..(i + 1) * SHAPE.len()];
        assert_eq!(sha256_hex(pil), im["rgb_sha256"].as_str().unwrap(), "reference slice {i}");
        let ours = ds.load(i).unwrap().rgb;
        if sha256_hex(&ours) == im["rgb_sha256"].as_str().unwrap() {
            bit_exact += 1;
        }
        for (&a, &b) in ours.iter().zip(pil) {
            let d = a.abs_diff(b);
            max_diff = max_diff.max(d);
            sum_diff += u64::from(d);
            differing += usize::from(d != 0);
        }
    }
    let values = images.len() * SHAPE.len();
    let mean = sum_diff as f64 / values as f64;
    println!(
        "JPEG vs PIL: {bit_exact}/{} images bit-exact; max |diff| {max_diff}, mean {mean:.3}, {:.1}% of values differ",
        images.len(),
        100.0 * differing as f64 / values as f64
    );
    // zune-jpeg rounds IDCT, 4:2:0 upsampling and YCbCr->RGB differently from libjpeg (measured: max 4, mean 0.35).
    assert!(max_diff <= 6 && mean < 0.6, "decoding drifted from libjpeg: max {max_diff}, mean {mean}");
}

// -------------------------------------------------------------------------------------------------------------
// Our writer -> our reader
// -------------------------------------------------------------------------------------------------------------

/// Image payloads that exercise the splitting: the magic at aligned offsets of the payload (image offset 0 is
/// payload offset 24 for a single-label header), at the very end, repeated, and at unaligned offsets.
fn tricky_images() -> Vec<Vec<u8>> {
    let m = MAGIC.to_le_bytes();
    let cat = |parts: &[&[u8]]| parts.concat();
    vec![
        cat(&[&m]),                               // the whole image is the magic: ends the payload
        cat(&[&m, &m, &m]),                       // three in a row: empty middle parts
        cat(&[b"abcd", &m, b"efgh", &m]),         // middle and end
        cat(&[b"ab", &m, b"cd"]),                 // unaligned: not split
        cat(&[&m, b"xyz"]),                       // aligned start, odd length
        cat(&[b"abcdefg", &m[..3]]),              // partial magic at the end
        Vec::new(),                               // no image bytes at all
        (0..=255u8).cycle().take(1001).collect(), // plain data
    ]
}

#[test]
fn writer_round_trip_with_magic_inside_and_multi_label_headers() {
    let dir = tempfile::tempdir().unwrap();
    let paths = RecordIoPaths::in_dir(dir.path());
    let images = tricky_images();
    // 4 classes; class 2 gets no image at all; every second image carries extra labels.
    let labels = [0u32, 0, 1, 1, 1, 3, 3, 3];
    let mut w = RecordIoWriter::create(&paths, 4, SHAPE).unwrap();
    for (i, (img, &label)) in images.iter().zip(&labels).enumerate() {
        let key = if i % 2 == 1 {
            w.add_image_with_extra_labels(label, &[0.25, -7.0], img).unwrap()
        } else {
            w.add_image(label, img).unwrap()
        };
        assert_eq!(key, i as u64 + 1);
    }
    assert_eq!(w.num_images(), images.len() as u64);
    assert_eq!(w.finish().unwrap(), paths);
    assert_eq!(fs::read_to_string(&paths.property).unwrap(), "4,112,112");

    let rec = fs::read(&paths.rec).unwrap();
    let flags: Vec<u32> = parts_on_disk(&rec).iter().map(|p| p.1).collect();
    assert!(flags.contains(&1) && flags.contains(&2) && flags.contains(&3), "some records were split: {flags:?}");

    let ds = RecordIoDataset::open(dir.path()).unwrap();
    let n = images.len() as u64;
    assert_eq!(ds.layout(), RecordIoLayout::Insightface { image_end: n + 1, range_end: Some(n + 1 + 4) });
    assert_eq!((ds.len(), ds.num_classes(), ds.image_shape()), (images.len(), 4, SHAPE));
    assert_eq!(ds.identity_ranges().unwrap(), Some(vec![(1, 3), (3, 6), (6, 6), (6, 9)]));
    for (i, img) in images.iter().enumerate() {
        let r = ds.read_image_record(i).unwrap();
        assert_eq!((r.key, r.label), (i as u64 + 1, labels[i]));
        assert_eq!(&r.image, img, "image {i}");
        if i % 2 == 1 {
            assert_eq!((r.header.flag, r.header.labels.clone()), (3, vec![labels[i] as f32, 0.25, -7.0]));
        } else {
            assert_eq!((r.header.flag, r.header.label), (0, labels[i] as f32));
        }
    }
    // Not images, so loading them decodes nothing and says which record.
    let e = err_text(ds.load(0));
    assert!(e.contains("record key 1 of") && e.contains("not a JPEG or PNG"), "{e}");
}

#[test]
fn record_writer_splits_exactly_like_dmlc() {
    let m = MAGIC.to_le_bytes();
    let part = |cflag: u32, data: &[u8]| {
        let mut v = m.to_vec();
        v.extend_from_slice(&((cflag << 29) | data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v
    };
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        // the magic at the very start and the very end of the payload
        ([&m[..], b"abcd", &m].concat(), [part(1, b""), part(2, b"abcd"), part(3, b"")].concat()),
        (m.to_vec(), [part(1, b""), part(3, b"")].concat()),
        ([&m[..], &m].concat(), [part(1, b""), part(2, b""), part(3, b"")].concat()),
        // unaligned occurrences are stored as they are
        ([b"a", &m[..], b"bcd"].concat(), part(0, &[b"a", &m[..], b"bcd"].concat())),
        ([b"abcde", &m[..]].concat(), part(0, &[b"abcde", &m[..]].concat())),
        // an odd tail after an aligned cut is padded once, at the end
        ([b"abcd", &m[..], b"e"].concat(), [part(1, b"abcd"), part(3, b"e")].concat()),
        (Vec::new(), part(0, b"")),
    ];
    for (payload, want) in cases {
        let mut w = RecordWriter::new(Vec::new());
        assert_eq!(w.write_record(&payload).unwrap(), 0);
        assert_eq!(w.position(), want.len() as u64);
        let bytes = w.into_inner().unwrap();
        assert_eq!(bytes, want, "payload {payload:02x?}");
        // and the reader joins the parts back
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.rec");
        fs::write(&path, &bytes).unwrap();
        assert_eq!(RecordFile::open(&path).unwrap().read_record(0).unwrap(), payload);
    }
}

#[test]
fn real_images_round_trip_through_writer_reader_and_decoder() {
    let synth = SyntheticDataset::new(5, 6, 3, SHAPE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = RecordIoPaths::in_dir(dir.path());
    let mut w = RecordIoWriter::create(&paths, 3, SHAPE).unwrap();
    let mut originals = Vec::new();
    for i in [0usize, 3, 1, 4, 2, 5] {
        // labels 0,0,1,1,2,2
        let s = synth.load(i).unwrap();
        let bytes =
            if i % 2 == 0 { encode_png(&s.rgb, SHAPE).unwrap() } else { encode_jpeg(&s.rgb, SHAPE, 90).unwrap() };
        w.add_image(s.label, &bytes).unwrap();
        originals.push((s, bytes));
    }
    w.finish().unwrap();
    let ds = RecordIoDataset::open(&paths.rec).unwrap(); // opened through the .rec file this time
    for (i, (orig, bytes)) in originals.iter().enumerate() {
        let got = ds.load(i).unwrap();
        assert_eq!(got.label, orig.label);
        assert_eq!(got.rgb, decode_rgb(bytes, SHAPE).unwrap());
        if bytes.starts_with(b"\x89PNG") {
            assert_eq!(got.rgb, orig.rgb, "PNG is lossless");
        }
    }
}

// -------------------------------------------------------------------------------------------------------------
// A writer built by hand in this test -> our reader
// -------------------------------------------------------------------------------------------------------------

/// One stored part, by hand: magic, lrec, data, zero padding.
fn hand_part(cflag: u32, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x0a, 0x23, 0xd7, 0xce];
    v.extend_from_slice(&((cflag << 29) | data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// An IRHeader payload by hand.
fn hand_payload(flag: u32, label: f32, labels: &[f32], data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&flag.to_le_bytes());
    v.extend_from_slice(&label.to_le_bytes());
    v.extend_from_slice(&[0u8; 16]);
    labels.iter().for_each(|l| v.extend_from_slice(&l.to_le_bytes()));
    v.extend_from_slice(data);
    v
}

/// Writes `records` (key, stored bytes) into `dir` with an index and a property file.
fn write_by_hand(dir: &Path, records: &[(u64, Vec<u8>)], property: &str) {
    let mut rec = Vec::new();
    let mut idx = String::new();
    for (key, bytes) in records {
        idx.push_str(&format!("{key}\t{}\n", rec.len()));
        rec.extend_from_slice(bytes);
    }
    fs::write(dir.join("train.rec"), rec).unwrap();
    fs::write(dir.join("train.idx"), idx).unwrap();
    fs::write(dir.join("property"), property).unwrap();
}

#[test]
fn hand_written_file_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    // Header first (key 0: one label, no range records), then 3 images; key 2 split by hand around a magic at
    // image offset 4 (payload offset 28): first part = header + 4 bytes, last part = the rest.
    let img2_tail = b"tail bytes of image two";
    let split_payload = hand_payload(0, 1.0, &[], b"head");
    let records = vec![
        (0, hand_part(0, &hand_payload(1, 0.0, &[4.0], b""))),
        (1, hand_part(0, &hand_payload(0, 0.0, &[], b"image one"))),
        (2, [hand_part(1, &split_payload), hand_part(3, img2_tail)].concat()),
        (3, hand_part(0, &hand_payload(2, 0.0, &[1.0, 99.0], b"image three"))),
    ];
    write_by_hand(dir.path(), &records, "2,112,112\n");
    let ds = RecordIoDataset::open(dir.path()).unwrap();
    assert_eq!(ds.layout(), RecordIoLayout::Insightface { image_end: 4, range_end: None });
    assert_eq!(ds.identity_ranges().unwrap(), None);
    assert_eq!((ds.len(), ds.num_classes()), (3, 2));
    let got: Vec<(u64, u32, Vec<u8>)> =
        (0..3).map(|i| ds.read_image_record(i).unwrap()).map(|r| (r.key, r.label, r.image)).collect();
    let mut two = b"head".to_vec();
    two.extend_from_slice(&MAGIC.to_le_bytes());
    two.extend_from_slice(img2_tail);
    assert_eq!(got, vec![(1, 0, b"image one".to_vec()), (2, 1, two), (3, 1, b"image three".to_vec())]);
}

#[test]
fn files_without_a_header_record_use_every_key() {
    // No key 0: keys 5, 7, 9 (written out of order) are the images, ascending.
    let dir = tempfile::tempdir().unwrap();
    let img = |label: f32, s: &[u8]| hand_part(0, &hand_payload(0, label, &[], s));
    write_by_hand(dir.path(), &[(9, img(2.0, b"nine")), (5, img(0.0, b"five")), (7, img(1.0, b"seven"))], "3,8,8");
    let ds = RecordIoDataset::open(dir.path()).unwrap();
    assert_eq!(ds.layout(), RecordIoLayout::AllKeys);
    assert_eq!((0..3).map(|i| ds.key(i).unwrap()).collect::<Vec<_>>(), [5, 7, 9]);
    assert_eq!(ds.read_image_record(1).unwrap().image, b"seven");
    assert_eq!(ds.image_shape(), ImageShape { h: 8, w: 8 });

    // Key 0 with flag 0 is an image itself.
    let dir = tempfile::tempdir().unwrap();
    write_by_hand(dir.path(), &[(0, img(1.0, b"zero")), (1, img(0.0, b"one"))], "2,8,8");
    let ds = RecordIoDataset::open(dir.path()).unwrap();
    assert_eq!(ds.layout(), RecordIoLayout::AllKeys);
    assert_eq!((ds.len(), ds.read_image_record(0).unwrap().label), (2, 1));
}

// -------------------------------------------------------------------------------------------------------------
// Damaged files
// -------------------------------------------------------------------------------------------------------------

/// A copy of the MXNet fixture in a temporary directory.
fn fixture_copy() -> (tempfile::TempDir, RecordIoPaths) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["train.rec", "train.idx", "property"] {
        fs::write(dir.path().join(name), fs::read(fixture_dir().join(name)).unwrap()).unwrap();
    }
    let paths = RecordIoPaths::in_dir(dir.path());
    (dir, paths)
}

/// The `.idx` offset of `key`.
fn offset_of(paths: &RecordIoPaths, key: u64) -> usize {
    let idx = fs::read_to_string(&paths.idx).unwrap();
    idx.lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(k, _)| k.parse::<u64>().unwrap() == key)
        .map(|(_, o)| o.parse().unwrap())
        .unwrap()
}

#[test]
fn missing_or_bad_property_file_is_named() {
    let (_dir, paths) = fixture_copy();
    fs::remove_file(&paths.property).unwrap();
    let e = err_text(RecordIoDataset::open_paths(&paths));
    assert!(e.contains(&paths.property.display().to_string()) && e.contains("num_classes,H,W"), "{e}");
    for bad in ["3,112", "three,112,112", "0,112,112", ""] {
        fs::write(&paths.property, bad).unwrap();
        let e = err_text(RecordIoDataset::open_paths(&paths));
        assert!(e.contains("property file") && e.contains(&paths.property.display().to_string()), "{bad}: {e}");
    }
}

#[test]
fn truncated_rec_file_is_an_error_naming_file_and_key() {
    let (_dir, paths) = fixture_copy();
    let rec = fs::read(&paths.rec).unwrap();
    // Cut inside the header record (key 0 is the last record MXNet wrote): its offset is in the file, its part is not.
    fs::write(&paths.rec, &rec[..rec.len() - 10]).unwrap();
    let e = err_text(RecordIoDataset::open_paths(&paths));
    assert!(e.contains("record key 0 of") && e.contains(&paths.rec.display().to_string()), "{e}");
    assert!(e.contains("truncated"), "{e}");
    // Cut in the middle: index offsets past the end.
    fs::write(&paths.rec, &rec[..rec.len() / 2]).unwrap();
    let e = err_text(RecordIoDataset::open_paths(&paths));
    assert!(e.contains("past the end") && e.contains(&paths.idx.display().to_string()) && e.contains("key "), "{e}");

    // A file whose header comes first, cut inside the last image: opens, and loading that image says why.
    let dir = tempfile::tempdir().unwrap();
    let records = vec![
        (0, hand_part(0, &hand_payload(1, 0.0, &[3.0], b""))),
        (1, hand_part(0, &hand_payload(0, 0.0, &[], b"one"))),
        (2, hand_part(0, &hand_payload(0, 0.0, &[], &[7u8; 100]))),
    ];
    write_by_hand(dir.path(), &records, "1,8,8");
    let rec_path = dir.path().join("train.rec");
    let rec = fs::read(&rec_path).unwrap();
    fs::write(&rec_path, &rec[..rec.len() - 20]).unwrap();
    let ds = RecordIoDataset::open(dir.path()).unwrap();
    assert!(ds.read_image_record(0).is_ok());
    let e = err_text(ds.load(1));
    assert!(
        e.contains("record key 2 of") && e.contains(&rec_path.display().to_string()) && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn wrong_magic_is_an_error_naming_file_key_and_offset() {
    let (_dir, paths) = fixture_copy();
    let mut rec = fs::read(&paths.rec).unwrap();
    let off = offset_of(&paths, 4);
    rec[off] ^= 0xff;
    fs::write(&paths.rec, &rec).unwrap();
    let ds = RecordIoDataset::open_paths(&paths).unwrap();
    let e = err_text(ds.load(3));
    assert!(e.contains("record key 4 of") && e.contains(&paths.rec.display().to_string()), "{e}");
    assert!(e.contains(&format!("no RecordIO magic at offset {off}")), "{e}");
    assert!(ds.load(2).is_ok() && ds.load(4).is_ok(), "the other records still load");
}

#[test]
fn broken_split_sequence_is_an_error() {
    let (_dir, paths) = fixture_copy();
    let mut rec = fs::read(&paths.rec).unwrap();
    let off = offset_of(&paths, 6); // the split record: parts 1, 2, 3
    let second = off + 8 + 32; // first part holds 32 bytes
    rec[second + 7] = 0; // cflag of the middle part 2 -> 0
    fs::write(&paths.rec, &rec).unwrap();
    let ds = RecordIoDataset::open_paths(&paths).unwrap();
    let e = err_text(ds.load(5));
    assert!(e.contains("record key 6 of") && e.contains("cflag 0"), "{e}");
}

#[test]
fn index_problems_fail_open_with_file_and_line() {
    let (_dir, paths) = fixture_copy();
    let good = fs::read_to_string(&paths.idx).unwrap();
    let rec_len = fs::metadata(&paths.rec).unwrap().len();
    let edit =
        |f: &dyn Fn(&str) -> Option<String>| -> String { good.lines().filter_map(f).map(|l| l + "\n").collect() };
    let cases = [
        (edit(&|l| Some(if l.starts_with("5\t") { format!("5\t{rec_len}") } else { l.to_owned() })), "past the end"),
        (
            edit(&|l| Some(if l.starts_with("5\t") { format!("5 x\t{l}") } else { l.to_owned() })),
            "not `key<TAB>offset`",
        ),
        (format!("{good}3\t0\n"), "key 3 appears more than once"),
        (edit(&|l| (!l.starts_with("7\t")).then(|| l.to_owned())), "key 7 is not in"),
    ];
    for (idx, want) in cases {
        fs::write(&paths.idx, &idx).unwrap();
        let e = err_text(RecordIoDataset::open_paths(&paths));
        assert!(e.contains(want) && e.contains(&paths.idx.display().to_string()), "want {want:?}: {e}");
    }
}

#[test]
fn labels_out_of_range_or_not_integers_are_errors() {
    // The fixture's labels are 0, 1, 2: with a property of 2 classes, class 2 is out of range.
    let (_dir, paths) = fixture_copy();
    fs::write(&paths.property, "2,112,112").unwrap();
    let ds = RecordIoDataset::open_paths(&paths).unwrap();
    assert!(ds.load(7).is_ok());
    let e = err_text(ds.load(8));
    assert!(e.contains("record key 9 of") && e.contains("label 2 is outside [0, 2)"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let img = |label: f32| hand_part(0, &hand_payload(0, label, &[], b"x"));
    let multi = hand_part(0, &hand_payload(2, 0.0, &[0.5, 1.0], b"x"));
    let records =
        vec![(1, img(1.5)), (2, img(-1.0)), (3, img(f32::NAN)), (4, multi), (5, img(1.0)), (6, hand_part(0, b"short"))];
    write_by_hand(dir.path(), &records, "2,8,8");
    let ds = RecordIoDataset::open(dir.path()).unwrap();
    let rec = dir.path().join("train.rec").display().to_string();
    for (i, want) in [
        (0, "label 1.5 is not an integer"),
        (1, "label -1 is outside"),
        (2, "label NaN is not an integer"),
        (3, "label 0.5 is not an integer"),
        (5, "shorter than the 24-byte IRHeader"),
    ] {
        let e = err_text(ds.read_image_record(i));
        assert!(e.contains(want) && e.contains(&format!("record key {} of {rec}", i + 1)), "want {want:?}: {e}");
    }
    assert_eq!(ds.read_image_record(4).unwrap().label, 1);
}

#[test]
fn corrupt_or_wrong_size_jpeg_inside_an_intact_record_is_an_error() {
    let synth = SyntheticDataset::new(1, 2, 1, SHAPE).unwrap();
    let jpeg = encode_jpeg(&synth.load(0).unwrap().rgb, SHAPE, 90).unwrap();
    let small = ImageShape { h: 56, w: 112 };
    let small_jpeg = encode_jpeg(&vec![100; small.len()], small, 90).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = RecordIoPaths::in_dir(dir.path());
    let mut w = RecordIoWriter::create(&paths, 1, SHAPE).unwrap();
    w.add_image(0, &jpeg).unwrap();
    w.add_image(0, &jpeg[..jpeg.len() / 2]).unwrap(); // truncated JPEG
    w.add_image(0, &small_jpeg).unwrap();
    w.finish().unwrap();
    let ds = RecordIoDataset::open(dir.path()).unwrap();
    assert!(ds.load(0).is_ok());
    let e = err_text(ds.load(1));
    assert!(e.contains("record key 2 of") && e.contains("corrupt JPEG data"), "{e}");
    let e = err_text(ds.load(2));
    assert!(e.contains("record key 3 of") && e.contains("image is 56x112 (HxW) but 112x112 is required"), "{e}");
}

#[test]
fn writer_rejects_bad_labels_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = RecordIoWriter::create(&RecordIoPaths::in_dir(dir.path()), 3, SHAPE).unwrap();
    w.add_image(1, b"x").unwrap();
    assert!(err_text(w.add_image(3, b"x")).contains("outside [0, 3)"));
    assert!(err_text(w.add_image(0, b"x")).contains("class order"));
    w.add_image(2, b"x").unwrap();
}
