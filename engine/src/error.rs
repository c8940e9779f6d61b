use lintel_store::StoreError;

/// Errors from the engine. The API maps each to one HTTP status (see `lintel-api`).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("system `{0}` not found")]
    SystemNotFound(String),
    #[error("module `{0}` not found")]
    ModuleNotFound(String),
    #[error("module `{0}` is not running")]
    ModuleNotRunning(String),
    #[error("function `{function}` not found on {module}")]
    FunctionNotFound { module: String, function: String },
    #[error("bad arguments for `{function}`: {message}")]
    BadArguments { function: String, message: String },
    #[error("the driver failed: {0}")]
    Driver(String),
    #[error("no reply from the module within {0} ms")]
    Timeout(u64),
    #[error("the module is busy: its event queue is full")]
    Busy,
    /// A request the module's config cannot serve (e.g. a ping of a module without a
    /// device address).
    #[error("{0}")]
    Invalid(String),
    #[error("invalid driver component: {0}")]
    InvalidDriver(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("engine error: {0}")]
    Internal(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
