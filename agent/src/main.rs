mod export;
mod kernel;
mod protocol;
mod span;
mod telemetry;

fn main() {}
