//! Where a package's files come from: a directory, or bytes compiled into the binary.

use std::path::{Path, PathBuf};

use crate::error::Error;

/// The manifest's file name in a package directory.
pub const MANIFEST_FILE: &str = "mldeploy.json";

/// The embedded demo package's manifest (an iris logistic regression, `iris-demo`).
pub const DEMO_MANIFEST: &[u8] = include_bytes!("../demo/iris-demo/mldeploy.json");
/// The embedded demo package's weights.
pub const DEMO_WEIGHTS: &[u8] = include_bytes!("../demo/iris-demo/model.safetensors");

/// The package directory `path` names: the directory itself, or the directory of a
/// `mldeploy.json` named directly.
pub fn package_dir(path: &Path) -> PathBuf {
    if path.file_name().is_some_and(|n| n == MANIFEST_FILE) && path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.to_path_buf()
    }
}

/// The files of one package, read by name.
pub(crate) trait PackageFiles {
    /// The whole file `name`, or an error naming it.
    fn read(&self, name: &str) -> Result<Vec<u8>, Error>;

    /// Where file `name` is on disk, for engines that open it themselves; `None` for files
    /// held in memory.
    fn path(&self, _name: &str) -> Option<PathBuf> {
        None
    }
}

/// A package directory on disk.
pub(crate) struct Dir<'a>(pub &'a Path);

impl PackageFiles for Dir<'_> {
    fn read(&self, name: &str) -> Result<Vec<u8>, Error> {
        let dir = self.0;
        if !dir.is_dir() {
            return Err(Error::File {
                path: dir.to_path_buf(),
                message: "model package directory not found".into(),
            });
        }
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                format!("missing file {name} in the model package")
            } else {
                format!("cannot read: {e}")
            };
            Error::File { path, message }
        })
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        Some(self.0.join(name))
    }
}

/// Files held in memory, by name.
pub(crate) struct Embedded<'a>(pub &'a [(&'a str, &'a [u8])]);

impl PackageFiles for Embedded<'_> {
    fn read(&self, name: &str) -> Result<Vec<u8>, Error> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, bytes)| bytes.to_vec()).ok_or_else(|| Error::File {
            path: PathBuf::from(name),
            message: format!("missing file {name} in the model package"),
        })
    }
}
