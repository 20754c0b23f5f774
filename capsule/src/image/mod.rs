//! Images: references, the registry client, the content-addressed store and safe layer unpack.

pub mod auth;
pub mod digest;
pub mod layout;
pub mod manifest;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use auth::{Credential, Credentials};
pub use digest::Digest;
pub use layout::{ExportFormat, ImportOptions};
pub use manifest::Platform;
pub use progress::{Phase, Progress, ProgressFn};
pub use pull::PullOptions;
pub use push::{PushOptions, Pushed};
pub use reference::ImageRef;
pub use registry::RegistryConfig;
pub use store::{
    GcReport, ImageError, ImageRecord, ImageStore, LayerRecord, Pulled, Removed, StoreConfig,
    Tagged,
};
pub use unpack::{UnpackOptions, WhiteoutMode, XattrNamespace};
