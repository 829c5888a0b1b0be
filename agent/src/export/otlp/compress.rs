//! gzip for export requests, and bounded gunzip for the answers that come back compressed.

use std::io::{self, Read as _, Write as _};

/// `plain` gzipped at the fastest level. Export batches are a few hundred spans whose
/// attribute keys and resource repeat, so level 1 already shrinks them about tenfold;
/// the default level 6 took about three times the CPU for some 12 % fewer bytes.
pub fn gzip(plain: &[u8]) -> io::Result<Vec<u8>> {
    gzip_after(Vec::with_capacity(plain.len() / 4), plain)
}

/// [`gzip`], appended to `out` (a gRPC message's prefix, say).
pub fn gzip_after(out: Vec<u8>, plain: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    encoder.write_all(plain)?;
    encoder.finish()
}

/// `compressed` gunzipped, or `None` when it is not gzip or holds more than `limit` bytes:
/// a few bytes of a hostile answer must not become gigabytes of memory.
pub fn gunzip(compressed: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut plain)
        .ok()?;
    (plain.len() <= limit).then_some(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_fastest_level_and_round_trips() {
        let plain = b"service.name http.request.method url.path ".repeat(200);
        let compressed = gzip(&plain).unwrap();
        assert!(compressed.len() < plain.len() / 10, "{}", compressed.len());
        // The gzip header's XFL byte: 4 is written only for the fastest level.
        assert_eq!(compressed[8], 4);
        assert_eq!(gunzip(&compressed, plain.len()).unwrap(), plain);
    }

    #[test]
    fn gunzip_refuses_garbage_and_what_passes_the_limit() {
        assert_eq!(gunzip(b"not gzip at all", 1024), None);
        let bomb = gzip(&vec![0u8; 1 << 20]).unwrap();
        assert!(bomb.len() * 100 < 1 << 20, "{}", bomb.len());
        assert_eq!(gunzip(&bomb, (1 << 20) - 1), None);
        assert_eq!(gunzip(&bomb, 1 << 20).map(|p| p.len()), Some(1 << 20));
        let truncated = &bomb[..bomb.len() / 2];
        assert_eq!(gunzip(truncated, 1 << 20), None);
    }
}
