//! Restoring a delta image: the pages of its incremental regions that it does not hold come
//! from its parent chain, newest first (see `crate::image::chain`).
//!
//! The loader first fills every region from the delta image itself. For each incremental
//! region the pages still needed are the region minus its extents and holes (`REC_REGION_INCR`:
//! zero now). Each parent in turn supplies, for the needed pages that lie in one of its
//! regions, what its extents hold; its full regions settle the rest of their range (zero where
//! they saved nothing), its incremental regions pass their remaining pages on to the next
//! parent. That plan ([`crate::image::chain::supply`]) comes from the links' metadata, read and
//! checked once when the job was loaded (`Image::chain`): a link that supplies nothing is not
//! opened again; one that does is opened again by path and must still be the file that was
//! checked (device, inode, size and times: [`crate::image::chain::reopen`]). Every supplying
//! parent's page data is read once, front to back, and checked against its trailer hash, as the
//! delta's own is (`--eager`; the pieces a link supplies are read straight into place, the rest
//! only hashed); a lazy restore maps or reads only the pieces.

use super::RestoreError;
use crate::image::chain::{reopen, supply, Link};
use crate::image::reader::Image;
use std::fs::File;

/// Where a region of the delta image is mapped now: `(start, end, current address, whether
/// pages may be mapped into it from a link's file)` (a lazy restore, the region at its final
/// address and of a kind lazy restore maps).
pub type Place = (u64, u64, u64, bool);

/// A piece to copy from a parent's page data: data offset, length, destination address.
type Copy = (u64, u64, u64);

fn err(errno: i32, msg: String) -> RestoreError {
    RestoreError::new(errno, msg)
}

/// Fills the pages of `img`'s incremental regions that `img` does not hold from its chain
/// (`img.chain`, checked at load time). `places`: the delta's regions as mapped now, sorted by
/// start.
///
/// `lazy` (a lazy restore): runs of a link's pages long enough are mapped from its file
/// (`MAP_PRIVATE`, as the delta's own pages are) where the region allows it, the others read
/// into place, and no link's checksum is checked (as for the image's own mapped pages); the
/// links mapped from are named in `filled.chain_ids` for the restored agent (an address of
/// each in `filled.chain_at` until [`super::memory::Filled::resolve_ids`]). Otherwise each
/// supplying link's page data is read in full and checked.
pub fn fill(
    img: &Image,
    places: &[Place],
    lazy: bool,
    filled: &mut super::memory::Filled,
) -> Result<(), RestoreError> {
    let mut n_ids = 0usize;
    let mut n_mapped = 0usize;
    let plan = supply(img, &img.chain).map_err(|e| err(e.errno, e.msg))?;
    for (k, mut copies) in plan.into_iter().enumerate() {
        if copies.is_empty() {
            continue;
        }
        let link: &Link = &img.chain[k];
        let of = match k {
            0 => String::from("the delta image"),
            _ => img.chain[k - 1].path.display().to_string(),
        };
        let file = reopen(link, &of).map_err(|e| err(e.errno, e.msg))?;
        if lazy {
            let can_map =
                n_ids < filled.chain_at.len() && super::memory::file_refusal(&file).is_none();
            let at = map_or_read(
                &link.img,
                &file,
                &link.path,
                &copies,
                places,
                can_map,
                &mut n_mapped,
            )?;
            if let Some(at) = at {
                filled.chain_at[n_ids] = at;
                n_ids += 1;
            }
        } else {
            copy_from(&link.img, &file, &link.path, &mut copies, places)?;
        }
    }
    Ok(())
}

/// The place of `len` bytes at image address `dst`: its current address, and whether pages may
/// be mapped there.
fn place_of(places: &[Place], dst: u64, len: u64) -> Result<(u64, bool), RestoreError> {
    let i = places.partition_point(|p| p.1 <= dst);
    match places.get(i) {
        Some(&(start, end, cur, mappable)) if start <= dst && dst + len <= end => {
            Ok((cur + (dst - start), mappable))
        }
        _ => Err(err(libc::EINVAL, "corrupt image chain".into())),
    }
}

