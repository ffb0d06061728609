//! ONNX export of a trained backbone, as insightface publishes its recognition models, written without Python.
//!
//! The model takes `data`, `float32 (N, 3, H, W)` with a dynamic batch `N`, holding RGB images already scaled
//! as `(x / 255 - 0.5) / 0.5`, and returns `embedding`, `float32 (N, E)`: the `features` batch norm's output,
//! before any normalisation (insightface's convention; L2-normalise it to compare faces). The graph follows
//! the network layer by layer with opset 13 operators: `Conv` (no bias), `BatchNormalization` (running
//! statistics), `PRelu` (slope `(C, 1, 1)`), `Add`, `Flatten`, `Gemm`; batch norms are not folded into the
//! convolutions, so each initializer keeps its insightface state-dict name and value (PReLU slopes reshaped),
//! and [`read_state_dict`] reads the weights back exactly.
//!
//! The protobuf messages ([`proto`]) are the subset of `onnx.proto` (proto2, package `onnx`) the model uses,
//! with the field numbers and wire types of the schema; `prost` encodes them. [`check_model`] checks a model's
//! structure (types present, every input defined before use, initializer sizes, known operators) before it is
//! written.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use elasticface_core::model::BlockSpec;
use prost::Message;

use crate::checkpoint::Backbone;
use crate::tensorfile::TensorFile;

/// The ONNX IR version written (IR 7 is the one that introduced opset 13; runtimes read it and later ones).
pub const IR_VERSION: i64 = 7;
/// The operator set written.
pub const OPSET: i64 = 13;
/// The graph input.
pub const INPUT: &str = "data";
/// The graph output.
pub const OUTPUT: &str = "embedding";
/// The metadata key holding the backbone manifest (network, batch norm settings).
pub const MANIFEST_KEY: &str = "elasticface";

