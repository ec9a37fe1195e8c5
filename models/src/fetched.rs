//! Where `scripts/fetch-assets.sh` puts the weights and photos that the tests, examples and
//! benches of this workspace read: `assets/` at the workspace root.

use std::path::PathBuf;

/// The fetched assets: `$ROLLCALL_ASSETS_DIR`, else the workspace's `assets/`.
pub fn assets() -> PathBuf {
    std::env::var_os("ROLLCALL_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets"))
}

/// face-api's folder (weights in `model/`, group photos in `demo/`): `$ROLLCALL_MODEL_DIR`,
/// else `assets/face-api`.
pub fn model_dir() -> PathBuf {
    std::env::var_os("ROLLCALL_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| assets().join("face-api"))
}
