//! Metadata hygiene: what a stored original keeps of the metadata it was uploaded with.
//!
//! Only the EXIF orientation (rewritten as an EXIF block holding that one tag) and the ICC
//! colour profile stay. The rest goes: EXIF (GPS position, camera, serial numbers, times,
//! embedded thumbnails), XMP, IPTC, comments, other application segments, PNG text and
//! time chunks, and whatever follows the picture's end (a JPEG's end-of-image marker, a
//! PNG's IEND, a WebP's RIFF): in a JPEG, the extra pictures of an MPF file, each with its
//! own EXIF. The bytes are edited, never re-encoded, so the pixels stay exactly as
//! uploaded; and streamed, never held whole: the file's structure is walked once to list
//! the edits, then copied once with them applied. GIF is kept as it is.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

use image::metadata::Orientation;
use sha1::{Digest, Sha1};

use super::inspect::jpeg_length;
use super::{MediaError, StagedUpload};
use crate::domain::ImageFormat;

/// The largest EXIF block read to find the orientation (a JPEG's is at most 64 KiB); a
/// larger one is dropped without looking.
const MAX_EXIF: u64 = 1 << 20;
const READ_BUFFER: usize = 64 * 1024;
/// The WebP VP8X chunk's flags for an EXIF and an XMP chunk.
const VP8X_EXIF: u8 = 0b0000_1000;
const VP8X_XMP: u8 = 0b0000_0100;

/// A change to the file: the bytes in `range` replaced by `with` (often nothing).
#[derive(Debug, PartialEq)]
struct Edit {
    range: Range<u64>,
    with: Vec<u8>,
}

impl Edit {
    fn drop(range: Range<u64>) -> Self {
        Self {
            range,
            with: Vec::new(),
        }
    }
}

/// The staged upload (of `format`, inspected) without the metadata it must not keep: the
/// same one if it had none, else a new temp file in `tmp`, with its own sha1 and size
/// (the stored file is named by what is stored). Blocking: run it on a blocking thread.
pub fn clean(
    staged: StagedUpload,
    tmp: &Path,
    format: ImageFormat,
) -> Result<StagedUpload, MediaError> {
    let mut file = BufReader::with_capacity(READ_BUFFER, File::open(&staged.path)?);
    let length = staged.bytes;
    let edits = match format {
        ImageFormat::Jpeg => jpeg_edits(&mut file, length),
        ImageFormat::Png => png_edits(&mut file, length),
        ImageFormat::Webp => webp_edits(&mut file, length),
        ImageFormat::Gif => Ok(Vec::new()),
    };
    // The decoder read this file already, so a structure these walks cannot follow is
    // unexpected; refused rather than stored with what it may carry.
    let edits = edits.map_err(|e| {
        MediaError::Invalid(format!(
            "the {} metadata could not be removed: {e}",
            format.as_str()
        ))
    })?;
    if edits.is_empty() {
        return Ok(staged);
    }
    file.seek(SeekFrom::Start(0))?;
    let mut out = Hashing {
        file: tempfile::NamedTempFile::new_in(tmp)?,
        sha1: Sha1::new(),
        written: 0,
    };
    let mut at = 0;
    for edit in edits {
        io::copy(&mut (&mut file).take(edit.range.start - at), &mut out)?;
        file.seek_relative(
            i64::try_from(edit.range.end - edit.range.start).map_err(io::Error::other)?,
        )?;
        out.write_all(&edit.with)?;
        at = edit.range.end;
    }
    io::copy(&mut (&mut file).take(length.saturating_sub(at)), &mut out)?;
    out.file.flush()?;
    Ok(StagedUpload {
        path: out.file.into_temp_path(),
        sha1: out.sha1.finalize().into(),
        bytes: out.written,
    })
}

