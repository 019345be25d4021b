use thiserror::Error;

/// Errors from the core math. Every one is raised before any buffer is written.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;
