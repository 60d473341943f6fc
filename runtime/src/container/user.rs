//! Resolving `-u user[:group]` against the image's /etc/passwd and /etc/group, as Docker
//! does (moby `pkg/idtools` / runc `libcontainer/user`): numeric ids need no entry, names do.

use std::path::PathBuf;

use super::{ContainerError, Result};

/// /etc/passwd and /etc/group larger than this are not read (they are the image's, and the
/// image may be hostile).
const MAX_ID_FILE: u64 = 1 << 20;

/// Reads `rel` (e.g. `etc/passwd`) from the topmost layer that has it. The path is resolved
/// inside the layer (an image's symlink must not make the daemon read a host file) and only
/// a regular file is read (a FIFO would block, a link to /dev/zero would never end).
fn read_from_layers(rel: &str, layers: &[PathBuf]) -> Option<String> {
    use std::io::Read;
    let path = layers.iter().rev().find_map(|l| {
        let p = crate::rootfs::path::secure_join(l, std::path::Path::new(rel)).ok()?;
        std::fs::symlink_metadata(&p).ok()?;
        Some(p)
    })?;
    if !std::fs::symlink_metadata(&path).ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_ID_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(layers: &[PathBuf]) -> Vec<Passwd> {
    read_from_layers("etc/passwd", layers)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Passwd {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// (name, gid, members)
fn groups(layers: &[PathBuf]) -> Vec<(String, u32, Vec<String>)> {
    read_from_layers("etc/group", layers)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            ))
        })
        .collect()
}

/// Resolves `user[:group]` to (uid, gid, supplementary gids).
pub fn resolve(user: &str, layers: &[PathBuf]) -> Result<(u32, u32, Vec<u32>)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let users = passwd(layers);
    let entry = match u.parse::<u32>() {
        Ok(uid) => users.iter().find(|p| p.uid == uid),
        Err(_) => Some(users.iter().find(|p| p.name == u).ok_or_else(|| {
            ContainerError::InvalidSpec(format!(
                "unable to find user {u}: no matching entries in passwd file"
            ))
        })?),
    };
    let uid = match u.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map(|e| e.uid).unwrap_or_default(),
    };
    let all_groups = groups(layers);
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => all_groups
                .iter()
                .find(|(name, _, _)| name == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| {
                    ContainerError::InvalidSpec(format!(
                        "unable to find group {g}: no matching entries in group file"
                    ))
                })?,
        },
        None => entry.map(|e| e.gid).unwrap_or(0),
    };
    let additional = match entry {
        Some(e) if g.is_none() => all_groups
            .iter()
            .filter(|(_, gid2, members)| *gid2 != gid && members.contains(&e.name))
            .map(|(_, gid2, _)| *gid2)
            .collect(),
        _ => Vec::new(),
    };
    Ok((uid, gid, additional))
}

/// The home directory of `uid` in the image, if it has one.
pub fn home(uid: u32, layers: &[PathBuf]) -> Option<String> {
    passwd(layers)
        .into_iter()
        .find(|p| p.uid == uid)
        .map(|p| p.home)
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
        )
        .expect("group");
        let layers = vec![dir.path().to_path_buf()];
        assert_eq!(
            resolve("app", &layers).expect("app"),
            (1000, 1000, vec![10])
        );
        assert_eq!(
            resolve("1000:10", &layers).expect("num"),
            (1000, 10, vec![])
        );
        assert_eq!(
            resolve("4242", &layers).expect("unknown uid"),
            (4242, 0, vec![])
        );
        assert_eq!(resolve("0:wheel", &layers).expect("grp"), (0, 10, vec![]));
        assert!(resolve("nobody-here", &layers).is_err());
        assert!(resolve("app:nogroup", &layers).is_err());
        assert_eq!(home(1000, &layers).as_deref(), Some("/home/app"));
    }
}