/// A temp file that hashes and counts what is written to it.
struct Hashing {
    file: tempfile::NamedTempFile,
    sha1: Sha1,
    written: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.sha1.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// JPEG: the segments before the first scan, then what follows end-of-image.
fn jpeg_edits(file: &mut BufReader<File>, length: u64) -> io::Result<Vec<Edit>> {
    let mut edits = Vec::new();
    let mut at = 2; // after SOI
    file.seek(SeekFrom::Start(at))?;
    loop {
        let mut marker = [0u8; 2];
        file.read_exact(&mut marker)?;
        if marker[0] != 0xFF {
            return Err(io::Error::other("a segment does not start with a marker"));
        }
        match marker[1] {
            // Fill byte: the marker's code follows.
            0xFF => {
                file.seek_relative(-1)?;
                at += 1;
                continue;
            }
            // The first scan: the segments are over.
            0xDA => break,
            // Stand-alone markers (TEM, RSTn): no length.
            0x01 | 0xD0..=0xD7 => {
                at += 2;
                continue;
            }
            _ => {}
        }
        let mut len = [0u8; 2];
        file.read_exact(&mut len)?;
        let end = at + 2 + u64::from(u16::from_be_bytes(len));
        let mut head = [0u8; 14];
        let seen = read_up_to(file, &mut head, end.saturating_sub(at + 4))?;
        let head = &head[..seen];
        match (marker[1], head) {
            (0xE1, h) if h.starts_with(b"Exif\0\0") => {
                let exif = read_exact_at(file, at + 10, end.saturating_sub(at + 10))?;
                let with = orientation_only(exif.as_deref())
                    .map(|tiff| jpeg_segment(0xE1, &[b"Exif\0\0".as_slice(), &tiff].concat()))
                    .unwrap_or_default();
                edits.push(Edit {
                    range: at..end,
                    with,
                });
            }
            // The ICC profile; JFIF; Adobe's (how to read CMYK and YCCK): not metadata
            // but how to render the picture.
            (0xE2, h) if h.starts_with(b"ICC_PROFILE\0") => {}
            (0xE0 | 0xEE, _) => {}
            // Any other application segment (XMP, MPF, IPTC, makers' own), and comments.
            (0xE0..=0xEF | 0xFE, _) => edits.push(Edit::drop(at..end)),
            _ => {}
        }
        file.seek(SeekFrom::Start(end))?;
        at = end;
    }
    file.seek(SeekFrom::Start(0))?;
    let picture = jpeg_length(&mut *file)?;
    if picture < length {
        edits.push(Edit::drop(picture..length));
    }
    Ok(edits)
}

/// PNG: text, time and EXIF chunks, and anything after IEND.
fn png_edits(file: &mut BufReader<File>, length: u64) -> io::Result<Vec<Edit>> {
    let mut edits = Vec::new();
    let mut at = 8; // after the signature
    file.seek(SeekFrom::Start(at))?;
    loop {
        let mut head = [0u8; 8];
        file.read_exact(&mut head)?;
        let len = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        let end = at + 12 + len;
        match &head[4..8] {
            b"tEXt" | b"zTXt" | b"iTXt" | b"tIME" => edits.push(Edit::drop(at..end)),
            b"eXIf" => {
                let exif = read_exact_at(file, at + 8, len)?;
                let with = orientation_only(exif.as_deref())
                    .map(|tiff| png_chunk(b"eXIf", &tiff))
                    .unwrap_or_default();
                edits.push(Edit {
                    range: at..end,
                    with,
                });
            }
            b"IEND" => {
                if end < length {
                    edits.push(Edit::drop(end..length));
                }
                return Ok(edits);
            }
            _ => {}
        }
        file.seek(SeekFrom::Start(end))?;
        at = end;
    }
}

/// WebP: the EXIF and XMP chunks (and their flags), and anything after the RIFF.
fn webp_edits(file: &mut BufReader<File>, length: u64) -> io::Result<Vec<Edit>> {
    let mut riff = [0u8; 12];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut riff)?;
    let riff_end =
        (8 + u64::from(u32::from_le_bytes([riff[4], riff[5], riff[6], riff[7]]))).min(length);
    let mut chunks = Vec::new();
    let mut flags_at = None;
    let mut exif_kept = false;
    let mut at = 12;
    while at + 8 <= riff_end {
        let mut head = [0u8; 8];
        file.read_exact(&mut head)?;
        let size = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
        let end = (at + 8 + size + (size & 1)).min(riff_end);
        match &head[..4] {
            b"VP8X" => {
                let mut flags = [0u8; 1];
                file.read_exact(&mut flags)?;
                flags_at = Some((at + 8, flags[0]));
            }
            b"EXIF" => {
                let exif = read_exact_at(file, at + 8, size)?;
                let with = orientation_only(exif.as_deref())
                    .map(|tiff| riff_chunk(b"EXIF", &tiff))
                    .unwrap_or_default();
                exif_kept = !with.is_empty();
                chunks.push(Edit {
                    range: at..end,
                    with,
                });
            }
            b"XMP " => chunks.push(Edit::drop(at..end)),
            _ => {}
        }
        file.seek(SeekFrom::Start(end))?;
        at = end;
    }
    let trailing = (riff_end < length).then(|| Edit::drop(riff_end..length));
    if chunks.is_empty() {
        return Ok(trailing.into_iter().collect());
    }
    // The RIFF's size and the VP8X flags follow what is left.
    let removed: u64 = chunks.iter().map(|e| e.range.end - e.range.start).sum();
    let added: u64 = chunks.iter().map(|e| e.with.len() as u64).sum();
    let size =
        u32::try_from((riff_end - 8 + added).saturating_sub(removed)).map_err(io::Error::other)?;
    let mut edits = vec![Edit {
        range: 4..8,
        with: size.to_le_bytes().to_vec(),
    }];
    if let Some((at, flags)) = flags_at {
        let exif = if exif_kept { VP8X_EXIF } else { 0 };
        edits.push(Edit {
            range: at..at + 1,
            with: vec![(flags & !(VP8X_EXIF | VP8X_XMP)) | exif],
        });
    }
    edits.extend(chunks);
    edits.extend(trailing);
    Ok(edits)
}

