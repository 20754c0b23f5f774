//! Hybrid logical clock: physical milliseconds in the high 48 bits, a logical counter in the low 16.
//!
//! Pure: the caller passes the wall clock in, so tests drive it with any time they like.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// One HLC timestamp. Ordered first by physical time, then by the logical counter.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Encode,
    Decode,
    Serialize,
    Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(pub u64);

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

impl Hlc {
    /// A timestamp from its parts; the physical part is cut to 48 bits.
    pub fn new(physical_ms: u64, logical: u16) -> Self {
        Hlc(((physical_ms & ((1 << 48) - 1)) << LOGICAL_BITS) | u64::from(logical))
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}.{})", self.physical_ms(), self.logical())
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

/// A node's hybrid logical clock. Every timestamp it issues is strictly greater than every
/// timestamp it issued or observed before.
#[derive(Debug, Clone, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock that will issue timestamps above `last` (the highest one in the log at start).
    pub fn starting_after(last: Hlc) -> Self {
        HlcClock { last }
    }

    /// The next timestamp for a local event, given the wall clock now.
    pub fn tick(&mut self, wall_ms: u64) -> Hlc {
        let wall = Hlc::new(wall_ms, 0);
        self.last = if wall > self.last {
            wall
        } else {
            self.successor()
        };
        self.last
    }

    /// Takes a remote timestamp into account so later local events sort after it.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) {
        let wall = Hlc::new(wall_ms, 0);
        let top = remote.max(wall);
        if top > self.last {
            self.last = top;
        }
    }

    /// The highest timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    fn successor(&self) -> Hlc {
        if self.last.logical() as u64 == LOGICAL_MASK {
            // The logical counter is exhausted: borrow the next millisecond.
            Hlc::new(self.last.physical_ms() + 1, 0)
        } else {
            Hlc(self.last.0 + 1)
        }
    }
}

/// Milliseconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_strictly_monotonic_even_when_the_wall_clock_goes_back() {
        let mut c = HlcClock::default();
        let a = c.tick(1000);
        let b = c.tick(1000);
        let d = c.tick(900);
        assert!(a < b && b < d);
        assert_eq!(d.physical_ms(), 1000);
        assert_eq!(d.logical(), 2);
    }

    #[test]
    fn observe_moves_the_clock_past_remote_time() {
        let mut c = HlcClock::default();
        c.observe(Hlc::new(5000, 7), 1000);
        let t = c.tick(1000);
        assert!(t > Hlc::new(5000, 7));
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut c = HlcClock::starting_after(Hlc::new(10, u16::MAX));
        let t = c.tick(5);
        assert_eq!((t.physical_ms(), t.logical()), (11, 0));
    }
}