/// The subset of `onnx.proto` used here. Field numbers and types are the schema's; every optional scalar is
/// `Option` so that zero values are written (proto2 presence), and repeated scalars are unpacked as proto2 has them.
#[allow(missing_docs)]
pub mod proto {
    /// `onnx.ModelProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, optional, tag = "1")]
        pub ir_version: Option<i64>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
        #[prost(string, optional, tag = "2")]
        pub producer_name: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub producer_version: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub domain: Option<String>,
        #[prost(int64, optional, tag = "5")]
        pub model_version: Option<i64>,
        #[prost(string, optional, tag = "6")]
        pub doc_string: Option<String>,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "14")]
        pub metadata_props: Vec<StringStringEntryProto>,
    }

    /// `onnx.OperatorSetIdProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, optional, tag = "1")]
        pub domain: Option<String>,
        #[prost(int64, optional, tag = "2")]
        pub version: Option<i64>,
    }

    /// `onnx.StringStringEntryProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringStringEntryProto {
        #[prost(string, optional, tag = "1")]
        pub key: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }

    /// `onnx.GraphProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        #[prost(string, optional, tag = "10")]
        pub doc_string: Option<String>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "13")]
        pub value_info: Vec<ValueInfoProto>,
    }

    /// `onnx.NodeProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub op_type: Option<String>,
        #[prost(string, optional, tag = "7")]
        pub domain: Option<String>,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
        #[prost(string, optional, tag = "6")]
        pub doc_string: Option<String>,
    }

    /// `onnx.AttributeProto.AttributeType` (the values used and their neighbours).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum AttributeType {
        Undefined = 0,
        Float = 1,
        Int = 2,
        String = 3,
        Tensor = 4,
        Graph = 5,
        Floats = 6,
        Ints = 7,
        Strings = 8,
    }

    /// `onnx.AttributeProto` (scalar and list values; no tensors or graphs).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(enumeration = "AttributeType", optional, tag = "20")]
        pub r#type: Option<i32>,
        #[prost(float, optional, tag = "2")]
        pub f: Option<f32>,
        #[prost(int64, optional, tag = "3")]
        pub i: Option<i64>,
        #[prost(bytes = "vec", optional, tag = "4")]
        pub s: Option<Vec<u8>>,
        #[prost(float, repeated, packed = "false", tag = "7")]
        pub floats: Vec<f32>,
        #[prost(int64, repeated, packed = "false", tag = "8")]
        pub ints: Vec<i64>,
    }

    /// `onnx.TensorProto.DataType.FLOAT`.
    pub const FLOAT: i32 = 1;

    /// `onnx.TensorProto` (dense, raw little-endian data).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, packed = "false", tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, optional, tag = "2")]
        pub data_type: Option<i32>,
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(string, optional, tag = "8")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "9")]
        pub raw_data: Option<Vec<u8>>,
        #[prost(string, optional, tag = "12")]
        pub doc_string: Option<String>,
    }

    /// `onnx.ValueInfoProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
        #[prost(string, optional, tag = "3")]
        pub doc_string: Option<String>,
    }

    /// `onnx.TypeProto` (tensor types only).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(oneof = "type_proto::Value", tags = "1")]
        pub value: Option<type_proto::Value>,
        #[prost(string, optional, tag = "6")]
        pub denotation: Option<String>,
    }

    /// Nested messages of `onnx.TypeProto`.
    pub mod type_proto {
        /// `onnx.TypeProto.value`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(message, tag = "1")]
            TensorType(Tensor),
        }

        /// `onnx.TypeProto.Tensor`.
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Tensor {
            #[prost(int32, optional, tag = "1")]
            pub elem_type: Option<i32>,
            #[prost(message, optional, tag = "2")]
            pub shape: Option<super::TensorShapeProto>,
        }
    }

    /// `onnx.TensorShapeProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<tensor_shape_proto::Dimension>,
    }

    /// Nested messages of `onnx.TensorShapeProto`.
    pub mod tensor_shape_proto {
        /// `onnx.TensorShapeProto.Dimension`.
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Dimension {
            #[prost(oneof = "dimension::Value", tags = "1, 2")]
            pub value: Option<dimension::Value>,
            #[prost(string, optional, tag = "3")]
            pub denotation: Option<String>,
        }

        /// Nested types of `onnx.TensorShapeProto.Dimension`.
        pub mod dimension {
            /// `onnx.TensorShapeProto.Dimension.value`.
            #[derive(Clone, PartialEq, prost::Oneof)]
            pub enum Value {
                #[prost(int64, tag = "1")]
                DimValue(i64),
                #[prost(string, tag = "2")]
                DimParam(String),
            }
        }
    }
}

use proto::tensor_shape_proto::dimension::Value as Dim;
use proto::*;

