//! ONNX models on ONNX Runtime (the `ort` crate, which loads the runtime library at run time;
//! see [`runtime`] for where the library comes from).
//!
//! Two ways in: a `.onnx` file served as it is (name from the file, version from the graph's
//! `version` metadata property, else its `model_version`; features, inputs and outputs from
//! the graph), or a package whose manifest has kind `onnx` and names the file in `model_file`
//! (default `model.onnx`), which adds what a graph cannot say: the features' names, types and
//! allowed values, the class labels (for feedback figures) and a sample request.
//!
//! Requests are validated against the feature schema derived from the graph (`graph`): each
//! one-column input (`[N]`, `[N, 1]`) is one feature named as the input, each `[N, k]` input
//! `k` features. The validated table is cast to each input's element type and shaped as the
//! input; a value the type cannot hold is a 422 naming the input. Every output is answered
//! by its name (tensors as they come out, a ZipMap as one JSON object per row), and
//! scikit-learn's converter's `label`/`output_label`, `probabilities` and `variable` are also
//! `y_predicted` and `probabilities`.
//!
//! Threads: sessions use `LoadContext.engine_threads` intra-op threads (1 by default: no
//! pool), one inter-op thread, sequential execution. `Session::run` needs `&mut`: a model holds
//! one session behind a mutex (see `Sessions` for why not one per serving thread).

mod graph;
mod runtime;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use mldeploy_model::{
    ClassLabels, Column, Datatype, Dtype, FeatureValues, FeedbackInput, LoadContext, Model, ModelError,
    ModelInfo, Output, PredictInput, Response, Role, RowError, ScrapedGauge, Table, Target, Tensor, Values,
};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynMapValueType, DynValue, TensorElementType, ValueType};
use serde_json::{json, Map, Value};

use self::graph::{Elem, Feed, Io, IoType};
use crate::engine::Prediction;
use crate::error::Error;
use crate::feedback::{fingerprint, FeedbackStore, Layout};
use crate::files::PackageFiles;
use crate::manifest::{distinct_labels, Manifest, PACKAGE_FORMAT};
use crate::model::{take_feedback, Truth};
use crate::preprocess::Categories;

/// The manifest kind of an ONNX package.
pub const KIND: &str = crate::engine::ONNX_KIND;
/// The graph's file in a package when the manifest names none.
pub const DEFAULT_FILE: &str = "model.onnx";

/// The graph: on disk (external weights files beside it are found), or in memory.
enum Graph<'a> {
    File(PathBuf),
    Bytes(&'a [u8]),
}

/// Load an ONNX file as a model, named after the file.
pub fn load_file(path: &Path, ctx: &LoadContext) -> Result<OnnxModel, Error> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let file = path.display().to_string();
    let about = About { name, version: None, manifest: None, file };
    OnnxModel::build(Graph::File(path.to_path_buf()), about, ctx)
}

/// Check the manifest fields an ONNX package may use.
fn check_manifest(m: &Manifest) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Manifest(m));
    if m.format != PACKAGE_FORMAT {
        return bad(format!(
            "unsupported package format {:?} (this mldeploy reads {PACKAGE_FORMAT:?})",
            m.format
        ));
    }
    if !m.preprocessing.is_empty() || m.layers.is_some() || m.activation.is_some() {
        return bad(
            "kind onnx takes no `preprocessing`, `layers` or `activation`: the graph computes everything"
                .into(),
        );
    }
    let mut names = std::collections::HashSet::new();
    for f in &m.features {
        if !names.insert(f.name.as_str()) {
            return bad(format!("feature {:?} is listed twice", f.name));
        }
    }
    if let Some(classes) = &m.output.classes {
        if classes.len() < 2 {
            return bad(format!(
                "output.classes has {} class(es); a classifier needs 2 or more",
                classes.len()
            ));
        }
        distinct_labels("output.classes", classes)?;
    }
    Ok(())
}

