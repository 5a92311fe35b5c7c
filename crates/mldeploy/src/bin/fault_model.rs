//! `mldeploy-fault-model`: the mldeploy command line serving a model that misbehaves on
//! request, to rehearse failure handling (timeouts, panics, slow calls) before production and
//! in mldeploy's own tests.
//!
//! The request's `params` pick the behaviour: `{"params": {"sleep_ms": 200}}` answers late,
//! `{"hang": true}` never returns (the worker timeout must replace the worker), `{"panic": true}`
//! panics inside the model (the server answers 500 and keeps serving), `{"error": true}`
//! returns a model error. Anything else echoes `data` back as the prediction; a
//! multipart/form-data request is answered with the fields and files that arrived.

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mldeploy_model::{LoadContext, Model, ModelError, ModelInfo, PredictInput, Response, Target};
use serde_json::{json, Value};

/// The same allocator as the `mldeploy` command, so failures are rehearsed on the same memory
/// behaviour.
#[global_allocator]
static ALLOCATOR: mldeploy_server::Allocator = mldeploy_server::Allocator;

struct FaultModel {
    info: ModelInfo,
}

fn param<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body.get("params").and_then(|p| p.get(name))
}

impl Model for FaultModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn predict(&self, input: &PredictInput) -> Result<Response, ModelError> {
        let body = &input.body;
        if let Some(ms) = param(body, "sleep_ms").and_then(Value::as_u64) {
            std::thread::sleep(Duration::from_millis(ms.min(600_000)));
        }
        if param(body, "hang").and_then(Value::as_bool) == Some(true) {
            loop {
                std::thread::park();
            }
        }
        if param(body, "panic").and_then(Value::as_bool) == Some(true) {
            panic!("the fault model was asked to panic");
        }
        if param(body, "error").and_then(Value::as_bool) == Some(true) {
            return Err(ModelError::Internal("the fault model was asked to fail".into()));
        }
        if let Some(form) = &input.form {
            // A multipart request: answer what arrived, so a client can see it reached the model.
            let files: Vec<Value> = form
                .files
                .iter()
                .map(|f| json!({ "field": f.field, "filename": f.filename, "bytes": f.data.len() }))
                .collect();
            let fields: serde_json::Map<String, Value> =
                form.fields.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            return Ok(Response {
                target: Target::Json(json!({ "fields": fields, "files": files })),
                ..Response::default()
            });
        }
        let data = body.get("data").cloned().unwrap_or(Value::Null);
        Ok(Response::json(json!({ "y_predicted": data }), data))
    }
}

fn load(_path: Option<&Path>, _ctx: &LoadContext) -> Result<Arc<dyn Model>, ModelError> {
    // Lets a test make every worker fail to boot.
    if std::env::var_os("MLDEPLOY_FAULT_MODEL_LOAD_FAILS").is_some() {
        return Err(ModelError::Load("the fault model was asked not to load".into()));
    }
    let info = ModelInfo {
        name: "fault-model".into(),
        version: "1".into(),
        kind: "custom".into(),
        sample: json!({ "data": [1, 2, 3] }),
        ..ModelInfo::default()
    };
    Ok(Arc::new(FaultModel { info }))
}

fn main() -> ExitCode {
    mldeploy_server::run_cli(load)
}
