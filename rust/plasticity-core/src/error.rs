use thiserror::Error;

/// Errors from the core math. Every one is raised before any buffer is written.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A sum over tensor-parallel ranks failed. The one exception to the rule above: when
    /// it fails after the moments were updated, the moments have advanced (no weight has).
    #[error("collective failed: {0}")]
    Collective(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;