/// Reads up to `buf.len()` bytes, at most `limit`; returns how many.
fn read_up_to(file: &mut impl Read, buf: &mut [u8], limit: u64) -> io::Result<usize> {
    let want = buf.len().min(usize::try_from(limit).unwrap_or(usize::MAX));
    let mut seen = 0;
    while seen < want {
        match file.read(&mut buf[seen..want])? {
            0 => break,
            n => seen += n,
        }
    }
    Ok(seen)
}

/// The `len` bytes at `at`, or `None` when they are more than [`MAX_EXIF`].
fn read_exact_at(file: &mut (impl Read + Seek), at: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
    if len > MAX_EXIF {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(at))?;
    let mut data = vec![0; usize::try_from(len).map_err(io::Error::other)?];
    file.read_exact(&mut data)?;
    Ok(Some(data))
}

fn jpeg_segment(marker: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0xFF, marker];
    out.extend_from_slice(
        &u16::try_from(data.len() + 2)
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(data);
    out
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(data.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

fn riff_chunk(id: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = id.to_vec();
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// An EXIF block (a TIFF structure) holding only the orientation `exif` gives, or `None`
/// when it gives none or the upright one.
fn orientation_only(exif: Option<&[u8]>) -> Option<Vec<u8>> {
    // Some writers keep the JPEG segment's "Exif\0\0" prefix in PNG and WebP too.
    let tiff = exif.map(|e| e.strip_prefix(b"Exif\0\0").unwrap_or(e))?;
    let orientation = Orientation::from_exif_chunk(tiff)?;
    if orientation == Orientation::NoTransforms {
        return None;
    }
    let mut block = b"MM\0\x2a\0\0\0\x08".to_vec(); // big-endian; the IFD at offset 8
    block.extend_from_slice(&1u16.to_be_bytes()); // one entry:
    block.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation,
    block.extend_from_slice(&3u16.to_be_bytes()); // a SHORT,
    block.extend_from_slice(&1u32.to_be_bytes()); // one of them,
    block.extend_from_slice(&u16::from(orientation.to_exif()).to_be_bytes());
    block.extend_from_slice(&[0, 0]); // (padding the value to four bytes)
    block.extend_from_slice(&0u32.to_be_bytes()); // and no further IFD
    Some(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TIFF of an EXIF block with an orientation and a GPS IFD pointer.
    fn exif_with_gps(orientation: u16) -> Vec<u8> {
        let mut tiff = b"II\x2a\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&2u16.to_le_bytes());
        for (tag, kind, value) in [(0x0112u16, 3u16, u32::from(orientation)), (0x8825, 4, 38)] {
            tiff.extend_from_slice(&tag.to_le_bytes());
            tiff.extend_from_slice(&kind.to_le_bytes());
            tiff.extend_from_slice(&1u32.to_le_bytes());
            tiff.extend_from_slice(&value.to_le_bytes());
        }
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff
    }

    #[test]
    fn only_a_turned_orientation_survives() {
        let kept = orientation_only(Some(&exif_with_gps(6))).expect("an orientation block");
        assert_eq!(
            Orientation::from_exif_chunk(&kept),
            Some(Orientation::Rotate90)
        );
        assert_eq!(kept.len(), 26, "one IFD entry, nothing else");
        assert_eq!(orientation_only(Some(&exif_with_gps(1))), None);
        assert_eq!(orientation_only(Some(b"garbage")), None);
        assert_eq!(orientation_only(None), None);
    }
}