/// Load the graph of an ONNX package.
pub(crate) fn load_package(
    manifest: &Manifest,
    files: &dyn PackageFiles,
    default_name: &str,
    ctx: &LoadContext,
) -> Result<OnnxModel, Error> {
    check_manifest(manifest)?;
    let file = manifest.model_file.as_deref().unwrap_or(DEFAULT_FILE);
    let name = if manifest.name.trim().is_empty() { default_name.to_string() } else { manifest.name.clone() };
    let version = Some(manifest.version.clone()).filter(|v| !v.trim().is_empty());
    let about = About { name, version, manifest: Some(manifest), file: file.to_string() };
    match files.path(file) {
        Some(path) => {
            if !path.is_file() {
                // The same message as for any other missing package file.
                files.read(file)?;
            }
            OnnxModel::build(Graph::File(path), about, ctx)
        }
        None => {
            let bytes = files.read(file)?;
            OnnxModel::build(Graph::Bytes(&bytes), about, ctx)
        }
    }
}

/// What the caller knows of the model besides its graph.
struct About<'a> {
    name: String,
    version: Option<String>,
    manifest: Option<&'a Manifest>,
    /// The graph's file, for messages.
    file: String,
}

/// The model's session, behind a mutex: `Session::run` takes `&mut self`, so the calls of one
/// worker's serving threads to one model take turns for the run itself (decoding, validation,
/// casting and rendering run outside the lock). A session per serving thread would hold the
/// graph's weights and ONNX Runtime's arenas once per thread, and measured no faster at 2
/// serving threads (docs/benchmarks.md, "ONNX and the candle kind").
struct Sessions {
    session: Mutex<Session>,
}

impl Sessions {
    fn with<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        // A panic during a run (caught by the server) leaves nothing half-done on our side.
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut session)
    }
}

/// The class labels of a classifier whose graph has a label output: feedback figures.
struct Feedback {
    classes: ClassLabels,
    lookup: Categories,
    /// The label output's index among the graph's outputs.
    label_output: usize,
    store: FeedbackStore,
}

/// An ONNX graph served as a model.
pub struct OnnxModel {
    info: ModelInfo,
    sessions: Sessions,
    feeds: Vec<Feed>,
    /// The graph's outputs, in its order, with their roles.
    outputs: Vec<(Io, Role)>,
    feedback: Option<Feedback>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .finish()
    }
}

fn elem_of(t: TensorElementType) -> Option<Elem> {
    Some(match t {
        TensorElementType::Float32 => Elem::F32,
        TensorElementType::Float64 => Elem::F64,
        TensorElementType::Int8 => Elem::I8,
        TensorElementType::Int16 => Elem::I16,
        TensorElementType::Int32 => Elem::I32,
        TensorElementType::Int64 => Elem::I64,
        TensorElementType::Uint8 => Elem::U8,
        TensorElementType::Uint16 => Elem::U16,
        TensorElementType::Uint32 => Elem::U32,
        TensorElementType::Uint64 => Elem::U64,
        TensorElementType::Bool => Elem::Bool,
        TensorElementType::String => Elem::Str,
        _ => return None,
    })
}

fn io_type(t: &ValueType) -> IoType {
    match t {
        ValueType::Tensor { ty, shape, .. } => match elem_of(*ty) {
            Some(elem) => IoType::Tensor { elem, shape: shape.to_vec() },
            None => IoType::Other(format!("a tensor of {ty:?}")),
        },
        ValueType::Sequence(inner) => match inner.as_ref() {
            ValueType::Map { key, value } => match (elem_of(*key), elem_of(*value)) {
                (Some(key), Some(value)) => IoType::ZipMap { key, value },
                _ => IoType::Other(format!("a sequence of maps of {key:?} to {value:?}")),
            },
            _ => IoType::Other(format!("a sequence ({t})")),
        },
        other => IoType::Other(other.to_string()),
    }
}

/// The model's version: the graph's `version` metadata property, else its `model_version`.
fn graph_version(session: &Session) -> Result<String, ort::Error> {
    let metadata = session.metadata()?;
    if let Some(v) = metadata.custom("version").filter(|v| !v.trim().is_empty()) {
        return Ok(v);
    }
    Ok(metadata.version().unwrap_or(0).to_string())
}

fn producer(session: &Session) -> Option<String> {
    session.metadata().ok().and_then(|m| m.producer()).filter(|p| !p.is_empty())
}

