//! Text parsing of `/proc/<pid>/cgroup` and `/proc/<pid>/mountinfo`.
//!
//! Parsers return `Err(detail)`; the caller wraps it with the file name.

use std::borrow::Cow;
use std::path::PathBuf;

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Membership {
    /// Empty for the cgroup v2 line (`0::/path`).
    pub controllers: Vec<String>,
    pub path: String,
}

impl Membership {
    pub fn is_unified(&self) -> bool {
        self.controllers.is_empty()
    }

    pub fn has_controller(&self, name: &str) -> bool {
        self.controllers.iter().any(|c| c == name)
    }
}

pub(crate) fn parse_proc_cgroup(text: &str) -> Result<Vec<Membership>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // The path may itself contain ':', hence splitn.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("expected `id:controllers:path`, got {line:?}"));
        };
        if id.parse::<u32>().is_err() {
            return Err(format!("bad hierarchy id in {line:?}"));
        }
        out.push(Membership {
            controllers: controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            path: path.to_owned(),
        });
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CgroupFs {
    V1,
    V2,
}

/// A cgroup filesystem mount from mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub fs: CgroupFs,
    /// The cgroup that appears at the mount point (4th field); not `/` in
    /// containers that bind-mount their own subtree.
    pub root: PathBuf,
    /// Host path of the mount point (5th field), not yet re-rooted.
    pub mount_point: PathBuf,
    /// Super options; for v1 they list the controllers (`rw,cpu,cpuacct`).
    pub super_options: String,
}

impl CgroupMount {
    pub fn has_controller(&self, name: &str) -> bool {
        self.fs == CgroupFs::V1 && self.super_options.split(',').any(|o| o == name)
    }
}

/// Returns the cgroup mounts; other mounts are only checked for shape.
pub(crate) fn parse_cgroup_mounts(text: &str) -> Result<Vec<CgroupMount>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let (Some(_id), Some(_parent), Some(_dev), Some(root), Some(mount_point)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(format!("too few fields in {line:?}"));
        };
        // Optional fields come before the lone "-" separator.
        let mut after = fields.skip_while(|f| *f != "-").skip(1);
        let (Some(fstype), Some(_source)) = (after.next(), after.next()) else {
            return Err(format!("no ` - fstype source` part in {line:?}"));
        };
        let fs = match fstype {
            "cgroup" => CgroupFs::V1,
            "cgroup2" => CgroupFs::V2,
            _ => continue,
        };
        out.push(CgroupMount {
            fs,
            root: PathBuf::from(unescape(root).as_ref()),
            mount_point: PathBuf::from(unescape(mount_point).as_ref()),
            super_options: after.next().unwrap_or_default().to_owned(),
        });
    }
    Ok(out)
}

/// Undoes mountinfo's octal escapes (`\040` for space, `\134` for backslash...).
fn unescape(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
    }
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        let octal = tail
            .get(..3)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(decoded) => {
                out.push(decoded);
                rest = tail.get(3..).unwrap_or_default();
            }
            None => {
                out.push(b);
                rest = tail;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_proc_cgroup() {
        let text = "9:name=systemd:/\n2:cpuacct:/a\n1:cpu:/a\n3:cpu,cpuacct:/b:c\n0::/user.slice\n";
        let entries = parse_proc_cgroup(text).unwrap();
        assert_eq!(entries.len(), 5);
        assert!(entries[2].has_controller("cpu"));
        assert!(!entries[1].has_controller("cpu"));
        assert!(entries[3].has_controller("cpuacct"));
        assert_eq!(entries[3].path, "/b:c");
        assert!(entries[4].is_unified());
        assert_eq!(entries[4].path, "/user.slice");
    }

    #[test]
    fn rejects_malformed_proc_cgroup() {
        assert!(parse_proc_cgroup("garbage\n").is_err());
        assert!(parse_proc_cgroup("x:cpu:/\n").is_err());
        assert_eq!(parse_proc_cgroup("").unwrap(), vec![]);
    }

    #[test]
    fn parses_cgroup_mounts_only() {
        let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
32 31 0:29 /docker/x /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:7 master:1 - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
        let mounts = parse_cgroup_mounts(text).unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].fs, CgroupFs::V1);
        assert_eq!(mounts[0].root, PathBuf::from("/docker/x"));
        assert_eq!(
            mounts[0].mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert!(mounts[0].has_controller("cpu"));
        assert!(mounts[0].has_controller("cpuacct"));
        assert!(!mounts[0].has_controller("cpuset"));
        assert_eq!(mounts[1].fs, CgroupFs::V2);
        assert!(!mounts[1].has_controller("cpu"));
    }

    #[test]
    fn rejects_malformed_mountinfo() {
        assert!(parse_cgroup_mounts("1 2 3\n").is_err());
        assert!(parse_cgroup_mounts("1 2 0:1 / /x rw cgroup cgroup rw\n").is_err());
    }

    #[test]
    fn unescapes_octal_sequences() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/a\\134b"), "/a\\b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\"), "/trailing\\");
        assert_eq!(unescape("/bad\\09x"), "/bad\\09x");
    }
}
