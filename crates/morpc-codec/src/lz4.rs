//! LZ4 *block* compression helpers (no frame header, no size prefix, as Go's
//! `lz4.CompressBlock`). Decompression first measures the exact output size by walking
//! the block's sequences, so memory never follows anything but real content, and is
//! bounded by a caller-given limit.

use bytes::{BufMut, BytesMut};

use crate::{CodecError, FrameError};

/// Appends the LZ4 block compression of `src` to `dst`.
pub(crate) fn compress_into(src: &[u8], dst: &mut BytesMut) {
    let start = dst.len();
    let bound = lz4_flex::block::get_maximum_output_size(src.len());
    dst.put_bytes(0, bound);
    let n = lz4_flex::block::compress_into(src, &mut dst[start..])
        .expect("output sized by get_maximum_output_size");
    dst.truncate(start + n);
}

/// Decompresses the LZ4 block `src`, refusing output larger than `limit` bytes.
pub(crate) fn decompress(src: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let size = decompressed_len(src)?;
    if size > limit {
        return Err(CodecError::FrameTooLarge { size, max: limit });
    }
    let mut out = vec![0; size];
    match lz4_flex::block::decompress_into(src, &mut out) {
        Ok(n) if n == size => Ok(out),
        _ => Err(FrameError::CorruptCompression.into()),
    }
}

/// The number of bytes the LZ4 block `src` decompresses to, found by walking its
/// sequences without producing output.
fn decompressed_len(src: &[u8]) -> Result<usize, CodecError> {
    let corrupt = || CodecError::from(FrameError::CorruptCompression);
    let mut pos = 0;
    let mut total: usize = 0;
    if src.is_empty() {
        return Ok(0);
    }
    loop {
        let token = *src.get(pos).ok_or_else(corrupt)?;
        pos += 1;
        let literals = extended_len(src, &mut pos, usize::from(token >> 4)).ok_or_else(corrupt)?;
        pos = pos
            .checked_add(literals)
            .filter(|&p| p <= src.len())
            .ok_or_else(corrupt)?;
        total = total.checked_add(literals).ok_or_else(corrupt)?;
        if pos == src.len() {
            return Ok(total);
        }
        let offset = src.get(pos..pos + 2).ok_or_else(corrupt)?;
        if offset == [0, 0] {
            return Err(corrupt());
        }
        pos += 2;
        let matched = extended_len(src, &mut pos, usize::from(token & 0x0f)).ok_or_else(corrupt)?;
        total = total.checked_add(matched + 4).ok_or_else(corrupt)?;
    }
}

/// Reads the LZ4 length extension bytes that follow a nibble of 15.
fn extended_len(src: &[u8], pos: &mut usize, nibble: usize) -> Option<usize> {
    let mut len = nibble;
    if nibble == 15 {
        loop {
            let b = *src.get(*pos)?;
            *pos += 1;
            len = len.checked_add(usize::from(b))?;
            if b != 255 {
                break;
            }
        }
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_measures_exactly() {
        for input in [
            &b""[..],
            b"a",
            &[7u8; 10_000],
            b"hello hello hello hello world",
        ] {
            let mut dst = BytesMut::new();
            compress_into(input, &mut dst);
            assert_eq!(decompressed_len(&dst).unwrap(), input.len());
            assert_eq!(decompress(&dst, input.len()).unwrap(), input);
        }
    }

    #[test]
    fn refuses_output_beyond_the_limit() {
        let mut dst = BytesMut::new();
        compress_into(&[0u8; 4096], &mut dst);
        assert!(matches!(
            decompress(&dst, 4095),
            Err(CodecError::FrameTooLarge {
                size: 4096,
                max: 4095
            })
        ));
    }

    #[test]
    fn rejects_corrupt_blocks() {
        // Literal run longer than the block, zero offset, and a truncated offset.
        for bad in [&[0x50, 1, 2][..], &[0x10, 0x61, 0, 0], &[0x10, 0x61, 1]] {
            assert!(decompress(bad, 1 << 20).is_err(), "{bad:?}");
        }
    }
}
