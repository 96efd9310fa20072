//! The operating-system calls the standard library and `libc` give no safe form of, each behind a
//! safe function: the allocator's tunables, a thread's priority, free space, and extended
//! attributes. With the FFI bindings of the codecs (`render::decode::jpeg`,
//! `render::decode::jp2::ffi`) and the SIMD kernels (`render::decode::jpeg_simd`), this is one of
//! the few modules allowed `unsafe` (the crate root denies it).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Return the free heap at the top of every arena to the operating system (glibc's `malloc_trim`;
/// nothing elsewhere). glibc keeps freed memory for reuse, so a burst of allocations (the index's
/// recovery at open, an eviction pass) would otherwise stay in the resident set for the life of
/// the process, though nothing uses it.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; any argument is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keep up to 32 MiB of freed heap per arena for the next render, and serve blocks under 32 MiB
/// from the heap rather than fresh mappings (glibc's `M_TRIM_THRESHOLD` and `M_MMAP_THRESHOLD`;
/// nothing elsewhere). A render allocates and frees tens of megabytes per decode, which glibc by
/// default hands back to the kernel at once, so the next decode faulted every page in again: a
/// 1024 px JPEG 2000 block decode took 62 ms with the defaults, 41 ms with these. What is kept was
/// in use a moment before, so the peak resident set (the stated memory bound) does not grow.
pub(crate) fn keep_render_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's tunables; invalid values are refused (returns 0).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// Set the calling thread's nice value (Linux threads have their own). Elsewhere: nothing.
pub(crate) fn set_thread_nice(nice: i32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority reads only its integer arguments, and
        // with this thread's own id it changes only this thread's nice value.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
    Ok(())
}

/// Bytes available to unprivileged writers on the file system holding `path`.
pub(crate) fn available_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs is plain old data: all zeroes is a valid value of it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized, writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Read extended attribute `name` of `file` into `buf`; returns its length (an error when it is
/// missing, longer than `buf`, or the file system keeps none).
pub(crate) fn get_xattr(file: &File, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the name is NUL-terminated, `buf` is writable for its whole length, and the fd is
    // open for as long as `file` lives.
    let n = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Set extended attribute `name` of `file` to `value`.
pub(crate) fn set_xattr(file: &File, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: the name is NUL-terminated, `value` is readable for its whole length, and the fd is
    // open for as long as `file` lives.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_where_the_file_system_keeps_them() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = File::create(dir.path().join("f"))?;
        let name = c"user.iiifd.test";
        match set_xattr(&f, name, b"value") {
            Ok(()) => {
                let mut buf = [0u8; 16];
                assert_eq!(get_xattr(&f, name, &mut buf)?, 5);
                assert_eq!(&buf[..5], b"value");
                let mut short = [0u8; 2];
                assert!(
                    get_xattr(&f, name, &mut short).is_err(),
                    "longer than the buffer"
                );
            }
            // tmpfs before Linux 6.6 keeps no user attributes.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP)),
        }
        assert!(get_xattr(&f, c"user.iiifd.none", &mut [0u8; 4]).is_err());
        assert!(available_bytes(dir.path())? > 0);
        assert!(available_bytes(&dir.path().join("missing")).is_err());
        Ok(())
    }
}
