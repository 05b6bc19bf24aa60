//! `/proc/self/maps`: which ranges are mapped, with what protection, from which file.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;
use std::io::Read;

use crate::writer::WriteError;

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Address range.
    pub range: Range<u64>,
    /// `PROT_*` bits.
    pub prot: i32,
    /// The permission field as printed (`r-xp`).
    pub perms: String,
    /// Whether the mapping is shared (`s`): a write to it reaches the file or other processes.
    pub shared: bool,
    /// The path or pseudo-path, if any, spaces included and without a ` (deleted)` suffix.
    pub path: String,
    /// Whether the kernel marked the file as deleted since it was mapped.
    pub deleted: bool,
}

impl Mapping {
    /// Whether the mapping is both writable and executable.
    pub fn is_writable_and_executable(&self) -> bool {
        self.prot & libc::PROT_WRITE != 0 && self.prot & libc::PROT_EXEC != 0
    }
}

/// Reads and parses `/proc/self/maps`.
pub fn read_maps() -> Result<Vec<Mapping>, WriteError> {
    // The file reports size 0, so an empty buffer would be grown from 32 bytes, one read (and
    // one generation of the text by the kernel) per doubling: start with room for a typical
    // process's maps. Paths need not be UTF-8: such bytes are replaced, never refused.
    let mut text = Vec::with_capacity(16 * 1024);
    std::fs::File::open("/proc/self/maps")
        .and_then(|mut f| f.read_to_end(&mut text))
        .map_err(|e| WriteError {
            addr: 0,
            reason: "cannot read /proc/self/maps",
            os_error: e.raw_os_error(),
            text_changed: false,
        })?;
    Ok(parse_maps(&String::from_utf8_lossy(&text)))
}

/// Splits off the next field separated by spaces, skipping leading spaces.
fn field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches(' ');
    if s.is_empty() {
        return None;
    }
    Some(s.split_once(' ').unwrap_or((s, "")))
}

/// Parses the text of a `/proc/PID/maps` file. Lines that do not parse are skipped.
///
/// A line is `start-end perms offset dev inode [path]`; the path is the rest of the line after
/// the padding that follows the inode, so it may contain spaces. The kernel appends ` (deleted)`
/// to the path of a file unlinked since it was mapped: that suffix is removed and recorded in
/// [`Mapping::deleted`].
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let (range, rest) = field(line)?;
    let (perms, rest) = field(rest)?;
    let (_offset, rest) = field(rest)?;
    let (_dev, rest) = field(rest)?;
    let (_inode, rest) = field(rest)?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let p = perms.as_bytes();
    if p.len() != 4 {
        return None;
    }
    let mut prot = 0;
    if p[0] == b'r' {
        prot |= libc::PROT_READ;
    }
    if p[1] == b'w' {
        prot |= libc::PROT_WRITE;
    }
    if p[2] == b'x' {
        prot |= libc::PROT_EXEC;
    }
    let path = rest.trim_start_matches(' ');
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(Mapping {
        range: start..end,
        prot,
        perms: perms.into(),
        shared: p[3] == b's',
        path: path.into(),
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_file_whose_name_is_not_utf8_is_read_not_refused() {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::io::AsRawFd;
        let name = std::ffi::OsStr::from_bytes(b"alt-maps-\xff-test.bin");
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a fresh private read-only mapping of a file this test owns, unmapped below.
        let at = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let maps = read_maps();
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(at, 4096) };
        std::fs::remove_file(&path).unwrap();
        let maps = maps.expect("maps with a non-UTF-8 path");
        let m = maps
            .iter()
            .find(|m| m.range.start == at as u64)
            .expect("the mapping is listed");
        assert!(m.path.ends_with("alt-maps-\u{fffd}-test.bin"), "{}", m.path);
    }

    #[test]
    fn maps_lines_parse() {
        let m = parse_maps(
            "55d0c0a00000-55d0c0a25000 r-xp 00002000 fe:01 123                        /usr/bin/x\n\
             7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n\
             garbage\n\
             7f00-7f10 rwxp 00000000 00:00 0\n\
             8000-9000 r-xs 00000000 fe:01 77   /tmp/my dir/lib two.so (deleted)\n\
             9000-a000 r--p 00000000 fe:01 78   /tmp/a (deleted) b\n",
        );
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].range, 0x55d0c0a00000..0x55d0c0a25000);
        assert_eq!(m[0].prot, libc::PROT_READ | libc::PROT_EXEC);
        assert_eq!(m[0].path, "/usr/bin/x");
        assert!(!m[0].shared && !m[0].deleted);
        assert_eq!(m[1].path, "[stack]");
        assert!(!m[1].is_writable_and_executable());
        assert!(m[2].is_writable_and_executable());
        assert_eq!(m[2].path, "");
        assert_eq!(m[3].path, "/tmp/my dir/lib two.so");
        assert!(m[3].shared && m[3].deleted);
        assert_eq!(m[4].path, "/tmp/a (deleted) b");
        assert!(!m[4].deleted);
    }
}
