//! ml-deploy interface classes served by mldeploy's workers through an embedded CPython.
//!
//! [`PythonLoader`] is the `ModelLoader` of the `mldeploy-python` binary: in each worker, after
//! the fork, it starts the interpreter ([`host`]), imports the user's interface file unchanged
//! (with mldeploy's side-effect-free `ml_deploy` stand-in ahead of any installed ml-deploy),
//! instantiates the class, calls its `load()`, and returns a [`model::PythonModel`]: the class's
//! `predict`, `feedback`, Flask routes and metrics behind mldeploy's `Model` contract.
//!
//! Threads: the worker's serving threads hand each call to one of `--threads` dedicated Python
//! threads over a channel and wait for its answer. Each Python thread keeps its Python thread
//! state for its whole life (no state created per call; `threading.local` values persist, as
//! under gunicorn's threads). Calls wait for the GIL one at a time; code that releases it (numpy,
//! BLAS, I/O, `time.sleep`) runs in parallel.
//!
//! No unsafe code: PyO3's and rust-numpy's safe API only.

#![forbid(unsafe_code)]

pub mod convert;
pub mod host;
pub mod model;

use std::path::Path;
use std::sync::Arc;

use mldeploy_model::{LoadContext, Model, ModelError, ModelLoader};
use mldeploy_server::launch::PythonEnv;

/// `major.minor` of the Python this binary embeds.
pub const PYTHON_VERSION: &str = env!("MLDEPLOY_PYTHON_VERSION");
/// The libpython this binary was linked with, for messages.
pub const PYTHON_LIBRARY: &str = env!("MLDEPLOY_PYTHON_LIBRARY");

/// Why an environment cannot be used by this binary: another Python version.
pub fn check_version(env: &PythonEnv) -> Result<(), String> {
    let wanted = env.major_minor();
    if wanted == PYTHON_VERSION {
        return Ok(());
    }
    Err(format!(
        "the Python environment {} ({}) is Python {}, but this mldeploy-python is built for Python {PYTHON_VERSION} \
         ({PYTHON_LIBRARY}): use an environment of Python {PYTHON_VERSION}, or build mldeploy-python for Python \
         {wanted} (PYO3_PYTHON=python{wanted} cargo build --release -p mldeploy-python)",
        env.root.display(),
        env.source,
        env.version,
    ))
}

/// Loads ml-deploy interface classes. Made in the master from the settings at start: the
/// environment and `metric_class` hold for the server's life (a reload re-imports the interface
/// in new workers, with the same interpreter).
#[derive(Debug, Clone, Default)]
pub struct PythonLoader {
    /// The Python environment (`None`: the embedded interpreter's own).
    pub env: Option<PythonEnv>,
    /// ml-deploy's `metric_class`.
    pub metric_class: Option<String>,
}

impl ModelLoader for PythonLoader {
    fn load(&self, path: Option<&Path>, ctx: &LoadContext) -> Result<Arc<dyn Model>, ModelError> {
        let Some(path) = path else {
            return Err(ModelError::Load(
                "mldeploy-python serves ml-deploy interface classes: name one (interface.py, interface.py:Class, or \
                 an ml-deploy config with --ml-deploy-config)"
                    .into(),
            ));
        };
        let interface = path.to_string_lossy();
        let model = host::boot(&interface, ctx, self.env.as_ref(), self.metric_class.as_deref())?;
        Ok(Arc::new(model))
    }

    fn describe(&self, path: Option<&Path>) -> String {
        let python = match &self.env {
            Some(env) => format!("Python {} in {}", env.version, env.root.display()),
            None => format!("Python {PYTHON_VERSION}"),
        };
        match path {
            Some(p) => format!("{} ({python})", p.display()),
            None => "no interface".into(),
        }
    }
}
