//! What a graph takes and answers, as plain data (no ONNX Runtime types), and the feature
//! schema derived from it: which request feature goes into which input tensor, at which column.

use mldeploy_model::{Datatype, Dtype, Feature, Role, TensorSpec};

/// The element types mldeploy reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    Str,
}

impl Elem {
    /// The Open Inference Protocol's datatype of the element.
    pub(crate) fn datatype(self) -> Datatype {
        match self {
            Elem::F32 => Datatype::Fp32,
            Elem::F64 => Datatype::Fp64,
            Elem::I8 => Datatype::Int8,
            Elem::I16 => Datatype::Int16,
            Elem::I32 => Datatype::Int32,
            Elem::I64 => Datatype::Int64,
            Elem::U8 => Datatype::Uint8,
            Elem::U16 => Datatype::Uint16,
            Elem::U32 => Datatype::Uint32,
            Elem::U64 => Datatype::Uint64,
            Elem::Bool => Datatype::Bool,
            Elem::Str => Datatype::Bytes,
        }
    }

    /// ONNX's name of the element type, for messages.
    pub(crate) fn onnx_name(self) -> &'static str {
        match self {
            Elem::F32 => "float",
            Elem::F64 => "double",
            Elem::I8 => "int8",
            Elem::I16 => "int16",
            Elem::I32 => "int32",
            Elem::I64 => "int64",
            Elem::U8 => "uint8",
            Elem::U16 => "uint16",
            Elem::U32 => "uint32",
            Elem::U64 => "uint64",
            Elem::Bool => "bool",
            Elem::Str => "string",
        }
    }

    /// Whether a graph input of this type can be fed from request values.
    fn is_input(self) -> bool {
        matches!(self, Elem::F32 | Elem::F64 | Elem::I32 | Elem::I64 | Elem::Bool | Elem::Str)
    }

    /// The feature dtype of one column of an input of this type.
    fn dtype(self) -> Dtype {
        match self {
            Elem::F32 | Elem::F64 => Dtype::Float,
            Elem::Bool => Dtype::Bool,
            Elem::Str => Dtype::Category,
            _ => Dtype::Int,
        }
    }

    /// Whether a feature declared `dtype` can fill an input of this type.
    fn takes(self, dtype: Dtype) -> bool {
        match self {
            Elem::F32 | Elem::F64 => dtype != Dtype::Category,
            Elem::Str => dtype == Dtype::Category,
            Elem::Bool => dtype == Dtype::Bool,
            _ => matches!(dtype, Dtype::Int | Dtype::Bool),
        }
    }
}

/// The type of one graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum IoType {
    /// A tensor; `-1` marks a dimension that varies.
    Tensor { elem: Elem, shape: Vec<i64> },
    /// A sequence of maps, one per row: scikit-learn's ZipMap of class probabilities.
    ZipMap { key: Elem, value: Elem },
    /// Anything else, described for messages.
    Other(String),
}

impl IoType {
    /// A readable type: `tensor(float)[?, 4]`, `seq(map(int64, float))`.
    pub(crate) fn describe(&self) -> String {
        match self {
            IoType::Tensor { elem, shape } => {
                let dims: Vec<String> =
                    shape.iter().map(|&d| if d < 0 { "?".to_string() } else { d.to_string() }).collect();
                format!("tensor({})[{}]", elem.onnx_name(), dims.join(", "))
            }
            IoType::ZipMap { key, value } => format!("seq(map({}, {}))", key.onnx_name(), value.onnx_name()),
            IoType::Other(what) => what.clone(),
        }
    }
}

/// One graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Io {
    pub name: String,
    pub ty: IoType,
}

/// How one graph input is filled from the validated table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Feed {
    /// The input's name.
    pub name: String,
    pub elem: Elem,
    /// `[N]` (false) or `[N, width]` (true).
    pub matrix: bool,
    /// The fixed batch size, when the graph fixes it.
    pub batch: Option<usize>,
    /// The table columns (feature indexes) of its columns, in order.
    pub columns: Vec<usize>,
}