/// A one-row sample request of typical values.
fn default_sample(features: &[mldeploy_model::Feature]) -> Value {
    let row: Vec<Value> = features
        .iter()
        .map(|f| match (&f.values, f.dtype) {
            (Some(FeatureValues::Categories(c)), _) if !c.is_empty() => c[0].clone(),
            (
                Some(FeatureValues::Range { min: Some(m), .. } | FeatureValues::Range { max: Some(m), .. }),
                _,
            ) => {
                json!(m)
            }
            (_, Dtype::Category) => json!(""),
            (_, Dtype::Bool) => json!(false),
            (_, Dtype::Int) => json!(0),
            (_, Dtype::Float) => json!(0.0),
        })
        .collect();
    let names: Vec<&str> = features.iter().map(|f| f.name.as_str()).collect();
    json!({ "data": [row], "names": names })
}

impl OnnxModel {
    fn build(graph: Graph<'_>, about: About<'_>, ctx: &LoadContext) -> Result<Self, Error> {
        let runtime = runtime::runtime(ctx.engine_settings.get(runtime::SETTING).map(String::as_str))?;
        let file = about.file.clone();
        let model_error = |message: String| Error::Model { file: file.clone(), message };
        // ort describes a graph's inputs and outputs with `unreachable!` for types it does not
        // know (opaque values): a panic there is a graph mldeploy cannot serve, not a crash.
        let built = catch_unwind(AssertUnwindSafe(|| -> ort::Result<Session> {
            let mut builder = Session::builder(runtime)?
                .with_intra_threads(ctx.engine_threads.max(1))?
                .with_inter_threads(1)?
                .with_parallel_execution(false)?
                .with_intra_op_spinning(false)?
                .with_optimization_level(GraphOptimizationLevel::All)?;
            match &graph {
                Graph::File(path) => builder.commit_from_file(path),
                Graph::Bytes(bytes) => builder.commit_from_memory(bytes),
            }
        }));
        let session = match built {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => return Err(model_error(format!("ONNX Runtime cannot load the graph: {e}"))),
            Err(_) => {
                return Err(model_error(
                    "the graph has an input or output of a type ONNX Runtime's binding cannot describe"
                        .into(),
                ))
            }
        };
        let ios = |list: &[ort::value::Outlet]| -> Vec<Io> {
            list.iter().map(|o| Io { name: o.name().to_string(), ty: io_type(o.dtype()) }).collect()
        };
        let (graph_inputs, graph_outputs) = (ios(session.inputs()), ios(session.outputs()));
        let manifest = about.manifest;
        let declared = manifest.map(|m| m.features.as_slice()).unwrap_or_default();
        let inputs = graph::derive_inputs(&graph_inputs, declared).map_err(model_error)?;
        let output_tensors = graph::output_specs(&graph_outputs).map_err(model_error)?;
        let outputs: Vec<(Io, Role)> = graph_outputs
            .into_iter()
            .map(|io| {
                let role = graph::role_of(&io);
                (io, role)
            })
            .collect();

        let version = match about.version {
            Some(v) => v,
            None => graph_version(&session)
                .map_err(|e| model_error(format!("cannot read the graph's metadata: {e}")))?,
        };
        let classes = manifest.and_then(|m| m.output.classes.clone());
        if let (Some(classes), Some((io, _))) =
            (&classes, outputs.iter().find(|(_, r)| *r == Role::Probabilities))
        {
            if let IoType::Tensor { shape, .. } = &io.ty {
                if shape[1] > 0 && shape[1] as usize != classes.len() {
                    return Err(Error::Mismatch(format!(
                        "output.classes lists {} classes but graph output {:?} has {} columns",
                        classes.len(),
                        io.name,
                        shape[1]
                    )));
                }
            }
        }
        let mut described = json!({
            "graph_outputs": output_tensors,
        });
        if let Some(p) = producer(&session) {
            described["producer"] = json!(p);
        }
        if let Some(c) = &classes {
            described["classes"] = json!(c);
        }
        if let Some(t) = manifest.and_then(|m| m.output.target.as_ref()) {
            described["target"] = json!(t);
        }
        let sample = match manifest.map(|m| &m.sample) {
            Some(s) if !s.is_null() => s.clone(),
            _ => default_sample(&inputs.features),
        };
        let info = ModelInfo {
            name: about.name,
            version,
            kind: KIND.into(),
            features: inputs.features,
            outputs: described.clone(),
            sample,
            api_prefix: manifest.and_then(|m| m.api_prefix.clone()),
            keep_api_prefix: false,
            input_tensors: graph::input_specs(&graph_inputs),
            output_tensors,
        };
        let feedback = match (classes, outputs.iter().position(|(_, r)| *r == Role::Labels)) {
            (Some(classes), Some(label_output)) => {
                let print = fingerprint(&[
                    "mldeploy-feedback/1",
                    &info.name,
                    &info.version,
                    KIND,
                    &described.to_string(),
                ]);
                let store =
                    FeedbackStore::attach(ctx.shared, print, Layout::Classifier { classes: classes.len() })?;
                Some(Feedback {
                    lookup: Categories::new(&classes),
                    classes: ClassLabels::new(classes),
                    label_output,
                    store,
                })
            }
            _ => None,
        };
        let sessions = Sessions { session: Mutex::new(session) };
        Ok(OnnxModel { info, sessions, feeds: inputs.feeds, outputs, feedback })
    }

