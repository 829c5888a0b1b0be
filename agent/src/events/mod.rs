//! Records from the kernel ring buffer: decoding them, the thread that reads them, and when
//! it leaves them there for the export queue to catch up.

pub mod clock;
pub mod decode;
mod hold;
pub mod reader;

pub use decode::{Event, decode};