impl Feed {
    /// The feed of a graph input of `shape` (name, elem, matrix, batch, width) from `columns`.
    fn of(shape: (&str, Elem, bool, Option<usize>, Option<usize>), columns: Vec<usize>) -> Feed {
        let (name, elem, matrix, batch, _) = shape;
        Feed { name: name.to_string(), elem, matrix, batch, columns }
    }
}

/// The request schema of a graph and how it feeds the graph.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inputs {
    pub features: Vec<Feature>,
    pub feeds: Vec<Feed>,
}

fn unsupported_input(io: &Io) -> String {
    format!(
        "graph input {:?} is {}: mldeploy feeds tensors of float, double, int32, int64, bool or string \
         of shape [N], [N, 1] (one feature) or [N, k] (k features)",
        io.name,
        io.ty.describe()
    )
}

fn feature(name: String, dtype: Dtype) -> Feature {
    Feature { name, dtype, values: None, allow_nan: false, missing: false }
}

/// Derive the feature schema from the graph's inputs, with the features a manifest declares.
///
/// Each input `[N]` or `[N, 1]` is one feature named as the input; an input `[N, k]` is `k`
/// features named `<input>_0 .. <input>_{k-1}`. A manifest's features replace those: for
/// one-column inputs they are matched by name (and their order is the request's); otherwise
/// there must be as many as the graph has columns, taken in the graph's order. A single input
/// `[N, ?]` takes its width from the manifest. Declared dtypes must fit the inputs' element
/// types (`category` exactly for string inputs).
pub(crate) fn derive_inputs(graph: &[Io], declared: &[Feature]) -> Result<Inputs, String> {
    if graph.is_empty() {
        return Err("the graph has no inputs".into());
    }
    // (name, elem, matrix, batch, width) per input.
    let mut shapes = Vec::with_capacity(graph.len());
    for io in graph {
        let IoType::Tensor { elem, shape } = &io.ty else { return Err(unsupported_input(io)) };
        if !elem.is_input() {
            return Err(unsupported_input(io));
        }
        let batch = match shape.first() {
            Some(&d) if d > 0 => Some(d as usize),
            Some(_) => None,
            None => return Err(unsupported_input(io)),
        };
        let (matrix, width) = match shape.as_slice() {
            [_] => (false, Some(1)),
            [_, w] if *w > 0 => (true, Some(*w as usize)),
            [_, _] if graph.len() == 1 && !declared.is_empty() => (true, None),
            [_, _] => {
                return Err(format!(
                    "graph input {:?} is {}: its width varies, so name its features in a package manifest \
                     (kind onnx, `features`)",
                    io.name,
                    io.ty.describe()
                ))
            }
            _ => return Err(unsupported_input(io)),
        };
        shapes.push((io.name.as_str(), *elem, matrix, batch, width));
    }

    let one_column_each = shapes.iter().all(|s| s.4 == Some(1));
    let mut feeds = Vec::with_capacity(shapes.len());
    let features: Vec<Feature> = if declared.is_empty() {
        let mut features = Vec::new();
        for &shape in &shapes {
            let (name, elem, _, _, width) = shape;
            let width = width.unwrap_or(1);
            let start = features.len();
            if width == 1 {
                features.push(feature(name.to_string(), elem.dtype()));
            } else {
                features.extend((0..width).map(|j| feature(format!("{name}_{j}"), elem.dtype())));
            }
            feeds.push(Feed::of(shape, (start..start + width).collect()));
        }
        features
    } else if one_column_each && shapes.len() > 1 {
        for &shape in &shapes {
            let name = shape.0;
            let Some(at) = declared.iter().position(|f| f.name == name) else {
                return Err(format!(
                    "graph input {name:?} has no feature of that name in the manifest (one feature per \
                     one-column input, named as the input)"
                ));
            };
            feeds.push(Feed::of(shape, vec![at]));
        }
        if let Some(extra) = declared.iter().find(|f| !shapes.iter().any(|s| s.0 == f.name)) {
            let names: Vec<&str> = shapes.iter().map(|s| s.0).collect();
            return Err(format!(
                "manifest feature {:?} is not an input of the graph (its inputs: {})",
                extra.name,
                names.join(", ")
            ));
        }
        declared.to_vec()
    } else {
        let columns: usize = shapes.iter().map(|s| s.4.unwrap_or(declared.len())).sum();
        if columns != declared.len() {
            let described: Vec<String> =
                graph.iter().map(|io| format!("{} {}", io.name, io.ty.describe())).collect();
            return Err(format!(
                "the manifest lists {} features but the graph's inputs ({}) take {columns} columns",
                declared.len(),
                described.join(", ")
            ));
        }
        let mut start = 0;
        for &shape in &shapes {
            let width = shape.4.unwrap_or(declared.len());
            feeds.push(Feed::of(shape, (start..start + width).collect()));
            start += width;
        }
        declared.to_vec()
    };

    for feed in &feeds {
        for &c in &feed.columns {
            let f = &features[c];
            if !feed.elem.takes(f.dtype) {
                return Err(format!(
                    "feature {:?} is declared {:?} but feeds graph input {:?} of {}",
                    f.name,
                    f.dtype,
                    feed.name,
                    feed.elem.onnx_name()
                ));
            }
            if f.missing && !matches!(feed.elem, Elem::F32 | Elem::F64) {
                return Err(format!(
                    "feature {:?} takes missing values, but graph input {:?} is {}: only float and double \
                     inputs can hold them (as NaN)",
                    f.name,
                    feed.name,
                    feed.elem.onnx_name()
                ));
            }
        }
    }
    Ok(Inputs { features, feeds })
}

