//! What every reader of cgroup files shares: the hierarchy's version and
//! the unsigned integers the files hold. A leaf, so that the quota, share
//! and throttling readers need not import one another.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

pub(crate) fn parse_u64(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("expected an unsigned integer, got {text:?}"))
}