/// A lazy restore's pieces from one link: mapped from its file where allowed (`can_map`, the
/// region, the length) and long enough, else read into place (only those pieces: no
/// checksum, as for mapped pages). Returns the address of one of the link's mappings (None:
/// nothing was mapped).
fn map_or_read(
    link: &Image,
    file: &File,
    path: &std::path::Path,
    copies: &[Copy],
    places: &[Place],
    can_map: bool,
    n_mapped: &mut usize,
) -> Result<Option<u64>, RestoreError> {
    use super::memory::{LAZY_MAX_MAPPINGS, LAZY_MIN_EXTENT};
    let page = crate::image::format::PAGE as u64;
    let mut first = None;
    for &(off, len, dst) in copies {
        let (at, mappable) = place_of(places, dst, len)?;
        let aligned = off.is_multiple_of(page) && len.is_multiple_of(page);
        if can_map
            && mappable
            && aligned
            && len >= LAZY_MIN_EXTENT
            && *n_mapped < LAZY_MAX_MAPPINGS
            && link
                .raw_file_offset(off, len)
                .is_some_and(|o| super::memory::map_from_image(file, at, len, o))
        {
            *n_mapped += 1;
            first = first.or(Some(at));
            continue;
        }
        // SAFETY: the destination lies inside the writable mapping made for this region of the
        // delta image (checked against its bounds by place_of).
        let to = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len as usize) };
        // A compressed link's pieces are decompressed.
        link.read_pages(file, off, to).map_err(|e| {
            err(
                e.errno(),
                format!("{}: reading page data: {e}", path.display()),
            )
        })?;
    }
    Ok(first)
}

/// Streams `link`'s page data once, front to back, checking its hash: the pieces in `copies`
/// are read straight into place (and hashed there, as a full image's eager restore does), the
/// rest through a buffer, only to be hashed.
fn copy_from(
    link: &Image,
    file: &File,
    path: &std::path::Path,
    copies: &mut [Copy],
    places: &[Place],
) -> Result<(), RestoreError> {
    /// Bytes read per call: small enough that the hash finds them still in the cache.
    const CHUNK: u64 = 2 << 20;
    copies.sort_unstable();
    let corrupt = || {
        err(
            libc::EINVAL,
            format!(
                "{}: corrupt parent image: bad page data layout",
                path.display()
            ),
        )
    };
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; CHUNK as usize];
    // The data hash covers the memory pages only (saved files' contents follow them).
    let total = link.memory_len();
    let mut off = 0u64;
    let read = |off: u64, to: &mut [u8], h: &mut xxhash_rust::xxh3::Xxh3| {
        link.read_pages(file, off, to).map_err(|e| {
            err(
                e.errno(),
                format!("{}: reading page data: {e}", path.display()),
            )
        })?;
        h.update(to);
        Ok::<(), RestoreError>(())
    };
    for &(coff, len, addr) in copies.iter() {
        // Disjoint and inside the page data (split makes them so; a damaged link may not).
        if coff < off || coff.checked_add(len).is_none_or(|end| end > total) {
            return Err(corrupt());
        }
        while off < coff {
            let n = (coff - off).min(CHUNK) as usize;
            read(off, &mut buf[..n], &mut h)?;
            off += n as u64;
        }
        let (at, _) = place_of(places, addr, len)?;
        // SAFETY: the destination lies inside the writable mapping made for this region of the
        // delta image (checked against its bounds by place_of).
        let to = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len as usize) };
        for piece in to.chunks_mut(CHUNK as usize) {
            read(off, piece, &mut h)?;
            off += piece.len() as u64;
        }
    }
    while off < total {
        let n = (total - off).min(CHUNK) as usize;
        read(off, &mut buf[..n], &mut h)?;
        off += n as u64;
    }
    if h.digest() != link.trailer.data_hash {
        return Err(err(
            libc::EINVAL,
            format!(
                "{}: corrupt parent image: page data checksum mismatch",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::image::chain::subtract;

    #[test]
    fn subtract_leaves_the_gaps() {
        let mut out = Vec::new();
        subtract(0, 100, &[(10, 20), (30, 40), (90, 120)], &mut out);
        assert_eq!(out, vec![(0, 10), (20, 30), (40, 90)]);
        out.clear();
        subtract(15, 35, &[(10, 20), (30, 40)], &mut out);
        assert_eq!(out, vec![(20, 30)]);
        out.clear();
        subtract(0, 10, &[], &mut out);
        assert_eq!(out, vec![(0, 10)]);
    }
}
