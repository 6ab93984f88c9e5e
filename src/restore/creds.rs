//! The credentials a restored process runs with (BLCR's rule: the image's ids, "subject to what
//! the restarter is allowed"; capture side: `agent::process::capture_creds`, `REC_CREDS`).
//!
//! A **privileged** restarter (`CAP_SETUID` and `CAP_SETGID` in its user namespace, and
//! `setgroups` allowed there: root, not cr_restart's own unprivileged namespace) gives each
//! process exactly the ids its image recorded, in three steps:
//! 1. in the pool ([`FsGuard`], the thread that builds it): every open file description of a
//!    process is made with that process's file-system ids and groups (`setfsuid`, `setfsgid`,
//!    `setgroups` on that thread only, put back after), so root's restart of a user's image
//!    opens, creates and binds nothing the user could not;
//! 2. in the process, before it opens or maps anything ([`apply_early`]): the bounding set
//!    reduced to the image's (best effort: needs `CAP_SETPCAP`), the supplementary groups, the real/effective/saved gids and the
//!    file-system uid and gid set (the effective uid stays 0, so `set_tid`, rlimits and
//!    `/proc/self/exe` can still be restored; the file-system uid takes the file capabilities
//!    away);
//! 3. in the trampoline, after `/proc/self/exe` is set and before any code of the image runs
//!    ([`TrampCreds`]): `setresuid`, which clears every capability when no uid is 0 any more
//!    (as for any program that leaves root), else `capset` to the image's capabilities (never
//!    more than the restarter's), then the file-system uid. Not the restored agent: its code
//!    comes from the image, which its user may have written.
//!
//! An **unprivileged** restarter keeps its own ids: an id of the image that is one of its own
//! real/effective/saved ids is set, any other is replaced by its own id of that kind (a
//! process that had dropped its effective uid temporarily comes back so when the restarter is
//! its user); groups and capabilities stay the restarter's. An image without the record (older
//! writers) keeps the restarter's ids.
//!
//! The re-created threads of a process whose ids changed in the trampoline get fresh thread
//! ids (`clone3`'s `set_tid` needs a capability the process no longer has).

use super::RestoreError;
use crate::image::format::CredsRec;
use crate::image::reader::Image;

/// `CAP_SETGID`, `CAP_SETUID`, `CAP_SETPCAP`.
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;

/// This process's ids: `(real, effective, saved, fs)` uid and gid, and its capability sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Own {
    /// Real, effective, saved, file-system uid.
    pub uid: [u32; 4],
    /// Real, effective, saved, file-system gid.
    pub gid: [u32; 4],
    /// Permitted capabilities.
    pub cap_prm: u64,
    /// Inheritable capabilities.
    pub cap_inh: u64,
    /// May set any id and groups (see the module docs).
    pub privileged: bool,
}

/// What a restored process's credentials become.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Real, effective, saved, file-system uid.
    pub uid: [u32; 4],
    /// Real, effective, saved, file-system gid.
    pub gid: [u32; 4],
    /// Supplementary groups to set (`None`: keep the restarter's).
    pub groups: Option<Vec<u32>>,
    /// Bounding set to keep (`None`: unchanged).
    pub bounding: Option<u64>,
    /// `(effective, permitted, inheritable)` to set after `setresuid` when a uid stays 0
    /// (`None`: as `setresuid` leaves them).
    pub caps: Option<(u64, u64, u64)>,
}

fn capget() -> Option<(u64, u64, u64)> {
    let hdr = [CAP_V3, 0u32];
    let mut data = [0u32; 6];
    // SAFETY: capget with a v3 header and room for its two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capget, hdr.as_ptr(), data.as_mut_ptr()) };
    (r == 0).then(|| {
        let w = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
        (
            w(data[0], data[3]),
            w(data[1], data[4]),
            w(data[2], data[5]),
        )
    })
}

fn ids(get: libc::c_long, fs: libc::c_long) -> [u32; 4] {
    let mut v = [0u32; 3];
    // SAFETY: getresuid/getresgid with three valid pointers; setfsuid/setfsgid(-1) changes
    // nothing (an invalid id) and returns the current one.
    unsafe {
        let p = v.as_mut_ptr();
        libc::syscall(get, p, p.add(1), p.add(2));
        let f = libc::syscall(fs, u32::MAX) as u32;
        [v[0], v[1], v[2], f]
    }
}

/// The calling thread's ids and capabilities, and whether it is privileged.
pub fn own() -> Own {
    let (eff, prm, inh) = capget().unwrap_or((0, 0, 0));
    let need = 1u64 << CAP_SETUID | 1u64 << CAP_SETGID;
    // cr_restart's own namespace (an unprivileged restart) denies setgroups: there the
    // capabilities only reach the restarter's own id.
    let setgroups = std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() == "allow")
        .unwrap_or(true);
    Own {
        uid: ids(libc::SYS_getresuid, libc::SYS_setfsuid),
        gid: ids(libc::SYS_getresgid, libc::SYS_setfsgid),
        cap_prm: prm,
        cap_inh: inh,
        privileged: eff & need == need && setgroups,
    }
}