/// The role of an output, by the names scikit-learn's converter gives them.
pub(crate) fn role_of(io: &Io) -> Role {
    match (io.name.as_str(), &io.ty) {
        ("label" | "output_label", IoType::Tensor { shape, .. }) if shape.len() == 1 => Role::Labels,
        ("probabilities", IoType::Tensor { shape, .. }) if shape.len() == 2 => Role::Probabilities,
        ("variable", IoType::Tensor { elem, shape })
            if matches!(elem, Elem::F32 | Elem::F64) && matches!(shape.as_slice(), [_] | [_, 1]) =>
        {
            Role::Values
        }
        _ => Role::Other,
    }
}

/// Check the outputs can be read, and describe them for tensor protocols.
pub(crate) fn output_specs(graph: &[Io]) -> Result<Vec<TensorSpec>, String> {
    if graph.is_empty() {
        return Err("the graph has no outputs".into());
    }
    graph
        .iter()
        .map(|io| match &io.ty {
            IoType::Tensor { elem, shape } => {
                Ok(TensorSpec { name: io.name.clone(), datatype: elem.datatype(), shape: shape.clone() })
            }
            IoType::ZipMap { key: Elem::I64 | Elem::Str, value: Elem::F32 | Elem::F64 } => {
                Ok(TensorSpec { name: io.name.clone(), datatype: Datatype::Bytes, shape: vec![-1] })
            }
            _ => Err(format!(
                "graph output {:?} is {}: mldeploy reads tensors and sequences of maps (ZipMap)",
                io.name,
                io.ty.describe()
            )),
        })
        .collect()
}

