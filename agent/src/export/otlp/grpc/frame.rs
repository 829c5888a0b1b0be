//! gRPC's length-prefixed messages: a compressed flag, the length as 4 big-endian bytes,
//! then the message. loupe frames its requests itself so that each export is compressed
//! once, at gzip's fastest level: tonic's client compresses at level 6, about three times
//! the CPU, and again on every retry.

use std::{borrow::Cow, io};

use bytes::Bytes;

use super::super::compress::{self, Gzip};

const PREFIX: usize = 5;

/// `message` as a request body of one message, gzipped when given a compressor.
pub fn frame(message: &[u8], gzip: Option<&mut Gzip>) -> io::Result<Bytes> {
    let mut out = vec![u8::from(gzip.is_some()), 0, 0, 0, 0];
    if let Some(gzip) = gzip {
        out = gzip.compress(out, message)?;
    } else {
        out.extend_from_slice(message);
    }
    let len = u32::try_from(out.len() - PREFIX)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message over 4 GiB"))?;
    out[1..PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(out.into())
}

/// The first message of an answer's `body`, decompressed as its `grpc-encoding` header
/// says, at most `limit` bytes; `None` when the body holds no whole message or one that
/// cannot be decompressed.
pub fn first_message<'a>(
    body: &'a [u8],
    encoding: Option<&str>,
    limit: usize,
) -> Option<Cow<'a, [u8]>> {
    let (&[flag, a, b, c, d], rest) = body.split_first_chunk::<PREFIX>()?;
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let message = rest.get(..len)?;
    match (flag, encoding) {
        (0, _) => Some(Cow::Borrowed(message)),
        (1, Some("gzip")) => compress::gunzip(message, limit).map(Cow::Owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_message_reads_back_plain_and_gzipped() {
        let message = b"resource spans resource spans resource spans".repeat(50);
        let plain = frame(&message, None).unwrap();
        assert_eq!(plain[0], 0);
        assert_eq!(&plain[1..5], &(message.len() as u32).to_be_bytes());
        assert_eq!(first_message(&plain, None, 1 << 20).unwrap(), &message[..]);

        let gzipped = frame(&message, Some(&mut Gzip::default())).unwrap();
        assert_eq!(gzipped[0], 1);
        let len = u32::from_be_bytes(gzipped[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, gzipped.len() - 5);
        assert!(len < message.len() / 10);
        // Fastest level: the gzip header's XFL byte.
        assert_eq!(gzipped[5 + 8], 4);
        assert_eq!(
            first_message(&gzipped, Some("gzip"), 1 << 20).unwrap(),
            &message[..]
        );
    }

    #[test]
    fn broken_answers_hold_no_message() {
        let gzipped = frame(b"answer", Some(&mut Gzip::default())).unwrap();
        // Compressed with no encoding named, or one loupe did not offer.
        assert_eq!(first_message(&gzipped, None, 1024), None);
        assert_eq!(first_message(&gzipped, Some("zstd"), 1024), None);
        // Cut in the prefix or in the message.
        assert_eq!(first_message(&gzipped[..3], Some("gzip"), 1024), None);
        assert_eq!(
            first_message(&gzipped[..gzipped.len() - 1], Some("gzip"), 1024),
            None
        );
        // An unknown flag.
        let mut odd = frame(b"answer", None).unwrap().to_vec();
        odd[0] = 2;
        assert_eq!(first_message(&odd, None, 1024), None);
        // Over the limit once decompressed.
        let big = frame(&[7u8; 4096], Some(&mut Gzip::default())).unwrap();
        assert_eq!(first_message(&big, Some("gzip"), 4095), None);
        // An empty message is a message (a default answer).
        let empty = frame(b"", None).unwrap();
        assert_eq!(first_message(&empty, None, 1024).unwrap(), &b""[..]);
    }
}
