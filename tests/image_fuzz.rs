//! The image reader against damaged and hostile images (issue 13, "bad input"): a deterministic
//! mutation fuzzer over realistic plain and tree images built with the format's own writer.
//!
//! - Random corruption (byte flips, truncation) is always refused — by a header, metadata,
//!   trailer, manifest or page-data checksum — unless it only touched padding no restore reads.
//! - Structurally hostile images whose checksums were recomputed after the change (forged
//!   lengths, offsets, counts, record kinds) never panic the reader and never make it allocate
//!   more than the file can justify: every answer is `Ok` or a one-line error.
//! - Writer → reader round trips give back exactly what was written.
//!
//! - Real images written by cr_checkpoint (a single process and a tree of five) get the same
//!   bit flips and truncations, and their length and offset fields forged with every checksum
//!   recomputed.
//! - Every read runs under a counting allocator: no single allocation may exceed what the
//!   file's size justifies (its length plus 1 MiB).
//!
//! `FUZZ_ITERS` sets the number of mutations per kind (default 2000; the soak uses millions).

mod common;

use cr::image::format::*;
use cr::image::reader::Image;
use cr::image::tree;
use cr::image::writer::MetaWriter;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn iters() -> u64 {
    std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// What an image built by [`build`] holds, to compare after reading it back.
struct Built {
    bytes: Vec<u8>,
    /// Byte range of the metadata padding (not covered by any checksum, read by nobody).
    meta_padding: std::ops::Range<usize>,
    regions: usize,
    fds: usize,
    pages: Vec<u8>,
}

/// A realistic single-process image: process record with auxv, cwd, threads, regions with
/// extents and page data, descriptors, pipe and file data, a warning, shares.
fn build(rng: &mut Rng, pid: u32) -> Built {
    let mut meta = vec![0u8; 1 << 20];
    let mut w = MetaWriter::new(&mut meta);
    let mut p: ProcessRec = bytemuck::Zeroable::zeroed();
    p.pid = pid as i32;
    p.nthreads = 2;
    p.auxv_len = 64;
    let auxv: Vec<u8> = (0..64).map(|_| rng.next() as u8).collect();
    w.record(REC_PROCESS, &p, &auxv).unwrap();
    w.raw(REC_CWD, b"/work/dir").unwrap();
    for t in 0..2 {
        let tr = ThreadRec {
            tid: pid as i32 + t,
            is_control: t as u32,
            fs_base: 0x7f00_0000_0000 + t as u64 * 4096,
            ctx_rsp: 0x7ffd_0000_0000,
            comm: *b"prog\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        w.record(REC_THREAD, &tr, &[]).unwrap();
    }
    let mut data_off = 0u64;
    let nreg = 3;
    for r in 0..nreg {
        let start = 0x1000_0000 + r as u64 * 0x10_0000;
        let pages = 1 + rng.below(4);
        let mut rec: RegionRec = bytemuck::Zeroable::zeroed();
        rec.start = start;
        rec.end = start + 16 * PAGE as u64;
        rec.prot = 3;
        rec.kind = RegionKind::Anon as u32;
        rec.n_extents = 1;
        w.record(REC_REGION, &rec, &[]).unwrap();
        let e = Extent {
            addr: start,
            len: pages * PAGE as u64,
            file_off: data_off,
        };
        data_off += e.len;
        w.record(REC_EXTENTS, &e, &[]).unwrap();
    }
    let nfd = 3;
    for f in 0..nfd {
        let path = format!("/tmp/file{f}");
        let mut rec: FdRec = bytemuck::Zeroable::zeroed();
        rec.fd = f;
        rec.kind = FdKind::Regular as u32;
        rec.dup_of = f;
        rec.path_len = path.len() as u32;
        w.record(REC_FD, &rec, path.as_bytes()).unwrap();
    }
    let pd = PipeDataRec {
        ino: 77,
        pipe_size: 65536,
        flags: 0,
    };
    w.record(REC_PIPE_DATA, &pd, b"buffered bytes").unwrap();
    let fdr = FileDataRec { dev: 1, ino: 2 };
    w.record(REC_FILE_DATA, &fdr, b"unlinked file contents")
        .unwrap();
    w.raw(REC_WARNING, b"a socket at fd 9 is not restored")
        .unwrap();
    let share = tree::ShareRec {
        proc: 0,
        fd: 1,
        group: 1,
        _pad: 0,
    };
    w.raw(REC_SHARES, bytemuck::bytes_of(&share)).unwrap();
    w.raw(REC_END, &[]).unwrap();
    let meta_len = w.len();
    let meta = meta[..meta_len].to_vec();
    let pages: Vec<u8> = (0..data_off).map(|_| rng.next() as u8).collect();
    let data_offset = PAGE as u64 + page_align(meta_len as u64);
    let mut h: FileHeader = bytemuck::Zeroable::zeroed();
    h.magic = MAGIC;
    h.version = VERSION;
    h.header_size = core::mem::size_of::<FileHeader>() as u32;
    h.arch = ARCH_X86_64;
    h.page_size = PAGE as u32;
    h.meta_offset = PAGE as u64;
    h.meta_len = meta_len as u64;
    h.meta_hash = hash(&meta);
    h.data_offset = data_offset;
    h.data_len = data_off;
    h.trailer_offset = data_offset + data_off;
    h.pid = pid;
    let mut out = vec![0u8; PAGE];
    put_header(&mut out, &mut h);
    out.extend_from_slice(&meta);
    let meta_padding = out.len()..data_offset as usize;
    out.resize(data_offset as usize, 0);
    out.extend_from_slice(&pages);
    let mut t = Trailer {
        magic: TRAILER_MAGIC,
        data_hash: hash(&pages),
        total_len: h.trailer_offset + PAGE as u64,
        trailer_hash: 0,
    };
    let mut tpage = vec![0u8; PAGE];
    tpage[..32].copy_from_slice(bytemuck::bytes_of(&t));
    t.trailer_hash = page_hash(&tpage, 32);
    tpage[..32].copy_from_slice(bytemuck::bytes_of(&t));
    out.extend_from_slice(&tpage);
    Built {
        bytes: out,
        meta_padding,
        regions: nreg,
        fds: nfd as usize,
        pages,
    }
}

/// Writes header `h` (with a fresh hash) into the first page of `page`.
fn put_header(page: &mut [u8], h: &mut FileHeader) {
    let n = core::mem::size_of::<FileHeader>();
    h.header_hash = 0;
    page[..n].copy_from_slice(bytemuck::bytes_of(h));
    h.header_hash = page_hash(&page[..PAGE], n);
    page[..n].copy_from_slice(bytemuck::bytes_of(h));
}

fn file_of(bytes: &[u8]) -> File {
    let mut f = tempfile();
    f.write_all(bytes).unwrap();
    f
}

fn tempfile() -> File {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "libcr-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    f
}

/// The system allocator, recording per thread the largest single request since the last
/// [`largest_allocation`] call (the test threads run in parallel: a per-thread figure).
struct Counting;

thread_local! {
    static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(l.size())));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(l.size())));
        // SAFETY: as above.
        unsafe { std::alloc::System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new)));
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The largest single allocation of this thread since the last call (then reset).
fn largest_allocation() -> usize {
    LARGEST.with(|m| m.replace(0))
}

