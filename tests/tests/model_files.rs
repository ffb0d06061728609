//! Model files: PyTorch checkpoints read against the reference weights, ONNX export checked against its schema,
//! re-imported exactly, and run by onnxruntime (where Python has it) against our CPU embeddings.

use std::path::Path;
use std::process::Command;

use elasticface::checkpoint::Backbone;
use elasticface::embed::npy_bytes;
use elasticface::onnx::{self, proto::ModelProto, INPUT, OPSET, OUTPUT};
use elasticface::tensorfile::TensorFile;
use elasticface::train::run::{open_inference, Device};
use elasticface_core::nn::{preprocess_image, ImageShape};
use elasticface_tests::{reference_dir, tiny_backbone, uniform};
use prost::Message;

#[test]
fn the_pytorch_fixture_equals_the_reference_initial_weights_exactly() {
    let pth = reference_dir().join("formats/pth/iresnet_tiny_init.pth");
    let got = elasticface::pth::read(&pth).unwrap();
    let reference = TensorFile::open(&reference_dir().join("iresnet_tiny.safetensors")).unwrap();
    let expected: Vec<&str> =
        reference.keys().into_iter().filter(|k| k.starts_with("init.") && !k.starts_with("init.head.")).collect();
    assert_eq!(got.keys().len(), expected.len());
    assert_eq!(expected.len(), 133, "expected.json: 133 tensors");
    for key in expected {
        let name = &key["init.".len()..];
        let (a, b) = (got.get(name).unwrap(), reference.get(key).unwrap());
        assert_eq!(a.shape, b.shape, "{name}");
        if name.ends_with("num_batches_tracked") {
            assert_eq!(got.i64(name).unwrap(), reference.i64(key).unwrap(), "{name}");
        } else {
            let (x, y) = (got.f32(name).unwrap(), reference.f32(key).unwrap());
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs");
        }
    }
    // As a backbone: the network inferred from the shapes is the reference's.
    let b = Backbone::open(&pth, None, None).unwrap();
    let cfg = b.cfg;
    assert_eq!((cfg.layers, cfg.widths, cfg.input_h, cfg.embedding), ([2, 1, 1, 1], [8, 16, 16, 32], 32, 16));
}

/// The backbone's embeddings `(N, E)` of `u8` images on the CPU reference.
fn cpu_embeddings(b: &Backbone, images: &[u8], n: usize) -> Vec<f32> {
    let mut backend = open_inference(b, Device::Cpu, None, 0, 8).unwrap();
    backend.embed(images, &vec![false; n]).unwrap()
}

fn random_images(seed: u64, n: usize, shape: ImageShape) -> Vec<u8> {
    uniform(seed, n * shape.len()).iter().map(|v| ((v + 1.0) * 127.5) as u8).collect()
}

#[test]
fn export_is_well_formed_and_reimports_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let b = tiny_backbone(5);
    let path = dir.path().join("tiny.onnx");
    onnx::export_to(&b, serde_json::json!("test"), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    // The bytes decode as the schema's ModelProto, and the structure is what insightface's models have.
    let m = ModelProto::decode(bytes.as_slice()).unwrap();
    onnx::check_model(&m).unwrap();
    assert_eq!(m.opset_import[0].version, Some(OPSET));
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name.as_deref(), Some(INPUT));
    assert_eq!(g.output[0].name.as_deref(), Some(OUTPUT));
    let dims = |v: &onnx::proto::ValueInfoProto| -> Vec<String> {
        let Some(onnx::proto::type_proto::Value::TensorType(t)) = &v.r#type.as_ref().unwrap().value else { panic!() };
        t.shape.as_ref().unwrap().dim.iter().map(|d| format!("{:?}", d.value.as_ref().unwrap())).collect()
    };
    assert_eq!(dims(&g.input[0]), ["DimParam(\"N\")", "DimValue(3)", "DimValue(16)", "DimValue(16)"]);
    assert_eq!(dims(&g.output[0]), ["DimParam(\"N\")", "DimValue(8)"]);
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_deref().unwrap()).collect();
    // Stem (3 nodes), four blocks with a downsample (9 nodes each), bn2, flatten, fc, features.
    assert_eq!(ops.len(), 3 + 4 * 9 + 4);
    assert_eq!(&ops[..3], ["Conv", "BatchNormalization", "PRelu"]);
    assert_eq!(&ops[ops.len() - 4..], ["BatchNormalization", "Flatten", "Gemm", "BatchNormalization"]);
    let prelu = g.initializer.iter().find(|t| t.name.as_deref() == Some("layer1.0.prelu.weight")).unwrap();
    assert_eq!(prelu.dims, [4, 1, 1]);

    // A structural fault is caught.
    let mut broken = m.clone();
    broken.graph.as_mut().unwrap().node[1].input[0] = "nowhere".into();
    assert!(onnx::check_model(&broken).unwrap_err().to_string().contains("before it is defined"));

    // Re-import: the same tensors bit for bit, the same embeddings.
    let back = Backbone::open(&path, None, None).unwrap();
    assert_eq!(back.cfg, b.cfg);
    assert!(back.state.iter().zip(&b.state).all(|(x, y)| x.to_bits() == y.to_bits()));
    let shape = ImageShape { h: 16, w: 16 };
    let images = random_images(11, 6, shape);
    assert_eq!(cpu_embeddings(&back, &images, 6), cpu_embeddings(&b, &images, 6));
}

