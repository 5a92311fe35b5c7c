//! The server's own routes: `/health`, `/ready`, `/version` and `/metrics`.

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::StatusCode;
use mldeploy_model::Model;
use serde_json::json;

use super::{internal_error, Methods, Protocol, Reply, Route};
use crate::metrics::Format;
use crate::pipeline::Failure;
use crate::registry::Registry;
use crate::service::HttpSettings;

/// The API version served in `/version` and the ml-deploy metadata.
pub const API_VERSION: &str = "v1";

/// `/health`, `/ready`, `/version`, `/metrics`.
pub(crate) struct ServerRoutes;

impl Protocol for ServerRoutes {
    fn name(&self) -> &'static str {
        "server"
    }

    fn routes(&self, models: &Registry, _settings: &HttpSettings) -> Vec<Route> {
        let version = Bytes::from(version_json(models).to_string());
        vec![
            Route::new("/health", Methods::Read, |_, _| {
                Reply::json(StatusCode::OK, &br#"{"status":"ok"}"#[..]).into()
            }),
            Route::new("/ready", Methods::Read, |cx, req| {
                if cx.draining() {
                    let message = "this worker is shutting down";
                    Reply::error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message, req.id).into()
                } else {
                    Reply::json(StatusCode::OK, &br#"{"status":"ready"}"#[..]).into()
                }
            }),
            Route::new("/version", Methods::Read, move |_, _| {
                Reply::json(StatusCode::OK, version.clone()).into()
            }),
            Route::new("/metrics", Methods::Read, |cx, req| {
                let wants_open_metrics = req
                    .parts
                    .headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|s| s.contains("application/openmetrics-text")));
                let format = if wants_open_metrics { Format::OpenMetrics } else { Format::Prometheus };
                // Rendering asks the models for their scrape-time gauges: model code, so guarded.
                let models: Vec<&dyn Model> = cx.models.iter().map(|e| &*e.model).collect();
                match cx.calls().guarded(req.id, || Ok(cx.metrics.render(format, &models))) {
                    Ok(text) => {
                        let mut reply = Reply::json(StatusCode::OK, text);
                        reply.content_type = Some(HeaderValue::from_static(format.content_type()));
                        reply.into()
                    }
                    Err(Failure::Model(e)) => {
                        cx.calls().log_internal(req.id, &e.to_string());
                        internal_error(req.id).into()
                    }
                    Err(Failure::Panicked) => internal_error(req.id).into(),
                }
            }),
        ]
    }
}

/// `/version`: the server's and the API's versions, and the model's (or each model's).
fn version_json(models: &Registry) -> serde_json::Value {
    match models.single() {
        Some(entry) => json!({
            "model": entry.name(),
            "model_version": entry.version(),
            "api_version": API_VERSION,
            "mldeploy_version": env!("CARGO_PKG_VERSION"),
        }),
        None => json!({
            "models": models.iter().map(|e| json!({"name": e.name(), "version": e.version()})).collect::<Vec<_>>(),
            "api_version": API_VERSION,
            "mldeploy_version": env!("CARGO_PKG_VERSION"),
        }),
    }
}