/// One graph dimension: a size, or a named dynamic one.
#[derive(Clone, Debug)]
enum Size {
    Fixed(usize),
    Dynamic(&'static str),
}

fn value_info(name: &str, dims: &[Size]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Size::Fixed(n) => Dim::DimValue(*n as i64),
                Size::Dynamic(p) => Dim::DimParam(p.to_string()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(FLOAT),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        doc_string: None,
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

/// Builds the graph node by node.
struct GraphBuilder<'a> {
    backbone: &'a Backbone,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl GraphBuilder<'_> {
    /// Adds the state tensor `name` as an initializer of shape `dims` (its elements in state order).
    fn weight(&mut self, name: &str, dims: &[usize]) -> Result<String> {
        let t = self.backbone.cfg.find(name).ok_or_else(|| anyhow!("the network has no tensor `{name}`"))?;
        ensure!(dims.iter().product::<usize>() == t.len, "`{name}`: {dims:?} does not hold {} values", t.len);
        let raw = self.backbone.state[t.range()].iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(FLOAT),
            name: Some(name.into()),
            raw_data: Some(raw),
            ..Default::default()
        });
        Ok(name.to_string())
    }

    fn node(&mut self, op: &str, name: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>) -> String {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![name.to_string()],
            name: Some(name.to_string()),
            op_type: Some(op.to_string()),
            attribute,
            ..Default::default()
        });
        name.to_string()
    }

    /// `Conv` without bias; `k x k` kernel, padding `k / 2`.
    fn conv(&mut self, module: &str, x: String, c_in: usize, c_out: usize, k: usize, stride: usize) -> Result<String> {
        let w = self.weight(&format!("{module}.weight"), &[c_out, c_in, k, k])?;
        let (k, s, p) = (k as i64, stride as i64, (k / 2) as i64);
        let attrs = vec![
            ints("kernel_shape", &[k, k]),
            ints("strides", &[s, s]),
            ints("pads", &[p, p, p, p]),
            ints("dilations", &[1, 1]),
            int("group", 1),
        ];
        Ok(self.node("Conv", module, vec![x, w], attrs))
    }

    /// `BatchNormalization` with the running statistics (inference).
    fn bn(&mut self, module: &str, x: String, c: usize) -> Result<String> {
        let inputs = ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .map(|f| self.weight(&format!("{module}.{f}"), &[c]))
            .collect::<Result<Vec<_>>>()?;
        let eps = self.backbone.bn.eps;
        Ok(self.node("BatchNormalization", module, [vec![x], inputs].concat(), vec![float("epsilon", eps)]))
    }

    /// `PRelu` with the slope shaped `(C, 1, 1)` to broadcast over `(N, C, H, W)`.
    fn prelu(&mut self, module: &str, x: String, c: usize) -> Result<String> {
        let slope = self.weight(&format!("{module}.weight"), &[c, 1, 1])?;
        Ok(self.node("PRelu", module, vec![x, slope], vec![]))
    }

    /// One `IBasicBlock`.
    fn block(&mut self, b: &BlockSpec, x: String) -> Result<String> {
        let m = |name: &str| format!("layer{}.{}.{name}", b.stage + 1, b.index);
        let a1 = self.bn(&m("bn1"), x.clone(), b.c_in)?;
        let c1 = self.conv(&m("conv1"), a1, b.c_in, b.c_out, 3, 1)?;
        let a2 = self.bn(&m("bn2"), c1, b.c_out)?;
        let p = self.prelu(&m("prelu"), a2, b.c_out)?;
        let c2 = self.conv(&m("conv2"), p, b.c_out, b.c_out, 3, b.stride)?;
        let a3 = self.bn(&m("bn3"), c2, b.c_out)?;
        let shortcut = if b.downsample {
            let d = self.conv(&m("downsample.0"), x, b.c_in, b.c_out, 1, b.stride)?;
            self.bn(&m("downsample.1"), d, b.c_out)?
        } else {
            x
        };
        Ok(self.node("Add", &m("add"), vec![a3, shortcut], vec![]))
    }
}