/// Reads a little-endian float32 `.npy` (as numpy writes it) into its shape and values.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"), "{header}");
    let inner = &header[header.find("'shape': (").unwrap() + 10..];
    let shape: Vec<usize> = inner[..inner.find(')').unwrap()]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let values = b[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (shape, values)
}

/// Whether `python3` can import `module`.
fn python_has(module: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
}

/// Exports `b`, runs it in onnxruntime on `n` random images (after onnx's checker, full check with shape inference,
/// when `onnx` is installed; required when `require_checker`), and returns the largest absolute difference from the
/// CPU reference's embeddings and their largest magnitude.
fn onnxruntime_error(b: &Backbone, dir: &Path, name: &str, n: usize, require_checker: bool) -> (f32, f32) {
    let model = dir.join(format!("{name}.onnx"));
    onnx::export_to(b, serde_json::json!("test"), &model).unwrap();
    let shape = ImageShape { h: b.cfg.input_h, w: b.cfg.input_w };
    let images = random_images(21, n, shape);
    // The model's input: the images preprocessed as insightface does, NCHW.
    let mut input = vec![0.0f32; n * shape.len()];
    for (rgb, chw) in images.chunks_exact(shape.len()).zip(input.chunks_exact_mut(shape.len())) {
        preprocess_image(&shape, rgb, false, chw).unwrap();
    }
    let (x, y) = (dir.join(format!("{name}.x.npy")), dir.join(format!("{name}.y.npy")));
    std::fs::write(&x, npy_bytes(&input, &[n, 3, shape.h, shape.w]).unwrap()).unwrap();
    let script = r#"
import sys
import numpy as np, onnxruntime as ort
try:
    import onnx
except ImportError:
    onnx = None
if onnx is None:
    print('onnx checker: skipped, onnx not installed')
    if @REQUIRED@:
        sys.exit('onnx is required with ELASTICFACE_REQUIRE_ONNXRUNTIME=1')
else:
    onnx.checker.check_model(onnx.load(@MODEL@), full_check=True)
    print('onnx checker: ok')
s = ort.InferenceSession(@MODEL@, providers=['CPUExecutionProvider'])
np.save(@Y@, s.run([@OUTPUT@], {@INPUT@: np.load(@X@)})[0].astype(np.float32))
"#
    .replace("@REQUIRED@", if require_checker { "True" } else { "False" })
    .replace("@MODEL@", &format!("{:?}", model.display().to_string()))
    .replace("@OUTPUT@", &format!("{OUTPUT:?}"))
    .replace("@INPUT@", &format!("{INPUT:?}"))
    .replace("@Y@", &format!("{:?}", y.display().to_string()))
    .replace("@X@", &format!("{:?}", x.display().to_string()));
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    eprint!("{name}: {}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "python (exit {:?}): {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    let (dims, theirs) = read_npy(&y);
    assert_eq!(dims, [n, b.cfg.embedding]);
    let ours = cpu_embeddings(b, &images, n);
    let scale = ours.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = ours.iter().zip(&theirs).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{name}: onnxruntime vs CPU reference: max abs error {err:e}, largest |embedding| {scale:e}");
    (err, scale)
}

/// onnxruntime runs the exported models (the PyTorch fixture's weights, and a tiny network with moved batch norm
/// statistics) on random images; its embeddings must equal the CPU reference's within 1e-4 of their largest
/// magnitude. Both compute in f32, but onnxruntime folds each batch norm into the preceding convolution and sums
/// convolutions in another order and width, so results differ by rounding: about `layers * sqrt(K) * 2^-24`
/// relative for a dozen layers of sums of up to K = 288 products, ~1e-5 at worst (measured with onnxruntime 1.32:
/// 1.4e-6 on the fixture, 6.5e-7 on the tiny network).
///
/// Skipped with a message when Python or onnxruntime is missing, unless `ELASTICFACE_REQUIRE_ONNXRUNTIME=1` (set
/// by CI, which installs onnxruntime and onnx): then that fails the test, and onnx's checker must run too.
#[test]
fn onnxruntime_agrees_with_the_cpu_reference() {
    let required = std::env::var("ELASTICFACE_REQUIRE_ONNXRUNTIME").is_ok_and(|v| v == "1");
    if !python_has("onnxruntime, numpy") {
        assert!(!required, "ELASTICFACE_REQUIRE_ONNXRUNTIME=1 but `python3 -c 'import onnxruntime'` fails");
        eprintln!("SKIPPED: python3 with onnxruntime and numpy not found (pip install onnxruntime onnx)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fixture = Backbone::open(&reference_dir().join("formats/pth/iresnet_tiny_init.pth"), None, None).unwrap();
    for (name, b) in [("fixture", fixture), ("tiny", tiny_backbone(9))] {
        let (err, scale) = onnxruntime_error(&b, dir.path(), name, 7, required);
        assert!(err <= 1e-4 * scale, "{name}: max abs error {err} > 1e-4 x {scale}");
    }
}