/// The ids of `want` a restarter with `own` (ids `[real, effective, saved, fs]`) may set: all
/// of them when privileged, else each one that is among its real/effective/saved ids (any other
/// becomes its own id of that kind; the fs id follows the effective one then).
fn allowed(want: [u32; 4], own: [u32; 4], privileged: bool) -> [u32; 4] {
    if privileged {
        return want;
    }
    let mine = |x: u32| own[..3].contains(&x);
    let mut v: [u32; 4] = core::array::from_fn(|i| if mine(want[i]) { want[i] } else { own[i] });
    if !mine(want[3]) {
        v[3] = v[1];
    }
    v
}

/// The credentials a process restored from `rec` (with `groups`) gets from a restarter `own`.
pub fn plan(rec: &CredsRec, groups: &[u32], own: &Own) -> Plan {
    let p = own.privileged;
    let uid = allowed(rec.uid, own.uid, p);
    let gid = allowed(rec.gid, own.gid, p);
    if !p {
        return Plan {
            uid,
            gid,
            ..Plan::default()
        };
    }
    // Never more than the restarter has; the effective set within the permitted one.
    let prm = rec.cap_prm & own.cap_prm;
    let caps = uid[..3].contains(&0).then_some((
        rec.cap_eff & prm,
        prm,
        rec.cap_inh & (own.cap_inh | own.cap_prm),
    ));
    Plan {
        uid,
        gid,
        groups: Some(groups.to_vec()),
        bounding: Some(rec.cap_bnd),
        caps,
    }
}

/// The plan for `img` in this process (`None`: the image has no credentials, or nothing
/// changes).
pub fn plan_for(img: &Image) -> Option<Plan> {
    let (rec, groups) = img.creds.as_ref()?;
    let own = own();
    let p = plan(rec, groups, &own);
    let same = p.uid == own.uid && p.gid == own.gid && p.groups.is_none();
    (!same).then_some(p)
}

/// One line for `cr_restart --verbose`: the ids `img`'s process will run with, and why.
pub fn describe(img: &Image) -> String {
    let pid = img.process.pid;
    let own = own();
    let Some((rec, groups)) = img.creds.as_ref() else {
        return format!(
            "process {pid}: credentials not recorded in the image (an older writer): it runs with cr_restart's (uid {}, gid {})",
            own.uid[1], own.gid[1]
        );
    };
    let p = plan(rec, groups, &own);
    let ids = |v: &[u32; 4]| format!("{}/{}/{}/{}", v[0], v[1], v[2], v[3]);
    let how = if own.privileged {
        "the image's (privileged restart)".to_string()
    } else if p.uid == rec.uid && p.gid == rec.gid {
        "the image's, all among cr_restart's own".to_string()
    } else {
        format!(
            "cr_restart's where the image's are not its own (image: uid {}, gid {}; not privileged)",
            ids(&rec.uid),
            ids(&rec.gid)
        )
    };
    let groups = match &p.groups {
        Some(g) => format!("{g:?}"),
        None => "cr_restart's".into(),
    };
    format!(
        "process {pid}: runs with uid {} gid {} (real/effective/saved/fs), groups {groups}: {how}",
        ids(&p.uid),
        ids(&p.gid)
    )
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EPERM)
}

fn fail(what: &str, plan: &Plan) -> RestoreError {
    let e = last_errno();
    RestoreError::new(
        e,
        format!(
            "cannot give the restored process its credentials ({what}; uid {:?}, gid {:?}): {}",
            plan.uid,
            plan.gid,
            std::io::Error::from_raw_os_error(e)
        ),
    )
}