    /// Run the graph on a validated table; every output in the graph's order.
    pub fn predict_outputs(&self, table: &Table) -> Result<Vec<Output>, ModelError> {
        if table.columns.len() != self.info.features.len() {
            return Err(ModelError::Internal(format!(
                "the table has {} columns, the model has {} features",
                table.columns.len(),
                self.info.features.len()
            )));
        }
        let mut values: Vec<(&str, DynValue)> = Vec::with_capacity(self.feeds.len());
        for feed in &self.feeds {
            values.push((feed.name.as_str(), feed_value(feed, table)?));
        }
        let internal = |what: &str, e: ort::Error| ModelError::Internal(format!("{what}: {e}"));
        self.sessions.with(|session| {
            let results =
                session.run(values).map_err(|e| internal("ONNX Runtime failed to run the graph", e))?;
            let mut outputs = Vec::with_capacity(self.outputs.len());
            for (io, role) in &self.outputs {
                let value = results
                    .get(&io.name)
                    .ok_or_else(|| ModelError::Internal(format!("the run gave no output {:?}", io.name)))?;
                let tensor =
                    read_output(io, value).map_err(|e| internal(&format!("output {:?}", io.name), e))?;
                outputs.push(Output { name: io.name.clone().into(), role: *role, tensor });
            }
            Ok(outputs)
        })
    }
}

fn invalid(input: &str, row: Option<usize>, message: String) -> ModelError {
    ModelError::Invalid {
        message: message.clone(),
        errors: vec![RowError {
            row,
            feature: Some(input.to_string()),
            reason: "wrong_type".into(),
            message,
        }],
    }
}

