//! The models a worker serves: one entry per model, with everything the routes, metrics and
//! events need about it, built once when the worker has loaded it.

use std::path::PathBuf;
use std::sync::Arc;

use mldeploy_model::{Model, ModelError, ModelInfo, Schema};

use crate::events::ModelTag;
use crate::metrics::ModelKey;

/// Where a served model came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSource {
    /// The package (or whatever the loader takes); `None`: the loader's built-in model.
    pub path: Option<PathBuf>,
    /// The version directory it was found in, for a model repository with numbered versions.
    pub repository_version: Option<String>,
}

/// One served model.
pub struct ModelEntry {
    /// The loaded model.
    pub model: Arc<dyn Model>,
    /// Its schema, when it declares features (requests are validated against it first).
    pub schema: Option<Schema>,
    /// Its `model` and `version` metric labels.
    pub metric_key: ModelKey,
    /// The key and headers of its events.
    pub tag: Arc<ModelTag>,
    /// Where its ml-deploy routes live (`/api/ml`, or `/<name>/api/ml` among several models).
    pub prefix: String,
    /// Where it came from.
    pub source: ModelSource,
}

impl std::fmt::Debug for ModelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEntry").field("name", &self.name()).field("prefix", &self.prefix).finish()
    }
}

impl ModelEntry {
    /// What the model says about itself.
    pub fn info(&self) -> &ModelInfo {
        self.model.info()
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.info().name
    }

    /// The model's version.
    pub fn version(&self) -> &str {
        &self.info().version
    }

    /// Whether `version` names the version served: the model's own, or its repository
    /// directory's number.
    pub fn has_version(&self, version: &str) -> bool {
        self.version() == version || self.source.repository_version.as_deref() == Some(version)
    }
}

/// Every model of a worker, in the configured order.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<ModelEntry>,
}

/// Why a set of models cannot be served together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// Two models have the same name.
    DuplicateName(String),
    /// Two models' ml-deploy routes would live under the same prefix.
    DuplicatePrefix { prefix: String, first: String, second: String },
    /// A model's feature schema is itself invalid.
    Schema { model: String, message: String },
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::DuplicateName(name) => write!(f, "two models are named {name:?}"),
            RegistryError::DuplicatePrefix { prefix, first, second } => {
                write!(f, "models {first:?} and {second:?} both want the route prefix {prefix}")
            }
            RegistryError::Schema { model, message } => write!(f, "model {model:?}: {message}"),
        }
    }
}

impl std::error::Error for RegistryError {}

/// A route prefix as configured: leading slash, no trailing slash (`""` for the root).
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    if trimmed.is_empty() || trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

impl Registry {
    /// The registry of `models`. One model serves its ml-deploy routes under `api_prefix`
    /// (unless it keeps its own: [`mldeploy_model::ModelInfo::keep_api_prefix`]); several each
    /// under their own (the model's `api_prefix`, else `/<name>/api/ml`).
    pub fn new(
        models: Vec<(Arc<dyn Model>, ModelSource)>,
        api_prefix: &str,
    ) -> Result<Registry, RegistryError> {
        let single = models.len() == 1;
        let mut entries: Vec<ModelEntry> = Vec::with_capacity(models.len());
        for (model, source) in models {
            let info = model.info();
            let schema = if info.features.is_empty() {
                None
            } else {
                let schema = Schema::new(info.features.clone());
                schema.check().map_err(|e| RegistryError::Schema {
                    model: info.name.clone(),
                    message: match e {
                        ModelError::Load(m) => m,
                        other => other.to_string(),
                    },
                })?;
                Some(schema)
            };
            let prefix = if single && !(info.keep_api_prefix && info.api_prefix.is_some()) {
                normalize_prefix(api_prefix)
            } else {
                match &info.api_prefix {
                    Some(p) => normalize_prefix(p),
                    None => format!("/{}/api/ml", info.name),
                }
            };
            if entries.iter().any(|e| e.name() == info.name) {
                return Err(RegistryError::DuplicateName(info.name.clone()));
            }
            if let Some(other) = entries.iter().find(|e| e.prefix == prefix) {
                return Err(RegistryError::DuplicatePrefix {
                    prefix,
                    first: other.name().to_string(),
                    second: info.name.clone(),
                });
            }
            entries.push(ModelEntry {
                metric_key: ModelKey::new(&info.name, &info.version),
                tag: Arc::new(ModelTag { name: info.name.clone(), version: info.version.clone() }),
                schema,
                prefix,
                source,
                model,
            });
        }
        Ok(Registry { entries })
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no model.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry `index`.
    pub fn get(&self, index: usize) -> &ModelEntry {
        &self.entries[index]
    }

    /// The entry of the model named `name`, with its index.
    pub fn find(&self, name: &str) -> Option<(usize, &ModelEntry)> {
        self.entries.iter().enumerate().find(|(_, e)| e.name() == name)
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = &ModelEntry> {
        self.entries.iter()
    }

    /// The only model, when there is exactly one.
    pub fn single(&self) -> Option<&ModelEntry> {
        match self.entries.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}
