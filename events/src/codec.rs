//! The one bincode configuration every stored or sent byte uses: standard (varint, little
//! endian) with a size limit, so hostile input cannot make the decoder allocate without bound.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};

/// The largest encoded event (envelope or payload) the decoder accepts: 4 MiB.
pub const MAX_ENCODED: usize = 4 << 20;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_ENCODED>>;

fn config() -> Config {
    config::standard().with_limit::<MAX_ENCODED>()
}

/// Why bytes could not be read as an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("malformed event encoding: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the event")]
    Trailing(usize),
    #[error("unknown envelope format {0} (this build reads formats 1 and 2)")]
    UnknownFormat(u8),
    #[error("event schema version {found} is newer than this build understands (newest {newest}); upgrade bolt")]
    UnknownSchema { found: u16, newest: u16 },
}

pub(crate) fn encode<T: Encode>(v: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail for these types except past the limit, which an event we
    // build ourselves never reaches; an empty vec would then fail to decode, never silently pass.
    bincode::encode_to_vec(v, config()).unwrap_or_default()
}

pub(crate) fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    let (v, used) = bincode::decode_from_slice::<T, _>(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(v)
}