/// Reads every image of `file` and checks every checksum, as cr_restart does before anything
/// runs; the error as text. Fails the test if the read made an allocation larger than the file
/// plus 1 MiB.
fn read_all(file: &File) -> Result<usize, String> {
    let len = file.metadata().map_or(0, |m| m.len()) as usize;
    largest_allocation();
    let res = (|| {
        let (_, images) = tree::open_all(file).map_err(|e| e.to_string())?;
        for img in &images {
            img.verify_data(file).map_err(|e| e.to_string())?;
        }
        Ok(images.len())
    })();
    let most = largest_allocation();
    assert!(
        most <= len + (1 << 20),
        "reading a {len}-byte image allocated {most} bytes at once ({res:?})"
    );
    res
}

/// Runs `f`, turning a panic into a test failure that names the case.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T + std::panic::UnwindSafe) -> T {
    match std::panic::catch_unwind(f) {
        Ok(v) => v,
        Err(_) => panic!("the reader panicked on {what}"),
    }
}

#[test]
fn round_trip_gives_back_what_was_written() {
    let mut rng = Rng(0x1234_5678);
    for i in 0..20 {
        let b = build(&mut rng, 1000 + i);
        let f = file_of(&b.bytes);
        let img = Image::open(&f).expect("a good image opens");
        img.verify_data(&f).expect("its data checks");
        assert_eq!(img.regions.len(), b.regions);
        assert_eq!(img.fds.len(), b.fds);
        assert_eq!(img.threads.len(), 2);
        assert_eq!(img.cwd, b"/work/dir");
        assert_eq!(img.pipe_data, vec![(77, b"buffered bytes".to_vec())]);
        assert_eq!(img.shares.len(), 1);
        let mut data = vec![0u8; b.pages.len()];
        f.read_exact_at(&mut data, img.header.data_offset).unwrap();
        assert_eq!(data, b.pages);
    }
}