/// Step 2 (see the module docs), in the freshly created process before it opens or maps
/// anything: bounding set, groups, gids, file-system uid. Keeps the parent-death signal (the
/// kernel clears it when ids change) and leaves if the parent died meanwhile.
pub fn apply_early(plan: &Plan) -> Result<(), RestoreError> {
    // SAFETY: prctl/getppid on ourselves; raw set*id calls change this (single-threaded)
    // process only.
    unsafe {
        let mut pdeath: libc::c_int = 0;
        libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeath as *mut libc::c_int);
        let ppid = libc::getppid();
        if let Some(keep) = plan.bounding {
            // Best effort (it needs CAP_SETPCAP): the bounding set only limits what a later
            // exec may gain; CAP_SETPCAP itself last.
            for cap in (0..64u64).filter(|&c| c != CAP_SETPCAP as u64) {
                // EINVAL past the last capability this kernel knows.
                if keep & (1 << cap) == 0 && libc::prctl(libc::PR_CAPBSET_READ, cap) == 1 {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap);
                }
            }
            if keep & (1 << CAP_SETPCAP) == 0 {
                libc::prctl(libc::PR_CAPBSET_DROP, CAP_SETPCAP as u64);
            }
        }
        if let Some(g) = &plan.groups {
            if libc::syscall(libc::SYS_setgroups, g.len(), g.as_ptr()) != 0 {
                return Err(fail("setgroups", plan));
            }
        }
        let [r, e, s, f] = plan.gid;
        if libc::syscall(libc::SYS_setresgid, r, e, s) != 0 {
            return Err(fail("setresgid", plan));
        }
        libc::syscall(libc::SYS_setfsgid, f);
        libc::syscall(libc::SYS_setfsuid, plan.uid[3]);
        if pdeath != 0 {
            libc::prctl(libc::PR_SET_PDEATHSIG, pdeath as libc::c_ulong);
            if libc::getppid() != ppid {
                libc::_exit(1);
            }
        }
    }
    Ok(())
}

/// Step 3's argument block (offsets fixed by the trampoline's assembly).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TrampCreds {
    /// Real, effective, saved uid (`setresuid`).
    pub uid: [u64; 3],
    /// File-system uid, set last.
    pub fsuid: u64,
    /// 1: `capset` with the header and data below after `setresuid`.
    pub do_caps: u64,
    /// `cap_user_header_t`: version 3, pid 0.
    pub cap_hdr: [u32; 2],
    /// `cap_user_data_t[2]`: effective, permitted, inheritable (low words, then high words).
    pub cap_data: [u32; 6],
    /// Parent-death signal to set again after the change (the kernel clears it), 0: none.
    pub pdeathsig: u64,
}
const _: () = assert!(core::mem::offset_of!(TrampCreds, do_caps) == 32);
const _: () = assert!(core::mem::offset_of!(TrampCreds, cap_hdr) == 40);
const _: () = assert!(core::mem::offset_of!(TrampCreds, cap_data) == 48);
const _: () = assert!(core::mem::offset_of!(TrampCreds, pdeathsig) == 72);

impl TrampCreds {
    /// Step 3 of `plan` (the parent-death signal: [`TrampCreds::note_pdeathsig`]).
    pub fn of(plan: &Plan) -> TrampCreds {
        let (eff, prm, inh) = plan.caps.unwrap_or((0, 0, 0));
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        TrampCreds {
            uid: [plan.uid[0] as u64, plan.uid[1] as u64, plan.uid[2] as u64],
            fsuid: plan.uid[3] as u64,
            do_caps: plan.caps.is_some() as u64,
            cap_hdr: [CAP_V3, 0],
            cap_data: [lo(eff), lo(prm), lo(inh), hi(eff), hi(prm), hi(inh)],
            pdeathsig: 0,
        }
    }

    /// Records the calling process's parent-death signal in `at`, just before the jump (after
    /// the gate, which clears it: past the gate the job lives on without its restarter).
    ///
    /// # Safety
    /// `at` must point at a writable `TrampCreds`.
    pub unsafe fn note_pdeathsig(at: *mut TrampCreds) {
        let mut pdeath: libc::c_int = 0;
        // SAFETY: prctl writing one int; the caller guarantees `at`.
        unsafe {
            libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeath as *mut libc::c_int);
            (*at).pdeathsig = pdeath.max(0) as u64;
        }
    }
}

/// The calling thread's supplementary groups.
fn own_groups() -> Vec<u32> {
    // SAFETY: getgroups(0, NULL) counts; then into a buffer of that many entries (a group
    // added in between only makes the second call fail: compared as different).
    unsafe {
        let n = libc::syscall(libc::SYS_getgroups, 0usize, std::ptr::null_mut::<u32>());
        let mut v = vec![0u32; n.max(0) as usize];
        let got = libc::syscall(libc::SYS_getgroups, v.len(), v.as_mut_ptr());
        v.truncate(got.max(0) as usize);
        v
    }
}

/// Step 1: while alive, the calling thread opens and creates files with the file-system ids
/// and groups of an image's process (privileged restarter only; see the module docs). Put
/// back when dropped, with the thread's parent-death signal and dumpability (the kernel resets
/// both when ids change).
pub struct FsGuard {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    pdeath: libc::c_int,
    dumpable: libc::c_int,
}