/// The values of one input, from its columns of the table, cast to its element type.
fn feed_value(feed: &Feed, table: &Table) -> Result<DynValue, ModelError> {
    let n = table.n_rows;
    if let Some(batch) = feed.batch.filter(|&b| b != n) {
        let message = format!("input {:?} takes exactly {batch} rows per call, not {n}", feed.name);
        return Err(ModelError::Invalid {
            message: message.clone(),
            errors: vec![RowError {
                row: None,
                feature: Some(feed.name.clone()),
                reason: "row_length".into(),
                message,
            }],
        });
    }
    let width = feed.columns.len();
    let shape: Vec<i64> = if feed.matrix { vec![n as i64, width as i64] } else { vec![n as i64] };
    let source = |row: usize| table.source_row(row);
    let numbers = || -> Result<Vec<f64>, ModelError> {
        let mut out = vec![0.0; n * width];
        for (j, &c) in feed.columns.iter().enumerate() {
            let Column::Numeric(values) = &table.columns[c] else {
                return Err(ModelError::Internal(format!("table column {c} is not numeric")));
            };
            for (row, x) in values.iter().enumerate() {
                out[row * width + j] = *x;
            }
        }
        Ok(out)
    };
    // Whole numbers in `lo .. hi` (hi excluded).
    let ints = |lo: f64, hi: f64| -> Result<Vec<i64>, ModelError> {
        let values = numbers()?;
        let mut out = Vec::with_capacity(values.len());
        for (i, x) in values.into_iter().enumerate() {
            if !(x.fract() == 0.0 && x >= lo && x < hi) {
                return Err(invalid(
                    &feed.name,
                    Some(source(i / width)),
                    format!(
                        "row {}: {x} does not fit input {:?} of {}",
                        source(i / width),
                        feed.name,
                        feed.elem.onnx_name()
                    ),
                ));
            }
            out.push(x as i64);
        }
        Ok(out)
    };
    let tensor = match feed.elem {
        Elem::F64 => ort::value::Tensor::from_array((shape, numbers()?)).map(|t| t.into_dyn()),
        Elem::F32 => {
            let values = numbers()?;
            let mut out = Vec::with_capacity(values.len());
            for (i, x) in values.into_iter().enumerate() {
                let y = x as f32;
                if x.is_finite() && !y.is_finite() {
                    return Err(invalid(
                        &feed.name,
                        Some(source(i / width)),
                        format!(
                            "row {}: {x} is too large for input {:?} of float",
                            source(i / width),
                            feed.name
                        ),
                    ));
                }
                out.push(y);
            }
            ort::value::Tensor::from_array((shape, out)).map(|t| t.into_dyn())
        }
        Elem::I64 => {
            let two_63 = 9_223_372_036_854_775_808.0;
            ort::value::Tensor::from_array((shape, ints(-two_63, two_63)?)).map(|t| t.into_dyn())
        }
        Elem::I32 => {
            let values: Vec<i32> =
                ints(f64::from(i32::MIN), f64::from(i32::MAX) + 1.0)?.into_iter().map(|x| x as i32).collect();
            ort::value::Tensor::from_array((shape, values)).map(|t| t.into_dyn())
        }
        Elem::Bool => {
            let values: Vec<bool> = numbers()?.into_iter().map(|x| x != 0.0).collect();
            ort::value::Tensor::from_array((shape, values)).map(|t| t.into_dyn())
        }
        Elem::Str => {
            // ort takes owned (or 'static) strings and copies each again for the C API.
            let mut out: Vec<String> = vec![String::new(); n * width];
            for (j, &c) in feed.columns.iter().enumerate() {
                let column = &table.columns[c];
                for (row, slot) in out.iter_mut().skip(j).step_by(width).enumerate() {
                    let text = column.category(row).unwrap_or("");
                    if text.contains('\0') {
                        return Err(invalid(
                            &feed.name,
                            Some(source(row)),
                            format!(
                                "row {}: input {:?} cannot hold a string with a NUL character",
                                source(row),
                                feed.name
                            ),
                        ));
                    }
                    text.clone_into(slot);
                }
            }
            ort::value::Tensor::from_string_array((shape, out.as_slice())).map(|t| t.into_dyn())
        }
        other => return Err(ModelError::Internal(format!("input type {} is not fed", other.onnx_name()))),
    };
    tensor.map_err(|e| ModelError::Internal(format!("input {:?}: {e}", feed.name)))
}

