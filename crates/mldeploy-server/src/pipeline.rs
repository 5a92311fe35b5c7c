//! The protocol-neutral steps of a model call: validate the rows against the model's schema,
//! call the model under the guard, count what it predicted. Each protocol decodes its own wire
//! format into rows or columns before, and renders the typed answer after; `mldeploy check`
//! runs the same steps on a model's sample.
//!
//! The guard: model code runs under the worker's busy mark (the master's hang watch) and
//! `catch_unwind`, so a panic answers 500 and the worker serves on.

use std::panic::{catch_unwind, AssertUnwindSafe};

use mldeploy_model::decode::{decode_rows, OnError};
use mldeploy_model::{FeedbackInput, ModelError, PredictInput, Response, RowError, Table};
use mldeploy_prefork::WorkerHandle;
use serde_json::Value;
use slog::{error, Logger};
use tokio::task::block_in_place;

use crate::metrics::Metrics;
use crate::registry::ModelEntry;

/// What the steps need from the worker.
#[derive(Clone, Copy)]
pub(crate) struct Calls<'a> {
    pub metrics: &'a Metrics,
    /// The busy mark's owner; `None` outside a supervised worker.
    pub worker: Option<&'a WorkerHandle>,
    pub log: &'a Logger,
    /// Model calls may hold their thread for long: run them with [`block_in_place`].
    pub may_block: bool,
}

/// Why a call did not answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The model (or validation) refused or failed, with its reason.
    Model(ModelError),
    /// The model panicked (logged already).
    Panicked,
}

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        Failure::Model(e)
    }
}

/// Rows that passed validation: the table the model gets, and the rows left out (with
/// `"on_error": "skip"`) and why.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    pub table: Option<Table>,
    pub rejected: Vec<RowError>,
}

/// A prediction, with the table it was made for (answers echo its rows).
pub(crate) struct Predicted {
    pub response: Response,
    pub table: Option<Table>,
}

impl Calls<'_> {
    /// Run model code under the busy mark and a panic guard.
    pub(crate) fn guarded<T>(
        self,
        id: &str,
        f: impl FnOnce() -> Result<T, ModelError>,
    ) -> Result<T, Failure> {
        let outcome = {
            let _busy = self.worker.map(WorkerHandle::busy);
            let call = || catch_unwind(AssertUnwindSafe(f));
            // A thread that blocks in a call keeps the tasks queued on it, and may be the one
            // that polls for I/O: then the worker's other threads wait with it (a call waiting
            // on another request would never end). Handing this thread's work to another
            // thread for the call avoids that; it costs microseconds, so only for slow models.
            let multi_thread = || {
                tokio::runtime::Handle::try_current()
                    .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
            };
            if self.may_block && multi_thread() {
                block_in_place(call)
            } else {
                call()
            }
        };
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failure::Model(e)),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                error!(self.log, "model panicked"; "request_id" => id, "panic" => message);
                Err(Failure::Panicked)
            }
        }
    }

    /// Log a model failure that answers 500 (its message goes to the log, not to the client).
    pub(crate) fn log_internal(self, id: &str, message: &str) {
        error!(self.log, "model error"; "request_id" => id, "error" => message);
    }

    /// Count the reasons of a validation failure.
    pub(crate) fn count_invalid(self, errors: &[RowError]) {
        for e in errors {
            self.metrics.validation_failure(&e.reason);
        }
    }

    /// Decode and validate JSON rows (ml-deploy's `data`/`names`, records) against the model's
    /// schema; a model without one gets no table.
    pub(crate) fn check_body(self, entry: &ModelEntry, body: &Value) -> Result<Checked, ModelError> {
        let Some(schema) = &entry.schema else { return Ok(Checked::default()) };
        let (rows, on_error) = decode_rows(body)?;
        self.validated(schema.validate(&rows, on_error))
    }

    /// Count what validation found, and keep the table.
    pub(crate) fn validated(
        self,
        result: Result<mldeploy_model::schema::Validated, ModelError>,
    ) -> Result<Checked, ModelError> {
        match result {
            Ok(v) => {
                self.count_invalid(&v.rejected);
                Ok(Checked { table: Some(v.table), rejected: v.rejected })
            }
            Err(e) => {
                if let ModelError::Invalid { errors, .. } = &e {
                    self.count_invalid(errors);
                }
                Err(e)
            }
        }
    }

    /// Call the model's predict and count the rows it predicted.
    pub(crate) fn predict(
        self,
        entry: &ModelEntry,
        input: PredictInput,
        id: &str,
    ) -> Result<Predicted, Failure> {
        let response = self.guarded(id, || entry.model.predict(&input))?;
        // The request's JSON is done with: free it before the answer is serialized, which is
        // when a large request needs the most memory.
        let PredictInput { table, .. } = input;
        let rows = table.as_ref().map(|t| t.n_rows).or_else(|| response.target.rows()).unwrap_or(1);
        self.metrics.predictions(&entry.metric_key, rows as u64);
        Ok(Predicted { response, table })
    }

    /// Decode and validate a feedback body (`{"data", "y_true", "y_predict"}`), call the model.
    pub(crate) fn feedback(self, entry: &ModelEntry, body: Value, id: &str) -> Result<Predicted, Failure> {
        let bad = |m: &str| Failure::Model(ModelError::BadRequest(m.to_string()));
        let Value::Object(mut body) = body else {
            return Err(bad("the feedback body must be an object: {\"data\", \"y_true\", \"y_predict\"}"));
        };
        let Some(data) = body.remove("data") else { return Err(bad("`data` is required")) };
        let Some(y_true) = body.remove("y_true") else { return Err(bad("`y_true` is required")) };
        let y_predict = body.remove("y_predict").filter(|v| !v.is_null());
        let table = match &entry.schema {
            Some(schema) => {
                let rows = mldeploy_model::decode::decode_data(&data, body.get("names"))?;
                // Labels go row by row with the data, so invalid rows refuse the whole request.
                let table = self.validated(schema.validate(&rows, OnError::Reject))?.table;
                let n = table.as_ref().map_or(0, |t| t.n_rows);
                for (name, labels) in [("y_true", Some(&y_true)), ("y_predict", y_predict.as_ref())] {
                    match labels {
                        Some(Value::Array(a)) if a.len() != n => {
                            return Err(bad(&format!("`{name}` has {} values for {n} rows", a.len())));
                        }
                        Some(Value::Array(_)) | None => {}
                        Some(_) if n == 1 => {}
                        Some(_) => {
                            return Err(bad(&format!("`{name}` must be a list with one value per row")))
                        }
                    }
                }
                table
            }
            None => None,
        };
        let input = FeedbackInput { data, table, y_true, y_predict };
        let response = self.guarded(id, || entry.model.feedback(&input))?;
        Ok(Predicted { response, table: input.table })
    }
}
