//! Who workers run as: `user`/`group` names (or numeric ids) are resolved in the master, before
//! anything is forked, and applied in each process after the sockets are bound: supplementary
//! groups and group first, user last (after `setuid` nothing else could be changed).

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};

use crate::Error;

/// The user and group a process switches to; empty = stay as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    user: Option<(CString, Uid)>,
    gid: Option<Gid>,
}

fn lookup_user(name: &str) -> Result<User, Error> {
    let unknown = || Error::UnknownUser(name.to_owned());
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    found.map_err(|_| unknown())?.ok_or_else(unknown)
}

fn lookup_group(name: &str) -> Result<Gid, Error> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    let unknown = || Error::UnknownGroup(name.to_owned());
    Ok(Group::from_name(name).map_err(|_| unknown())?.ok_or_else(unknown)?.gid)
}

impl Identity {
    /// Resolve names (or numeric ids). With a user and no group, the user's primary group is used.
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Identity, Error> {
        let user = user.map(lookup_user).transpose()?;
        let gid = match group {
            Some(group) => Some(lookup_group(group)?),
            None => user.as_ref().map(|user| user.gid),
        };
        let user = user
            .map(|user| CString::new(user.name.clone()).map(|name| (name, user.uid)))
            .transpose()
            .map_err(|_| Error::UnknownUser("a name with a NUL byte".into()))?;
        Ok(Identity { user, gid })
    }

    /// True when nothing would change.
    pub fn is_unchanged(&self) -> bool {
        self.user.as_ref().is_none_or(|(_, uid)| *uid == nix::unistd::geteuid())
            && self.gid.is_none_or(|gid| gid == nix::unistd::getegid())
    }

    /// Switch the calling process (supplementary groups and group first, then user); the C
    /// library applies each change to every thread of the process.
    pub fn apply(&self) -> Result<(), Error> {
        if self.is_unchanged() {
            return Ok(());
        }
        let failed =
            |what: &'static str| move |errno: nix::Error| Error::Privileges { what, source: errno.into() };
        if let Some(gid) = self.gid {
            match &self.user {
                Some((name, _)) => nix::unistd::initgroups(name, gid).map_err(failed("initgroups"))?,
                None => nix::unistd::setgroups(&[gid]).map_err(failed("setgroups"))?,
            }
            nix::unistd::setgid(gid).map_err(failed("setgid"))?;
        }
        if let Some((_, uid)) = &self.user {
            nix::unistd::setuid(*uid).map_err(failed("setuid"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_configured_changes_nothing() {
        let identity = Identity::resolve(None, None).expect("resolve");
        assert_eq!(identity, Identity::default());
        assert!(identity.is_unchanged());
        identity.apply().expect("a no-op");
    }

    #[test]
    fn the_current_ids_are_a_no_op() {
        let uid = nix::unistd::geteuid().as_raw().to_string();
        let gid = nix::unistd::getegid().as_raw().to_string();
        let identity = Identity::resolve(Some(&uid), Some(&gid)).expect("resolve own ids");
        assert!(identity.is_unchanged());
        identity.apply().expect("a no-op");
    }

    #[test]
    fn unknown_names_are_refused() {
        let err = Identity::resolve(Some("no-such-user-for-prefork"), None).expect_err("unknown user");
        assert!(matches!(err, Error::UnknownUser(name) if name == "no-such-user-for-prefork"));
        let err = Identity::resolve(None, Some("no-such-group-for-prefork")).expect_err("unknown group");
        assert!(matches!(err, Error::UnknownGroup(_)));
    }
}