fn dims(shape: &[i64]) -> Vec<usize> {
    shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect()
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// One row of a ZipMap as a JSON object, keys as text.
fn map_rows<K: ToString, V: Into<f64> + Copy>(rows: Vec<Vec<(K, V)>>) -> Vec<Value> {
    rows.into_iter()
        .map(|row| {
            Value::Object(
                row.into_iter().map(|(k, v)| (k.to_string(), number(v.into()))).collect::<Map<_, _>>(),
            )
        })
        .collect()
}

/// Copy one output out of ONNX Runtime's memory.
fn read_output(io: &Io, value: &DynValue) -> ort::Result<Tensor> {
    macro_rules! tensor {
        ($t:ty, $variant:ident, $conv:expr) => {{
            let (shape, data) = value.try_extract_tensor::<$t>()?;
            (dims(shape), Values::$variant(data.iter().map($conv).collect()))
        }};
    }
    let (datatype, shape, values) = match &io.ty {
        IoType::Tensor { elem, .. } => {
            let (shape, values) = match elem {
                Elem::F32 => tensor!(f32, Float, |&x| f64::from(x)),
                Elem::F64 => tensor!(f64, Float, |&x| x),
                Elem::I8 => tensor!(i8, Int, |&x| i64::from(x)),
                Elem::I16 => tensor!(i16, Int, |&x| i64::from(x)),
                Elem::I32 => tensor!(i32, Int, |&x| i64::from(x)),
                Elem::I64 => tensor!(i64, Int, |&x| x),
                Elem::U8 => tensor!(u8, Uint, |&x| u64::from(x)),
                Elem::U16 => tensor!(u16, Uint, |&x| u64::from(x)),
                Elem::U32 => tensor!(u32, Uint, |&x| u64::from(x)),
                Elem::U64 => tensor!(u64, Uint, |&x| x),
                Elem::Bool => tensor!(bool, Bool, |&x| x),
                Elem::Str => {
                    let (shape, data) = value.try_extract_strings()?;
                    (dims(shape), Values::Text(data))
                }
            };
            (elem.datatype(), shape, values)
        }
        IoType::ZipMap { key, value: v } => {
            let maps = value.try_extract_sequence::<DynMapValueType>()?;
            let rows = match (key, v) {
                (Elem::I64, Elem::F32) => map_rows(
                    maps.iter()
                        .map(|m| m.try_extract_key_values::<i64, f32>())
                        .collect::<ort::Result<_>>()?,
                ),
                (Elem::I64, Elem::F64) => map_rows(
                    maps.iter()
                        .map(|m| m.try_extract_key_values::<i64, f64>())
                        .collect::<ort::Result<_>>()?,
                ),
                (Elem::Str, Elem::F32) => map_rows(
                    maps.iter()
                        .map(|m| m.try_extract_key_values::<String, f32>())
                        .collect::<ort::Result<_>>()?,
                ),
                (Elem::Str, Elem::F64) => map_rows(
                    maps.iter()
                        .map(|m| m.try_extract_key_values::<String, f64>())
                        .collect::<ort::Result<_>>()?,
                ),
                _ => return Err(ort::Error::new(format!("{} is not read", io.ty.describe()))),
            };
            (Datatype::Bytes, vec![rows.len()], Values::Json(rows))
        }
        IoType::Other(what) => return Err(ort::Error::new(format!("{what} is not read"))),
    };
    Ok(Tensor { datatype, shape, values })
}

fn table_of(input: Option<&Table>) -> Result<&Table, ModelError> {
    input.ok_or_else(|| ModelError::BadRequest("the request has no data rows".into()))
}

impl Model for OnnxModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn predict(&self, input: &PredictInput) -> Result<Response, ModelError> {
        let outputs = self.predict_outputs(table_of(input.table.as_ref())?)?;
        Ok(Response { target: Target::Outputs { outputs, by_name: true }, ..Response::default() })
    }

    fn reads_body(&self) -> bool {
        false
    }

    fn supports_feedback(&self) -> bool {
        self.feedback.is_some()
    }

    fn feedback(&self, input: &FeedbackInput) -> Result<Response, ModelError> {
        let Some(fb) = &self.feedback else {
            return Err(ModelError::NotSupported("this model takes no feedback".into()));
        };
        let truth = Truth::Classes { classes: &fb.classes, lookup: &fb.lookup };
        take_feedback(&fb.store, truth, input, |table| {
            let outputs = self.predict_outputs(table)?;
            let labels = &outputs[fb.label_output].tensor;
            let indexes = (0..labels.values.len())
                .map(|i| {
                    let label = labels.values.json_at(i);
                    fb.lookup.find_value(&label).map(|k| k as u32).ok_or_else(|| {
                        ModelError::Internal(format!(
                            "the graph predicted {label}, which is not one of the manifest's output.classes"
                        ))
                    })
                })
                .collect::<Result<Vec<u32>, ModelError>>()?;
            Ok(Prediction { n_rows: table.n_rows, labels: Some(indexes), values: None, probabilities: None })
        })
    }

    fn scrape_gauges(&self) -> Vec<ScrapedGauge> {
        let Some(figures) = self.feedback.as_ref().and_then(|fb| fb.store.figures()) else {
            return Vec::new();
        };
        crate::model::feedback_gauges(&self.info, &figures)
    }
}