/// The ONNX model of `backbone` (see the [module documentation](self)); `source` is recorded in its manifest.
pub fn export(backbone: &Backbone, source: serde_json::Value) -> Result<ModelProto> {
    let cfg = &backbone.cfg;
    cfg.validate().map_err(|e| anyhow!("network: {e}"))?;
    let mut g = GraphBuilder { backbone, nodes: Vec::new(), initializers: Vec::new() };
    let c0 = cfg.widths[0];
    let x = g.conv("conv1", INPUT.to_string(), 3, c0, 3, 1)?;
    let x = g.bn("bn1", x, c0)?;
    let mut x = g.prelu("prelu", x, c0)?;
    for b in cfg.blocks() {
        x = g.block(&b, x)?;
    }
    let x = g.bn("bn2", x, cfg.widths[3])?;
    let x = g.node("Flatten", "flatten", vec![x], vec![int("axis", 1)]);
    let w = g.weight("fc.weight", &[cfg.embedding, cfg.fc_inputs()])?;
    let bias = g.weight("fc.bias", &[cfg.embedding])?;
    let attrs = vec![float("alpha", 1.0), float("beta", 1.0), int("transA", 0), int("transB", 1)];
    let x = g.node("Gemm", "fc", vec![x, w, bias], attrs);
    let features = g.bn("features", x, cfg.embedding)?;
    // The last node writes the graph output directly.
    let last = g.nodes.last_mut().expect("features node");
    last.output = vec![OUTPUT.to_string()];
    debug_assert_eq!(features, "features");

    let manifest = backbone.to_file(source)?.meta;
    let graph = GraphProto {
        node: g.nodes,
        name: Some("iresnet".into()),
        initializer: g.initializers,
        doc_string: Some(format!(
            "iResNet {:?} x {:?}, {}x{} input, {}-d embedding. Input `data`: RGB, (x/255 - 0.5)/0.5, NCHW. Output \
             `embedding`: before L2 normalisation.",
            cfg.layers, cfg.widths, cfg.input_h, cfg.input_w, cfg.embedding
        )),
        input: vec![value_info(
            INPUT,
            &[Size::Dynamic("N"), Size::Fixed(3), Size::Fixed(cfg.input_h), Size::Fixed(cfg.input_w)],
        )],
        output: vec![value_info(OUTPUT, &[Size::Dynamic("N"), Size::Fixed(cfg.embedding)])],
        value_info: Vec::new(),
    };
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("elasticface".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: Some(1),
        doc_string: Some("ElasticFace face-recognition backbone (insightface conventions)".into()),
        graph: Some(graph),
        metadata_props: vec![StringStringEntryProto {
            key: Some(MANIFEST_KEY.into()),
            value: Some(manifest.to_string()),
        }],
    };
    check_model(&model)?;
    Ok(model)
}

/// Exports `backbone` to `path` (written atomically: a temporary file, then renamed).
pub fn export_to(backbone: &Backbone, source: serde_json::Value, path: &Path) -> Result<usize> {
    let bytes = export(backbone, source)?.encode_to_vec();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().map_or("model".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(bytes.len())
}

/// The operators [`export`] writes and [`check_model`] accepts, with their input counts.
const OPERATORS: [(&str, usize); 6] =
    [("Conv", 2), ("BatchNormalization", 5), ("PRelu", 2), ("Add", 2), ("Flatten", 1), ("Gemm", 3)];

/// Checks the structure of a model against the ONNX IR rules this exporter relies on: IR version and the default
/// opset present; a named graph; typed inputs and outputs; initializers that are named, `FLOAT`, with exactly
/// `4 * prod(dims)` bytes of data; nodes of known operators with their input count, typed attributes, every input
/// defined earlier (graph input, initializer or an earlier node's output: topological order), every output name
/// new; and every graph output produced.
pub fn check_model(m: &ModelProto) -> Result<()> {
    ensure!(m.ir_version.is_some_and(|v| v >= 3), "ir_version missing or below 3");
    ensure!(
        m.opset_import.iter().any(|o| o.domain.as_deref().unwrap_or("").is_empty() && o.version.is_some()),
        "no opset_import for the default domain"
    );
    let g = m.graph.as_ref().ok_or_else(|| anyhow!("no graph"))?;
    ensure!(g.name.as_deref().is_some_and(|n| !n.is_empty()), "the graph has no name");
    let mut defined: HashSet<&str> = HashSet::new();
    for v in g.input.iter().chain(&g.output) {
        let name =
            v.name.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| anyhow!("an unnamed graph input/output"))?;
        let Some(TypeProto { value: Some(type_proto::Value::TensorType(t)), .. }) = &v.r#type else {
            bail!("graph input/output `{name}` has no tensor type");
        };
        ensure!(t.elem_type == Some(FLOAT), "`{name}` is not FLOAT");
        ensure!(
            t.shape.as_ref().is_some_and(|s| s.dim.iter().all(|d| d.value.is_some())),
            "`{name}`: incomplete shape"
        );
    }
    for v in &g.input {
        defined.insert(v.name.as_deref().expect("checked"));
    }
    for t in &g.initializer {
        let name = t.name.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| anyhow!("an unnamed initializer"))?;
        ensure!(t.data_type == Some(FLOAT), "initializer `{name}` is not FLOAT");
        ensure!(t.dims.iter().all(|&d| d >= 0), "initializer `{name}` has a negative dimension");
        let need = t.dims.iter().try_fold(4i64, |a, &d| a.checked_mul(d));
        let need = need.ok_or_else(|| anyhow!("initializer `{name}`: the dims {:?} overflow", t.dims))?;
        let bytes = t.raw_data.as_ref().map_or(4 * t.float_data.len(), Vec::len);
        ensure!(bytes as i64 == need, "initializer `{name}` has {bytes} bytes for dims {:?}", t.dims);
        ensure!(defined.insert(name), "`{name}` is defined twice");
    }
    for n in &g.node {
        let op = n.op_type.as_deref().unwrap_or("");
        let name = n.name.as_deref().unwrap_or(op);
        let inputs = OPERATORS
            .iter()
            .find(|(o, _)| *o == op)
            .map(|(_, k)| *k)
            .ok_or_else(|| anyhow!("node `{name}`: operator `{op}` is not one this exporter writes"))?;
        ensure!(n.input.len() == inputs, "node `{name}` ({op}) has {} inputs, not {inputs}", n.input.len());
        for i in &n.input {
            ensure!(defined.contains(i.as_str()), "node `{name}` reads `{i}` before it is defined");
        }
        for a in &n.attribute {
            let ok = match AttributeType::try_from(a.r#type.unwrap_or(0)) {
                Ok(AttributeType::Int) => a.i.is_some(),
                Ok(AttributeType::Float) => a.f.is_some(),
                Ok(AttributeType::Ints) => !a.ints.is_empty(),
                Ok(AttributeType::Floats) => !a.floats.is_empty(),
                Ok(AttributeType::String) => a.s.is_some(),
                _ => false,
            };
            ensure!(ok && a.name.is_some(), "node `{name}`: attribute {:?} has no typed value", a.name);
        }
        ensure!(!n.output.is_empty(), "node `{name}` has no output");
        for o in &n.output {
            ensure!(defined.insert(o.as_str()), "node `{name}` redefines `{o}`");
        }
    }
    for v in &g.output {
        let name = v.name.as_deref().expect("checked");
        ensure!(defined.contains(name), "graph output `{name}` is never produced");
    }
    Ok(())
}

