//! Import and export: OCI image layout (directory or tar) and docker-archive import.

/// Why an import or export failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{0}")]
    Invalid(String),
}