#[test]
fn random_corruption_is_always_refused() {
    let mut rng = Rng(0x9e37_79b9);
    let b = build(&mut rng, 4242);
    let n = iters();
    for i in 0..n {
        let mut bytes = b.bytes.clone();
        let at = rng.below(bytes.len() as u64) as usize;
        let flip = 1u8 << rng.below(8);
        bytes[at] ^= flip;
        let f = file_of(&bytes);
        let res = no_panic(&format!("a flip at byte {at}"), || read_all(&f));
        if b.meta_padding.contains(&at) {
            continue; // padding nobody reads: the image restores the same
        }
        assert!(
            res.is_err(),
            "iteration {i}: a flip at byte {at} (of {}) was not detected",
            bytes.len()
        );
    }
    for i in 0..n.min(500) {
        let len = rng.below(b.bytes.len() as u64) as usize;
        let f = file_of(&b.bytes[..len]);
        let res = no_panic(&format!("a truncation to {len} bytes"), || read_all(&f));
        assert!(
            res.is_err(),
            "iteration {i}: truncation to {len} bytes accepted"
        );
    }
}

/// Header fields set to hostile values with the header hash recomputed: refused or read
/// harmlessly, never a panic or an allocation the file cannot justify.
#[test]
fn forged_headers_never_panic_or_overallocate() {
    let mut rng = Rng(0xdead_beef);
    let b = build(&mut rng, 7);
    let base: FileHeader = bytemuck::pod_read_unaligned(&b.bytes[..168]);
    let hostile = |rng: &mut Rng| -> u64 {
        match rng.below(6) {
            0 => u64::MAX - rng.below(8192),
            1 => 1 << (20 + rng.below(44)),
            2 => rng.next(),
            3 => rng.below(1 << 20),
            4 => rng.below(b.bytes.len() as u64 + 8192),
            _ => 0,
        }
    };
    for i in 0..iters() {
        let mut h = base;
        for _ in 0..1 + rng.below(3) {
            match rng.below(7) {
                0 => h.meta_offset = hostile(&mut rng),
                1 => h.meta_len = hostile(&mut rng),
                2 => h.data_offset = hostile(&mut rng),
                3 => h.data_len = hostile(&mut rng),
                4 => h.trailer_offset = hostile(&mut rng),
                5 => h.version = rng.below(8) as u32,
                _ => h.header_size = hostile(&mut rng) as u32,
            }
        }
        let mut bytes = b.bytes.clone();
        put_header(&mut bytes, &mut h);
        let f = file_of(&bytes);
        no_panic(&format!("forged header {i}: {h:?}"), || {
            let _ = read_all(&f);
        });
    }
}