/// The backbone state dict of an ONNX file written by [`export`]: its initializers under their state-dict names
/// (PReLU slopes back to `(C)`), with the manifest from its metadata. Other ONNX files (e.g. from
/// `torch.onnx.export` with batch norms folded) do not hold insightface's tensors and are refused.
pub fn read_state_dict(name: &str, bytes: &[u8]) -> Result<TensorFile> {
    let m = ModelProto::decode(bytes).with_context(|| format!("{name}: not an ONNX model"))?;
    check_model(&m).with_context(|| format!("{name}: not an ONNX model written by elasticface export"))?;
    let manifest = m
        .metadata_props
        .iter()
        .find(|p| p.key.as_deref() == Some(MANIFEST_KEY))
        .and_then(|p| p.value.as_deref())
        .ok_or_else(|| anyhow!("{name}: no `{MANIFEST_KEY}` metadata: not written by elasticface export"))?;
    let meta: serde_json::Value =
        serde_json::from_str(manifest).with_context(|| format!("{name}: the `{MANIFEST_KEY}` metadata is not JSON"))?;
    let mut f = TensorFile::new(name, meta);
    for t in &m.graph.as_ref().expect("checked").initializer {
        let key = t.name.as_deref().expect("checked");
        let raw = t.raw_data.as_deref().ok_or_else(|| anyhow!("{name}: `{key}` has no raw data"))?;
        let values: Vec<f32> =
            raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        let mut dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        if key.ends_with("prelu.weight") {
            dims.truncate(1);
        }
        f.insert_f32(key, &dims, values)?;
    }
    Ok(f)
}
