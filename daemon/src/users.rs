//! User and group lookups through the C library (NSS: `/etc/passwd`, `/etc/group`, LDAP, ...):
//! names to ids for the socket group and the `[access]` section, a uid's name and its groups
//! for authorisation. These calls may block (a network directory), so the server makes them on
//! blocking threads, or at start-up and reload.

use std::ffi::{CStr, CString};
use std::io;

/// Largest buffer a `get*_r` lookup may ask for before we give up (groups with huge member
/// lists).
const MAX_LOOKUP_BUFFER: usize = 1 << 20;

/// Most groups one user is looked up in (Linux's own limit, `NGROUPS_MAX`, is 65,536).
const MAX_GROUPS: usize = 65_536;

/// A failed lookup.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No user or group has that name.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The name cannot be passed to the C library.
    #[error("contains a NUL byte")]
    Nul,
    /// The lookup itself failed.
    #[error("{0}")]
    Os(io::Error),
}

/// Resolves a group name (or a numeric gid) to a gid with `getgrnam_r`.
pub fn lookup_group(group: &str) -> Result<u32, LookupError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = CString::new(group).map_err(|_| LookupError::Nul)?;
    with_buffer(|buf| {
        let mut grp = std::mem::MaybeUninit::<libc::group>::uninit();
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `name` is a valid NUL-terminated string; `grp` points to writable storage for
        // one `group`; `buf` is a writable buffer of `buf.len()` chars that outlives the call and
        // the use of `result` below; `result` is a valid out-pointer.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                grp.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        // SAFETY: on success with a non-null result, getgrnam_r filled `grp` (and `result`
        // points to it); `gr_gid` is a plain integer field.
        (0, Some(unsafe { (*result).gr_gid }))
    })?
    .ok_or(LookupError::NotFound("group"))
}

/// Resolves a user name (or a numeric uid) to a uid with `getpwnam_r`.
pub fn lookup_user(user: &str) -> Result<u32, LookupError> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    let name = CString::new(user).map_err(|_| LookupError::Nul)?;
    with_buffer(|buf| {
        let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: as in `lookup_group`, for `getpwnam_r` and one `passwd`.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                pwd.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        // SAFETY: on success with a non-null result, getpwnam_r filled `pwd`; `pw_uid` is a
        // plain integer field.
        (0, Some(unsafe { (*result).pw_uid }))
    })?
    .ok_or(LookupError::NotFound("user"))
}

/// The name and primary group of user `uid` (`getpwuid_r`); `None` when the uid has no entry.
pub fn user_of(uid: u32) -> Result<Option<(String, u32)>, LookupError> {
    with_buffer(|buf| {
        let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `pwd` points to writable storage for one `passwd`; `buf` is a writable buffer
        // of `buf.len()` chars that outlives the call and the reads of `result` below; `result`
        // is a valid out-pointer.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                pwd.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        // SAFETY: on success with a non-null result, getpwuid_r filled `pwd`, whose `pw_name`
        // is a NUL-terminated string inside `buf`, alive until this closure returns.
        let (name, gid) = unsafe {
            let pwd = &*result;
            (
                CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned(),
                pwd.pw_gid,
            )
        };
        (0, Some((name, gid)))
    })
}

/// Every group user `name` (whose primary group is `gid`) belongs to, `gid` included
/// (`getgrouplist`).
pub fn groups_of(name: &str, gid: u32) -> Result<Vec<u32>, LookupError> {
    let cname = CString::new(name).map_err(|_| LookupError::Nul)?;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `cname` is a valid NUL-terminated string; `groups` is a writable array of
        // `n` gids; `n` is a valid in/out pointer, set to the number of groups found.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        let found = usize::try_from(n).unwrap_or(0);
        if rc >= 0 {
            groups.truncate(found.min(groups.len()));
            return Ok(groups);
        }
        // -1: the array was too small; `n` says how many there are.
        let want = found.max(groups.len() * 2);
        if want > MAX_GROUPS {
            return Err(LookupError::Os(io::Error::other(format!(
                "user {name} is in more than {MAX_GROUPS} groups"
            ))));
        }
        groups.resize(want, 0);
    }
}

/// The effective uid of this process (the daemon's own user).
pub fn daemon_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Runs a `get*_r` lookup with a buffer that grows on `ERANGE`. `lookup` returns the C return
/// code and the value found.
fn with_buffer<T>(
    mut lookup: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> Result<Option<T>, LookupError> {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        match lookup(&mut buf) {
            (libc::ERANGE, _) if buf.len() < MAX_LOOKUP_BUFFER => buf.resize(buf.len() * 2, 0),
            (0, found) => return Ok(found),
            // Some C libraries report "not found" as an error code rather than a null result.
            (libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM, _) => return Ok(None),
            (rc, _) => return Err(LookupError::Os(io::Error::from_raw_os_error(rc))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_resolve() {
        assert_eq!(lookup_group("0").unwrap(), 0);
        assert_eq!(lookup_group("root").unwrap(), 0);
        assert_eq!(lookup_user("root").unwrap(), 0);
        assert_eq!(lookup_user("4242").unwrap(), 4242);
        let err = lookup_group("no-such-group-llmd-test").unwrap_err();
        assert!(err.to_string().contains("no such group"), "{err}");
        let err = lookup_user("no-such-user-llmd-test").unwrap_err();
        assert!(err.to_string().contains("no such user"), "{err}");
        assert!(matches!(lookup_user("a\0b"), Err(LookupError::Nul)));
    }

    #[test]
    fn root_has_a_name_and_its_groups() {
        let (name, gid) = user_of(0).unwrap().expect("root has an entry");
        assert_eq!((name.as_str(), gid), ("root", 0));
        assert!(groups_of(&name, gid).unwrap().contains(&0));
        assert_eq!(user_of(u32::MAX - 7).unwrap(), None);
    }
}
