//! Compressors for initramfs images, filesystem images and disk images.
//!
//! Two xz flavours matter: the kernel's built-in xz decoder (used for an
//! initramfs) only verifies CRC32 checks and takes no BCJ filter for data, so
//! [`xz_kernel`] writes exactly that; disk images are big and only ever read by
//! userspace `xz`, so [`xz_file_parallel`] uses the multi-threaded encoder,
//! streaming from file to file so memory stays bounded whatever the image size.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use liblzma::stream::{Check, MtStreamBuilder, Stream};
use liblzma::write::XzEncoder;

/// The preset Debian's initramfs-tools uses for `COMPRESS=xz` (8 MiB dictionary):
/// a good ratio without asking a small node for a huge decompression buffer.
const KERNEL_XZ_PRESET: u32 = 6;

/// Preset for disk images: fast enough for multi-GiB images on two cores.
const DISK_XZ_PRESET: u32 = 6;

/// Uncompressed bytes per xz block in [`xz_file_parallel`]. Blocks are what
/// threads work on (and what lets `xz -T` decompress in parallel), so they
/// are kept smaller than liblzma's default of three dictionaries (24 MiB).
pub const DISK_XZ_BLOCK: u64 = 8 << 20;

/// Compresses `data` as an xz stream the Linux kernel can unpack: LZMA2 only
/// and a CRC32 check (the kernel decoder rejects CRC64 and SHA-256).
pub fn xz_kernel(data: &[u8]) -> Result<Vec<u8>> {
    let stream = Stream::new_easy_encoder(KERNEL_XZ_PRESET, Check::Crc32)
        .context("setting up the xz encoder")?;
    let mut enc = XzEncoder::new_stream(Vec::with_capacity(data.len() / 3), stream);
    enc.write_all(data).context("xz-compressing")?;
    enc.finish().context("finishing the xz stream")
}

/// Compresses `data` as one zstd frame at `level` (1–19; 0 means zstd's default).
pub fn zstd_bytes(data: &[u8], level: i32) -> Result<Vec<u8>> {
    zstd::bulk::compress(data, level).context("zstd-compressing")
}

/// Compresses the file `src` into `dst` (`.xz`) with `threads` encoder threads
/// (0 means one per CPU). The output has one xz block per
/// [`DISK_XZ_BLOCK`] of input and a CRC64 check; it appears under `dst` only
/// once complete. Returns the compressed size.
pub fn xz_file_parallel(src: &Path, dst: &Path, threads: u32) -> Result<u64> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    } else {
        threads
    };
    let stream = MtStreamBuilder::new()
        .threads(threads)
        .preset(DISK_XZ_PRESET)
        .block_size(DISK_XZ_BLOCK)
        .check(Check::Crc64)
        .encoder()
        .context("setting up the multi-threaded xz encoder")?;
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    crate::fs::write_atomic(dst, |out| {
        let mut reader = BufReader::with_capacity(1 << 20, input);
        let mut enc = XzEncoder::new_stream(BufWriter::with_capacity(1 << 20, out), stream);
        std::io::copy(&mut reader, &mut enc)
            .with_context(|| format!("compressing {} into {}", src.display(), dst.display()))?;
        let mut w = enc.finish().context("finishing the xz stream")?;
        w.flush()?;
        Ok(w.get_ref().metadata()?.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn kernel_xz_round_trips_with_crc32() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let xz = xz_kernel(&data).unwrap();
        // Stream flags byte 7: check type 0x01 is CRC32.
        assert_eq!(&xz[..6], b"\xFD7zXZ\0");
        assert_eq!(xz[7], 0x01);
        let mut back = Vec::new();
        liblzma::read::XzDecoder::new(&xz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn zstd_round_trips() {
        let data = b"labimg ".repeat(1000);
        let z = zstd_bytes(&data, 19).unwrap();
        assert!(z.len() < data.len() / 10);
        assert_eq!(zstd::bulk::decompress(&z, data.len()).unwrap(), data);
    }
}
