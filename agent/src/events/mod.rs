//! Records from the kernel ring buffer: decoding them and the thread that reads them.

pub mod clock;
pub mod decode;
pub mod reader;

pub use decode::{Event, decode};