/// Metadata rewritten at random (record kinds, lengths, counts) with its hash recomputed: the
/// reader gives a result or a one-line error, never a panic.
#[test]
fn forged_metadata_never_panics() {
    let mut rng = Rng(0x0bad_cafe);
    let b = build(&mut rng, 9);
    let base: FileHeader = bytemuck::pod_read_unaligned(&b.bytes[..168]);
    let meta_at = base.meta_offset as usize;
    let meta_len = base.meta_len as usize;
    for i in 0..iters() {
        let mut bytes = b.bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let at = meta_at + rng.below(meta_len as u64) as usize;
            // Aim at record headers (kind, len) often: 4-byte aligned words.
            let at = if rng.below(2) == 0 { at & !3 } else { at };
            let v = match rng.below(4) {
                0 => rng.next() as u32,
                1 => u32::MAX - rng.below(16) as u32,
                2 => rng.below(64) as u32,
                _ => 0x8000_0000 | rng.below(32) as u32,
            };
            let end = (at + 4).min(meta_at + meta_len);
            bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
        }
        let mut h = base;
        h.meta_hash = hash(&bytes[meta_at..meta_at + meta_len]);
        put_header(&mut bytes, &mut h);
        let f = file_of(&bytes);
        no_panic(&format!("forged metadata {i}"), || {
            let _ = read_all(&f);
        });
    }
}

/// Tree manifests with hostile counts and lengths (hash recomputed): no panic, no huge
/// allocation, every error one line.
#[test]
fn forged_manifests_never_panic() {
    let mut rng = Rng(0x5eed);
    let a = build(&mut rng, 100);
    let b = build(&mut rng, 101);
    let good = tree::manifest_bytes(&[100, 101], &[], &[], 3, (0, 2), 1);
    let mut whole = good.clone();
    whole.extend_from_slice(&a.bytes);
    whole.extend_from_slice(&b.bytes);
    let f = file_of(&whole);
    assert_eq!(read_all(&f), Ok(2), "a good tree image reads");
    let hlen = 64;
    for i in 0..iters() {
        let mut bytes = whole.clone();
        for _ in 0..1 + rng.below(3) {
            let at = (8 + rng.below((hlen - 8) as u64) as usize) & !3;
            let v = match rng.below(3) {
                0 => rng.next() as u32,
                1 => u32::MAX - rng.below(4) as u32,
                _ => rng.below(300) as u32,
            };
            bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        // Recompute the manifest hash over what the (forged) header says is used.
        let hdr: tree::TreeHeader = bytemuck::pod_read_unaligned(&bytes[..hlen]);
        let used = 64usize
            .saturating_add((hdr.nproc as usize).saturating_mul(8))
            .saturating_add((hdr.nshare as usize).saturating_mul(16))
            .saturating_add((hdr.nzombie as usize).saturating_mul(16));
        if used <= bytes.len() {
            let mut m = bytes[..used].to_vec();
            let off = core::mem::offset_of!(tree::TreeHeader, hash);
            m[off..off + 8].fill(0);
            let h = hash(&m);
            bytes[off..off + 8].copy_from_slice(&h.to_le_bytes());
        }
        let f = file_of(&bytes);
        no_panic(&format!("forged manifest {i}"), || {
            let _ = read_all(&f);
        });
    }
}

/// Images written by cr_checkpoint: `spinner` alone and `tree 3 deep` (five processes in one
/// file, after a tree manifest). Built once per run.
fn real_images() -> &'static [(String, Vec<u8>)] {
    static IMAGES: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    IMAGES.get_or_init(|| {
        use common::*;
        let sc = Scenario::new("fuzz-real");
        let mut out = Vec::new();
        let mut spinner = sc.start_program("spinner");
        let img = sc.checkpoint(spinner.pid(), &["--cont"]);
        out.push((
            "spinner".to_string(),
            std::fs::read(&img).expect("read image"),
        ));
        spinner.kill();
        let mut prog = sc.program("tree");
        prog.argv.extend(["3".into(), "deep".into()]);
        let mut tree = sc.start("tree", sc.under_cr_run(&prog));
        tree.wait_ready();
        let img = sc.checkpoint(tree.pid(), &["--cont"]);
        out.push(("tree".to_string(), std::fs::read(&img).expect("read image")));
        tree.kill();
        out
    })
}

