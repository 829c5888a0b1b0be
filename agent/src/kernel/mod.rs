//! Kernel side: BTF offsets, loading and attaching the probes, reading the ring buffer.

pub mod btf;
