//! The zstd stage of sqlvault, as a library: independent frames with reusable
//! contexts, and a streaming writer with an explicit finish. Synchronous; no runtime.
//!
//! Pages are compressed in frames of many pages (tens to hundreds of KiB): a frame per
//! page would lose most of the ratio, one stream per database would make a single page
//! unreachable without decompressing everything before it. Every frame carries zstd's
//! content checksum and its decompressed size, so the stock `zstd` tool can check and
//! decode it.
//!
//! # Main types
//!
//! - [`FrameCompressor`] / [`FrameDecompressor`] keep one zstd context each, so frames
//!   cost no allocation; decompression is bounded by a `max_len` the caller knows
//!   ([`frame_content_size`] reads what a frame claims, to check before trusting it).
//! - [`CompressWriter`] is the streaming form for large sequential payloads, with
//!   optional worker threads; its [`finish`](CompressWriter::finish) ends the frame,
//!   and a skipped `finish` makes every decoder report truncation.
//!   [`decompress_reader`] reads such a stream back.
//!
//! Errors are [`std::io::Error`], as zstd reports them: a damaged frame, a frame
//! larger than the bound, or the underlying writer's failure. This crate has no
//! error type of its own because it adds no failure of its own.
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use sqlvault_compress::{
//!     CompressWriter, DEFAULT_LEVEL, FrameCompressor, FrameDecompressor, decompress_reader, frame_content_size,
//! };
//!
//! # fn main() -> std::io::Result<()> {
//! let pages = vec![7u8; 64 * 4096];
//!
//! // One frame, appended to a buffer that may already hold others.
//! let mut packed = Vec::new();
//! let n = FrameCompressor::new(DEFAULT_LEVEL)?.compress_into(&pages, &mut packed)?;
//! assert_eq!(n, packed.len());
//! assert_eq!(frame_content_size(&packed), Some(pages.len() as u64));
//!
//! // Decompression never produces more than the bound the caller gives.
//! let mut out = Vec::new();
//! FrameDecompressor::new()?.decompress_into(&packed, &mut out, pages.len())?;
//! assert_eq!(out, pages);
//!
//! // The streaming form: `finish` ends the frame.
//! let mut w = CompressWriter::new(Vec::new(), DEFAULT_LEVEL, 0)?;
//! w.write_all(&pages)?;
//! let stream = w.finish()?;
//! let mut back = Vec::new();
//! decompress_reader(&stream[..])?.read_to_end(&mut back)?;
//! assert_eq!(back, pages);
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

use std::fmt;
use std::io::{self, Write};

/// Default level: zstd's own default, the same as the `zstd -3` peers are measured with.
pub const DEFAULT_LEVEL: i32 = 3;

/// Compresses independent frames with one reusable zstd context (content checksum and
/// content size included in every frame). Not shared between threads: make one per
/// worker.
pub struct FrameCompressor {
    inner: zstd::bulk::Compressor<'static>,
}

impl fmt::Debug for FrameCompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameCompressor")
    }
}

impl FrameCompressor {
    /// A compressor at `level` (1–22; negative levels are zstd's fast modes).
    pub fn new(level: i32) -> io::Result<Self> {
        let mut inner = zstd::bulk::Compressor::new(level)?;
        // The checksum lets a decoder notice a damaged frame even without our chunk
        // hashes, e.g. when someone rebuilds a snapshot with the stock zstd tool.
        inner.include_checksum(true)?;
        inner.include_contentsize(true)?;
        Ok(FrameCompressor { inner })
    }

    /// Compresses `src` into one complete zstd frame appended to `dst` (what `dst`
    /// held is kept); returns the frame's length.
    pub fn compress_into(&mut self, src: &[u8], dst: &mut Vec<u8>) -> io::Result<usize> {
        let start = dst.len();
        dst.reserve(zstd::zstd_safe::compress_bound(src.len()));
        let n = self.inner.compress_to_buffer(src, &mut SpareVec(dst, usize::MAX))?;
        debug_assert_eq!(dst.len(), start + n);
        Ok(n)
    }
}

/// Adapter so zstd writes into a Vec's spare capacity (after its current contents)
/// and extends its length by what it wrote; `.1` caps how much zstd may write.
struct SpareVec<'a>(&'a mut Vec<u8>, usize);

// SAFETY: the pointer and capacity describe the Vec's uninitialised tail, and
// `filled_until` only extends the length over bytes zstd reports as written.
// The crate's only unsafe code: it lets zstd write straight into the caller's buffer
// (no second copy of every frame).
#[allow(unsafe_code)]
unsafe impl zstd::zstd_safe::WriteBuf for SpareVec<'_> {
    fn as_slice(&self) -> &[u8] {
        &[]
    }
    fn capacity(&self) -> usize {
        (self.0.capacity() - self.0.len()).min(self.1)
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        let len = self.0.len();
        // SAFETY: len <= capacity, so the offset stays inside the allocation.
        unsafe { self.0.as_mut_ptr().add(len) }
    }
    unsafe fn filled_until(&mut self, n: usize) {
        let len = self.0.len();
        // SAFETY: zstd initialised n bytes after the current length.
        unsafe { self.0.set_len(len + n) }
    }
}