/// The byte ranges of `bytes` (a plain image, or a tree image: manifest then images) that no
/// checksum covers: each image's padding between its metadata and its page data.
fn unhashed(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let f = file_of(bytes);
    let (_, images) = tree::open_all(&f).expect("a real image reads");
    images
        .iter()
        .map(|img| {
            // Offsets are the file's (absolute, also for the images after the first).
            let h = &img.header;
            (h.meta_offset + h.meta_len) as usize..h.data_offset as usize
        })
        .chain(images.first().filter(|i| i.base > 0).map(|first| {
            // A tree image: the manifest's hash covers its used part, not the padding up to
            // the first image.
            let hdr: tree::TreeHeader =
                bytemuck::pod_read_unaligned(&bytes[..core::mem::size_of::<tree::TreeHeader>()]);
            let used = core::mem::size_of::<tree::TreeHeader>()
                + hdr.nproc as usize * core::mem::size_of::<tree::TreeProc>()
                + hdr.nshare as usize * core::mem::size_of::<tree::ShareRec>()
                + hdr.nzombie as usize * core::mem::size_of::<tree::ZombieRec>();
            used..first.base as usize
        }))
        .collect()
}

/// Where each image of `bytes` is, for failure messages.
fn layout(bytes: &[u8]) -> String {
    let (_, images) = tree::open_all(&file_of(bytes)).expect("a real image reads");
    images
        .iter()
        .map(|img| {
            let h = &img.header;
            format!(
                "[base {} meta {}+{} data {}+{} trailer {}]",
                img.base, h.meta_offset, h.meta_len, h.data_offset, h.data_len, h.trailer_offset
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bit flips anywhere in a real image are refused (unless in padding no checksum covers and
/// nothing reads), truncations always; never a panic, never an allocation beyond the file.
#[test]
fn real_images_corrupted_are_refused() {
    let mut rng = Rng(0x7a11_0c8e);
    for (name, good) in real_images() {
        let f = file_of(good);
        assert!(read_all(&f).is_ok(), "the {name} image reads");
        let padding = unhashed(good);
        // A quarter of the synthetic images' count: each read hashes the whole file (8 MB for
        // the tree). One file, each flip made in place and undone after the read.
        let n = (iters() / 4).max(1);
        let mut refused = 0;
        for i in 0..n {
            let at = rng.below(good.len() as u64) as usize;
            let flipped = [good[at] ^ (1 << rng.below(8))];
            f.write_all_at(&flipped, at as u64).expect("flip");
            let res = no_panic(&format!("{name}: a flip at byte {at}"), || read_all(&f));
            f.write_all_at(&good[at..at + 1], at as u64)
                .expect("unflip");
            if padding.iter().any(|r| r.contains(&at)) {
                continue;
            }
            assert!(
                res.is_err(),
                "{name} iteration {i}: a flip at byte {at} (of {}) was not detected; layout: {}",
                good.len(),
                layout(good)
            );
            refused += 1;
        }
        for i in 0..n.min(100) {
            let len = rng.below(good.len() as u64) as usize;
            f.set_len(len as u64).expect("truncate");
            let res = no_panic(&format!("{name}: truncation to {len}"), || read_all(&f));
            assert!(
                res.is_err(),
                "{name} iteration {i}: truncation to {len} accepted"
            );
            f.write_all_at(&good[len..], len as u64).expect("restore");
        }
        eprintln!(
            "{name}: {} bytes, {refused} flips refused, {} in unhashed padding",
            good.len(),
            n as usize - refused
        );
    }
}

/// A real image's header length and offset fields forged with the header checksum recomputed:
/// never a panic, never a large allocation, always refused.
#[test]
fn real_image_forged_lengths_are_refused() {
    let mut rng = Rng(0x1e57_4a11);
    let (_, good) = &real_images()[0];
    let at = {
        let (_, images) = tree::open_all(&file_of(good)).expect("a real image reads");
        images[0].base as usize
    };
    let hsize = core::mem::size_of::<FileHeader>();
    let base: FileHeader = bytemuck::pod_read_unaligned(&good[at..at + hsize]);
    for i in 0..iters() {
        let mut h = base;
        let v = match rng.below(4) {
            0 => rng.next(),
            1 => u64::MAX - rng.below(4096),
            2 => rng.below(good.len() as u64 * 2),
            _ => 1 << rng.below(64),
        };
        let field = match rng.below(5) {
            0 => &mut h.meta_offset,
            1 => &mut h.meta_len,
            2 => &mut h.data_offset,
            3 => &mut h.data_len,
            _ => &mut h.trailer_offset,
        };
        if *field == v {
            continue;
        }
        *field = v;
        let mut bytes = good.clone();
        put_header(&mut bytes[at..], &mut h);
        let f = file_of(&bytes);
        let res = no_panic(&format!("forged header {i}: {h:?}"), || read_all(&f));
        assert!(res.is_err(), "forged header {i} accepted: {h:?}");
    }
}

/// An image from a CPU with other xsave features (its header's XCR0 forged, the header checksum
/// recomputed, as a genuine image from that machine would read): cr_restart refuses it up front
/// with the exact reason (both XCR0 values), one line, nothing runs. Once with a feature the image has
/// and this CPU lacks (AVX-512 state, bits 5-7, or PKRU, bit 9, whichever this CPU lacks), once
/// with one this CPU has and the image lacks (the SSE bit cleared).
#[test]
fn image_from_another_cpu_is_refused_with_the_reason() {
    use common::*;
    let (_, good) = &real_images()[0];
    let sc = Scenario::new("fuzz-xcr0");
    let (ours, _) = cr::agent::image::cpu_xsave();
    let at = {
        let (_, images) = tree::open_all(&file_of(good)).expect("a real image reads");
        images[0].base as usize
    };
    let hsize = core::mem::size_of::<FileHeader>();
    let base: FileHeader = bytemuck::pod_read_unaligned(&good[at..at + hsize]);
    assert_eq!(base.xcr0, ours, "a fresh image has this CPU's XCR0");
    let extra = [0xe0u64, 0x200, 0x40000]
        .into_iter()
        .find(|b| ours & b == 0)
        .unwrap_or(1 << 62);
    for (k, xcr0) in [ours | extra, ours & !2].into_iter().enumerate() {
        let mut h = base;
        h.xcr0 = xcr0;
        let mut bytes = good.clone();
        put_header(&mut bytes[at..], &mut h);
        let img = sc.img_dir().join(format!("xcr0-{k}.img"));
        std::fs::write(&img, &bytes).expect("write forged image");
        let (_, code, line) = restart_refused(&sc, &img, &format!("image XCR0 {xcr0:#x}"));
        eprintln!("image XCR0 {xcr0:#x}, this CPU {ours:#x}: exit {code}: {line}");
        assert!(
            line.contains("CPU vector state differs")
                && line.contains(&format!("{xcr0:#x}"))
                && line.contains(&format!("{ours:#x}")),
            "the reason should name both XCR0 values: {line}"
        );
    }
}