/// The graph's inputs as the tensors a tensor protocol client may send.
pub(crate) fn input_specs(graph: &[Io]) -> Vec<TensorSpec> {
    graph
        .iter()
        .filter_map(|io| match &io.ty {
            IoType::Tensor { elem, shape } => {
                Some(TensorSpec { name: io.name.clone(), datatype: elem.datatype(), shape: shape.clone() })
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, elem: Elem, shape: &[i64]) -> Io {
        Io { name: name.into(), ty: IoType::Tensor { elem, shape: shape.to_vec() } }
    }

    fn names(inputs: &Inputs) -> Vec<&str> {
        inputs.features.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn one_matrix_input_is_one_feature_per_column() {
        let got = derive_inputs(&[tensor("X", Elem::F32, &[-1, 3])], &[]).unwrap();
        assert_eq!(names(&got), ["X_0", "X_1", "X_2"]);
        assert_eq!(got.feeds.len(), 1);
        assert_eq!((got.feeds[0].matrix, got.feeds[0].batch), (true, None));
        assert_eq!(got.feeds[0].columns, [0, 1, 2]);
        assert!(got.features.iter().all(|f| f.dtype == Dtype::Float));
        // The manifest names them.
        let declared = vec![
            feature("a".into(), Dtype::Float),
            feature("b".into(), Dtype::Int),
            feature("c".into(), Dtype::Bool),
        ];
        let got = derive_inputs(&[tensor("X", Elem::F64, &[-1, 3])], &declared).unwrap();
        assert_eq!(names(&got), ["a", "b", "c"]);
        let e = derive_inputs(&[tensor("X", Elem::F32, &[-1, 4])], &declared).unwrap_err();
        assert!(e.to_string().contains("lists 3 features") && e.to_string().contains("4 columns"), "{e}");
        // A width that varies needs the manifest.
        assert!(derive_inputs(&[tensor("X", Elem::F32, &[-1, -1])], &[]).is_err());
        assert_eq!(
            derive_inputs(&[tensor("X", Elem::F32, &[-1, -1])], &declared).unwrap().feeds[0].columns,
            [0, 1, 2]
        );
    }

    #[test]
    fn one_column_inputs_are_features_named_as_the_inputs() {
        let graph = [
            tensor("age", Elem::F32, &[-1, 1]),
            tensor("n", Elem::I64, &[-1, 1]),
            tensor("city", Elem::Str, &[-1]),
            tensor("flag", Elem::Bool, &[2, 1]),
        ];
        let got = derive_inputs(&graph, &[]).unwrap();
        assert_eq!(names(&got), ["age", "n", "city", "flag"]);
        let dtypes: Vec<Dtype> = got.features.iter().map(|f| f.dtype).collect();
        assert_eq!(dtypes, [Dtype::Float, Dtype::Int, Dtype::Category, Dtype::Bool]);
        assert!(!got.feeds[2].matrix);
        assert_eq!(got.feeds[3].batch, Some(2));
        // A manifest orders them and adds what the graph cannot say; names must match.
        let mut declared = vec![
            feature("city".into(), Dtype::Category),
            feature("flag".into(), Dtype::Bool),
            feature("age".into(), Dtype::Float),
            feature("n".into(), Dtype::Int),
        ];
        let got = derive_inputs(&graph, &declared).unwrap();
        assert_eq!(names(&got), ["city", "flag", "age", "n"]);
        assert_eq!(got.feeds[0].columns, [2]);
        declared[0].name = "town".into();
        let e = derive_inputs(&graph, &declared).unwrap_err().to_string();
        assert!(e.contains("\"city\""), "{e}");
        declared[0] = feature("city".into(), Dtype::Float);
        let e = derive_inputs(&graph, &declared).unwrap_err().to_string();
        assert!(e.contains("declared Float") && e.contains("string"), "{e}");
    }

    #[test]
    fn unsupported_inputs_and_outputs_are_named() {
        let e = derive_inputs(&[tensor("image", Elem::F32, &[-1, 3, 224, 224])], &[]).unwrap_err();
        assert!(e.to_string().contains("\"image\"") && e.to_string().contains("[?, 3, 224, 224]"), "{e}");
        let e = derive_inputs(&[tensor("h", Elem::U8, &[-1])], &[]).unwrap_err();
        assert!(e.to_string().contains("uint8"), "{e}");
        let seq = Io { name: "s".into(), ty: IoType::Other("seq(tensor(float))".into()) };
        assert!(derive_inputs(std::slice::from_ref(&seq), &[]).is_err());
        assert!(output_specs(&[seq]).unwrap_err().to_string().contains("seq(tensor(float))"));
        let zipmap =
            Io { name: "output_probability".into(), ty: IoType::ZipMap { key: Elem::I64, value: Elem::F32 } };
        let specs = output_specs(&[zipmap.clone(), tensor("output_label", Elem::I64, &[-1])]).unwrap();
        assert_eq!(specs[0].datatype, Datatype::Bytes);
        assert_eq!(role_of(&zipmap), Role::Other);
        assert_eq!(role_of(&tensor("output_label", Elem::I64, &[-1])), Role::Labels);
        assert_eq!(role_of(&tensor("probabilities", Elem::F32, &[-1, 3])), Role::Probabilities);
        assert_eq!(role_of(&tensor("variable", Elem::F32, &[-1, 1])), Role::Values);
        assert_eq!(role_of(&tensor("logits", Elem::F32, &[-1, 3])), Role::Other);
    }
}