/// Decompresses frames with one reusable zstd context, each into a buffer bounded by
/// the caller. Not shared between threads: make one per worker.
pub struct FrameDecompressor {
    inner: zstd::bulk::Decompressor<'static>,
}

impl fmt::Debug for FrameDecompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameDecompressor")
    }
}

impl FrameDecompressor {
    /// A new decompression context; fails only if zstd cannot allocate one.
    pub fn new() -> io::Result<Self> {
        Ok(FrameDecompressor {
            inner: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Decompresses one frame into `dst` (cleared first). Fails if the frame is damaged
    /// or would decompress to more than `max_len` bytes.
    pub fn decompress_into(&mut self, src: &[u8], dst: &mut Vec<u8>, max_len: usize) -> io::Result<()> {
        dst.clear();
        dst.reserve(max_len);
        let n = self.inner.decompress_to_buffer(src, &mut SpareVec(dst, max_len))?;
        debug_assert_eq!(n, dst.len());
        Ok(())
    }
}

/// The decompressed size a frame declares in its header, if it does. The claim is the
/// writer's: check it against a bound before allocating for it.
pub fn frame_content_size(frame: &[u8]) -> Option<u64> {
    zstd::zstd_safe::get_frame_content_size(frame).ok().flatten()
}

/// Streaming zstd writer. Call [`CompressWriter::finish`]: without it the frame has no
/// end and every decoder reports it as truncated.
pub struct CompressWriter<W: Write> {
    inner: zstd::stream::write::Encoder<'static, W>,
}

impl<W: Write> fmt::Debug for CompressWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CompressWriter")
    }
}

impl<W: Write> CompressWriter<W> {
    /// A writer at `level` using `threads` worker threads (0 = single-threaded).
    pub fn new(w: W, level: i32, threads: u32) -> io::Result<Self> {
        let mut inner = zstd::stream::write::Encoder::new(w, level)?;
        inner.include_checksum(true)?;
        if threads > 0 {
            inner.multithread(threads)?;
        }
        Ok(CompressWriter { inner })
    }

    /// Ends the frame (flushing every buffered byte and the checksum) and returns the
    /// inner writer. Dropping the writer without it leaves a truncated frame.
    pub fn finish(self) -> io::Result<W> {
        self.inner.finish()
    }
}

impl<W: Write> Write for CompressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Streaming zstd reader over `r`: decodes every frame of the stream; a truncated
/// stream (a writer whose `finish` was skipped) is an error, never a short read.
pub fn decompress_reader<R: io::BufRead>(r: R) -> io::Result<impl io::Read> {
    zstd::stream::read::Decoder::with_buffer(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn frames_round_trip_and_reject_damage() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut c = FrameCompressor::new(DEFAULT_LEVEL).unwrap();
        let mut frame = vec![9, 9]; // appending keeps what is there
        let n = c.compress_into(&data, &mut frame).unwrap();
        assert_eq!(frame.len(), n + 2);
        assert_eq!(frame_content_size(&frame[2..]), Some(data.len() as u64));
        assert!(n < data.len() / 4);
        let mut d = FrameDecompressor::new().unwrap();
        let mut out = Vec::new();
        d.decompress_into(&frame[2..], &mut out, data.len()).unwrap();
        assert_eq!(out, data);
        // Too small a bound is an error, not a truncated result.
        assert!(d.decompress_into(&frame[2..], &mut out, data.len() - 1).is_err());
        let mut bad = frame[2..].to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert!(d.decompress_into(&bad, &mut out, data.len()).is_err());
    }

    #[test]
    fn writer_without_finish_is_truncated() {
        let data = vec![7u8; 100_000];
        let mut w = CompressWriter::new(Vec::new(), DEFAULT_LEVEL, 0).unwrap();
        w.write_all(&data).unwrap();
        let full = w.finish().unwrap();
        let mut out = Vec::new();
        decompress_reader(&full[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let mut w = CompressWriter::new(Vec::new(), DEFAULT_LEVEL, 0).unwrap();
        w.write_all(&data).unwrap();
        w.flush().unwrap();
        let partial = std::mem::replace(&mut w.inner, zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap());
        let unfinished = partial.get_ref().clone();
        let mut out = Vec::new();
        assert!(
            decompress_reader(&unfinished[..])
                .unwrap()
                .read_to_end(&mut out)
                .is_err()
        );
    }
}
