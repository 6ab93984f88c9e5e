//! `cr_info --merge OUT`: folds a delta image and its chain into one full image, so the older
//! images of the chain can be deleted. The result holds the delta's metadata (without
//! `REC_PARENT` and `REC_REGION_INCR`) and, for every region, every page the chain gives it,
//! newest first, as `cr_restart` would assemble them (see `crate::restore::chain`); it is written
//! under a temporary name beside OUT and renamed into place once synced.

use super::chain::{self, ChainError};
use super::format::*;
use super::reader::Image;
use super::writer::MetaWriter;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn fail(errno: i32, msg: String) -> ChainError {
    ChainError { errno, msg }
}

fn io(what: &Path, e: std::io::Error) -> ChainError {
    fail(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{}: {e}", what.display()),
    )
}

/// One run of output pages: address, length, source image (0: the delta), its data offset.
type Piece = (u64, u64, usize, u64);

/// Folds the delta image at `path` and its chain into a full image at `out`; returns its size.
pub fn merge(path: &Path, out: &Path) -> Result<u64, ChainError> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let img =
        Image::open(&file).map_err(|e| fail(e.errno(), format!("{}: {e}", path.display())))?;
    if img.parent.is_none() {
        return Err(fail(
            libc::EINVAL,
            format!("{}: not a delta image (nothing to merge)", path.display()),
        ));
    }
    let links = chain::resolve(&img, path)?;
    let mut files = vec![file];
    for l in &links {
        files.push(File::open(&l.path).map_err(|e| io(&l.path, e))?);
    }
    let images: Vec<&Image> = std::iter::once(&img)
        .chain(links.iter().map(|l| &l.img))
        .collect();

    // Every region's pieces, newest first per page (as the restart fills them).
    let mut per_region: Vec<Vec<Piece>> = Vec::new();
    for r in &img.regions {
        let mut pieces: Vec<Piece> = r
            .extents
            .iter()
            .map(|e| (e.addr, e.len, 0, e.file_off))
            .collect();
        if r.incr.is_some() {
            let mut need = Vec::new();
            chain::needed_from_parents(r, &mut need);
            for (k, link) in images.iter().enumerate().skip(1) {
                if need.is_empty() {
                    break;
                }
                let mut copies = Vec::new();
                need = chain::split(link, &need, &mut copies);
                pieces.extend(
                    copies
                        .into_iter()
                        .map(|(off, len, addr)| (addr, len, k, off)),
                );
            }
        }
        pieces.sort_unstable();
        per_region.push(pieces);
    }

    // Metadata: the delta's records, each region with its new extents.
    let mut raw = vec![0u8; img.header.meta_len as usize];
    files[0]
        .read_exact_at(&mut raw, img.header.meta_offset)
        .map_err(|e| io(path, e))?;
    let n_ext: usize = per_region.iter().map(Vec::len).sum();
    let mut buf = vec![0u8; raw.len() + n_ext * core::mem::size_of::<Extent>() + 4096];
    let mut w = MetaWriter::new(&mut buf);
    let full = |_| fail(libc::ENOMEM, "merged metadata too large".into());
    let mut pos = 0usize;
    let mut region = 0usize;
    let mut data_len = 0u64;
    loop {
        let rh: RecordHeader = bytemuck::pod_read_unaligned(&raw[pos..pos + 8]);
        pos += 8;
        let body = &raw[pos..pos + rh.len as usize];
        pos += align8(rh.len as usize);
        match rh.kind {
            REC_PARENT | REC_REGION_INCR | REC_EXTENTS | REC_ZFRAMES | REC_ZORIGIN => {}
            REC_REGION => {
                let mut r: RegionRec = bytemuck::pod_read_unaligned(&body[..80]);
                let exts: Vec<Extent> = per_region[region]
                    .iter()
                    .map(|&(addr, len, _, _)| {
                        let e = Extent {
                            addr,
                            len,
                            file_off: data_len,
                        };
                        data_len += len;
                        e
                    })
                    .collect();
                r.n_extents = exts.len() as u32;
                w.record(REC_REGION, &r, &body[80..]).map_err(full)?;
                if !exts.is_empty() {
                    w.raw(REC_EXTENTS, bytemuck::cast_slice(&exts))
                        .map_err(full)?;
                }
                region += 1;
            }
            REC_END => {
                w.raw(REC_END, &[]).map_err(full)?;
                break;
            }
            k => w.raw(k, body).map_err(full)?,
        }
    }
    let meta_len = w.len();
    let meta = w.bytes().to_vec();

    let mut hdr = img.header;
    hdr.version = VERSION_FULL;
    hdr.meta_offset = PAGE as u64;
    hdr.meta_len = meta_len as u64;
    hdr.meta_hash = hash(&meta);
    hdr.data_offset = PAGE as u64 + page_align(meta_len as u64);
    // The saved files' contents (`REC_FILE_SPAN`) follow the memory pages, as in the delta;
    // their offsets are relative to that area, so it is copied as it is.
    let spans_off = img.header.data_offset + img.stored_memory_len();
    let spans_len = img.header.data_len.saturating_sub(img.stored_memory_len());
    hdr.data_len = data_len + spans_len;
    hdr.trailer_offset = hdr.data_offset + hdr.data_len;
    hdr.header_hash = 0;
    let mut hpage = vec![0u8; PAGE];
    let hsize = core::mem::size_of::<FileHeader>();
    hpage[..hsize].copy_from_slice(bytemuck::bytes_of(&hdr));
    hdr.header_hash = page_hash(&hpage, hsize);
    hpage[..hsize].copy_from_slice(bytemuck::bytes_of(&hdr));

    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.merge.tmp"));
    let res = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        let mut wr = std::io::BufWriter::with_capacity(4 << 20, &f);
        wr.write_all(&hpage).map_err(|e| io(&tmp, e))?;
        let mut m = meta.clone();
        m.resize(page_align(meta_len as u64) as usize, 0);
        wr.write_all(&m).map_err(|e| io(&tmp, e))?;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut chunk = vec![0u8; 4 << 20];
        for pieces in &per_region {
            for &(_, len, src, off) in pieces {
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(chunk.len() as u64) as usize;
                    images[src]
                        .read_pages(&files[src], off + done, &mut chunk[..n])
                        .map_err(|e| io(path, std::io::Error::other(e.to_string())))?;
                    h.update(&chunk[..n]);
                    wr.write_all(&chunk[..n]).map_err(|e| io(&tmp, e))?;
                    done += n as u64;
                }
            }
        }
        let mut done = 0u64;
        while done < spans_len {
            let n = (spans_len - done).min(chunk.len() as u64) as usize;
            files[0]
                .read_exact_at(&mut chunk[..n], spans_off + done)
                .map_err(|e| io(path, e))?;
            wr.write_all(&chunk[..n]).map_err(|e| io(&tmp, e))?;
            done += n as u64;
        }
        let mut tr = Trailer {
            magic: TRAILER_MAGIC,
            data_hash: h.digest(),
            total_len: hdr.trailer_offset + PAGE as u64,
            trailer_hash: 0,
        };
        let mut tpage = vec![0u8; PAGE];
        let tsize = core::mem::size_of::<Trailer>();
        tpage[..tsize].copy_from_slice(bytemuck::bytes_of(&tr));
        tr.trailer_hash = page_hash(&tpage, tsize);
        tpage[..tsize].copy_from_slice(bytemuck::bytes_of(&tr));
        wr.write_all(&tpage).map_err(|e| io(&tmp, e))?;
        wr.flush().map_err(|e| io(&tmp, e))?;
        drop(wr);
        f.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, out).map_err(|e| io(out, e))?;
        Ok(tr.total_len)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
