//! gzip for export requests, and bounded gunzip for the answers that come back compressed.

use std::io::{self, Read as _, Write as _};

use flate2::write::DeflateEncoder;

/// gzip at the fastest level, keeping its compressor from one request to the next. Export
/// batches are a few hundred spans whose attribute keys and resource repeat, so level 1
/// already shrinks them about tenfold; the default level 6 took about three times the CPU
/// for some 12 % fewer bytes. A new compressor per request allocated and zeroed its
/// window and tables each time, about 500 instructions per span of a 512-span batch.
#[derive(Default)]
pub struct Gzip {
    deflate: Option<DeflateEncoder<Vec<u8>>>,
}

/// A gzip member header: deflate, no name or time, XFL 4 (fastest level), OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 0xff];

impl Gzip {
    /// `plain` gzipped, appended to `out` (a gRPC message's prefix, say).
    pub fn compress(&mut self, mut out: Vec<u8>, plain: &[u8]) -> io::Result<Vec<u8>> {
        // Export batches shrink about ninefold: room for that, so the output rarely grows.
        out.reserve(HEADER.len() + plain.len() / 4);
        out.extend_from_slice(&HEADER);
        let mut deflate = match self.deflate.take() {
            // Reset when the last request was taken from it: only the output changes.
            Some(mut deflate) => {
                *deflate.get_mut() = out;
                deflate
            }
            None => DeflateEncoder::new(out, flate2::Compression::fast()),
        };
        deflate.write_all(plain)?;
        deflate.try_finish()?;
        // Takes the output and readies the compressor for the next request. A request that
        // failed leaves no compressor behind, and the next one starts a new one.
        let mut out = deflate.reset(Vec::new())?;
        self.deflate = Some(deflate);
        let mut crc = flate2::Crc::new();
        crc.update(plain);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE: the length modulo 2^32, as RFC 1952 has it.
        out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        Ok(out)
    }
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

    fn gzip(plain: &[u8]) -> Vec<u8> {
        Gzip::default().compress(Vec::new(), plain).unwrap()
    }

    #[test]
    fn gzip_round_trips_and_its_compressor_is_reused_cleanly() {
        let plain = b"service.name http.request.method url.path ".repeat(200);
        let compressed = gzip(&plain);
        assert!(compressed.len() < plain.len() / 10, "{}", compressed.len());
        assert_eq!(gunzip(&compressed, plain.len()).unwrap(), plain);
        // The same as flate2's own gzip at the fastest level, header included.
        let mut reference = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        reference.write_all(&plain).unwrap();
        assert_eq!(compressed, reference.finish().unwrap());

        // Reused: each request decodes alone (no state carried over), after a prefix.
        let mut gzip_again = Gzip::default();
        let other = b"GET /api/items/{id} 200 ".repeat(300);
        for (round, text) in [&plain[..], &other[..], b"", &plain[..]].iter().enumerate() {
            let out = gzip_again.compress(vec![9, 9], text).unwrap();
            assert_eq!(&out[..2], &[9, 9]);
            assert_eq!(
                gunzip(&out[2..], text.len()).as_deref(),
                Some(*text),
                "round {round}"
            );
        }
        assert_eq!(gzip_again.compress(Vec::new(), &plain).unwrap(), compressed);
    }

    #[test]
    fn gunzip_refuses_garbage_and_what_passes_the_limit() {
        assert_eq!(gunzip(b"not gzip at all", 1024), None);
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() * 100 < 1 << 20, "{}", bomb.len());
        assert_eq!(gunzip(&bomb, (1 << 20) - 1), None);
        assert_eq!(gunzip(&bomb, 1 << 20).map(|p| p.len()), Some(1 << 20));
        let truncated = &bomb[..bomb.len() / 2];
        assert_eq!(gunzip(truncated, 1 << 20), None);
    }
}
