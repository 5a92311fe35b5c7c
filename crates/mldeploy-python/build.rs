//! Records which Python this binary embeds (its version is checked against the environment a
//! model names before any worker starts) and adds an rpath to that libpython's directory, which
//! is not on the loader's default path for pyenv or a Python built from source.
//!
//! The Python comes from `PYO3_PYTHON` (an interpreter name or path), else the active virtualenv,
//! else `python3` on PATH; it must be a shared build (`--enable-shared`, Debian's
//! `libpython3.11-dev`). One build embeds one Python minor version.

fn main() {
    let config = pyo3_build_config::get();
    println!("cargo:rustc-env=MLDEPLOY_PYTHON_VERSION={}.{}", config.version.major, config.version.minor);
    let library = match (&config.lib_dir, &config.lib_name) {
        (Some(dir), Some(name)) => format!("{dir}/lib{name}.so"),
        (None, Some(name)) => format!("lib{name}.so"),
        _ => "libpython".to_string(),
    };
    println!("cargo:rustc-env=MLDEPLOY_PYTHON_LIBRARY={library}");
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