impl FsGuard {
    /// Takes `img`'s file-system ids and groups when a privileged restarter restores it with
    /// other ones; `None` otherwise.
    pub fn assume(img: &Image) -> Option<FsGuard> {
        let (rec, groups) = img.creds.as_ref()?;
        let fsuid = ids(libc::SYS_getresuid, libc::SYS_setfsuid)[3];
        let fsgid = ids(libc::SYS_getresgid, libc::SYS_setfsgid)[3];
        let now = own_groups();
        // The common case (root's own image): nothing to read, nothing to change.
        if rec.uid[3] == fsuid && rec.gid[3] == fsgid && *groups == now {
            return None;
        }
        if !own().privileged {
            return None;
        }
        let mut pdeath: libc::c_int = 0;
        // SAFETY: prctl on ourselves; raw calls change this thread's credentials only.
        unsafe {
            libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeath as *mut libc::c_int);
            let dumpable = libc::prctl(libc::PR_GET_DUMPABLE);
            let g = FsGuard {
                uid: fsuid,
                gid: fsgid,
                groups: now,
                pdeath,
                dumpable,
            };
            libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
            libc::syscall(libc::SYS_setfsgid, rec.gid[3]);
            libc::syscall(libc::SYS_setfsuid, rec.uid[3]);
            Some(g)
        }
    }
}

impl Drop for FsGuard {
    fn drop(&mut self) {
        // SAFETY: as in `assume`.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, self.uid);
            libc::syscall(libc::SYS_setfsgid, self.gid);
            libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
            if self.dumpable >= 0 {
                libc::prctl(libc::PR_SET_DUMPABLE, self.dumpable as libc::c_ulong);
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, self.pdeath as libc::c_ulong);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(uid: [u32; 4], gid: [u32; 4]) -> CredsRec {
        CredsRec {
            uid,
            gid,
            cap_prm: 0x1ff_ffff_ffff,
            cap_eff: 0x1ff_ffff_ffff,
            cap_bnd: 0x1ff_ffff_ffff,
            ..CredsRec::default()
        }
    }

    const ROOT: Own = Own {
        uid: [0; 4],
        gid: [0; 4],
        cap_prm: 0x1ff_ffff_ffff,
        cap_inh: 0,
        privileged: true,
    };

    #[test]
    fn root_sets_exactly_the_image_ids() {
        let mut r = rec([65534; 4], [65534; 4]);
        r.cap_prm = 0;
        r.cap_eff = 0;
        let p = plan(&r, &[65534], &ROOT);
        assert_eq!(p.uid, [65534; 4]);
        assert_eq!(p.gid, [65534; 4]);
        assert_eq!(p.groups, Some(vec![65534]));
        // No uid 0 left: setresuid clears the capabilities, no capset.
        assert_eq!(p.caps, None);
        // A process that dropped its effective uid keeps root's saved uid, and capabilities
        // no more than it had.
        let mut r = rec([0, 65534, 0, 65534], [0; 4]);
        r.cap_eff = 0;
        let p = plan(&r, &[], &ROOT);
        assert_eq!(p.uid, [0, 65534, 0, 65534]);
        assert_eq!(p.caps, Some((0, 0x1ff_ffff_ffff, 0)));
        // Root's image with fewer capabilities: never more than the image had.
        let mut r = rec([0; 4], [0; 4]);
        r.cap_prm = 0x400;
        r.cap_eff = 0x400;
        assert_eq!(plan(&r, &[], &ROOT).caps, Some((0x400, 0x400, 0)));
        // ... nor more than the restarter has.
        let weak = Own {
            cap_prm: 0xc0,
            ..ROOT
        };
        let r = rec([0; 4], [0; 4]);
        assert_eq!(plan(&r, &[], &weak).caps, Some((0xc0, 0xc0, 0)));
    }

    #[test]
    fn a_normal_user_keeps_its_own_ids() {
        let nobody = Own {
            uid: [65534; 4],
            gid: [65534; 4],
            cap_prm: 0,
            cap_inh: 0,
            privileged: false,
        };
        let p = plan(&rec([0; 4], [0; 4]), &[0], &nobody);
        assert_eq!(p.uid, [65534; 4]);
        assert_eq!(p.gid, [65534; 4]);
        assert_eq!((p.groups, p.caps, p.bounding), (None, None, None));
        // Ids among its own are set (here a user 1000 whose saved uid was nobody's).
        let mixed = Own {
            uid: [1000, 1000, 65534, 1000],
            ..nobody
        };
        let p = plan(&rec([1000, 65534, 1000, 65534], [0; 4]), &[], &mixed);
        assert_eq!(p.uid, [1000, 65534, 1000, 65534]);
        assert_eq!(p.gid, [65534; 4]);
        // An fs id not among its own follows the effective id it gets.
        assert_eq!(allowed([1, 2, 3, 4], [5, 5, 5, 5], false), [5, 5, 5, 5]);
        assert_eq!(allowed([5, 5, 5, 4], [5, 5, 5, 5], false), [5, 5, 5, 5]);
    }
}
