//! `Runtime::open` and `Runtime::create`: resolving a [`ContainerSpec`] against its image
//! into a container directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::state::{files, write_json, StoredContainer};
use super::{Container, ContainerError, Result, Runtime, RuntimeConfig, DEFAULT_PATH};
use crate::image::{ImageInfo, ImageStore};
use crate::security::caps;
use crate::spec::{ContainerSpec, ProcessSpec, RunSpec};

impl Runtime {
    /// Opens the runtime at `cfg.root`, creating its directories.
    pub fn open(cfg: RuntimeConfig) -> Result<Runtime> {
        let containers = cfg.root.join("containers");
        fs::create_dir_all(&containers).map_err(|source| ContainerError::Io {
            op: "create",
            path: containers.clone(),
            source,
        })?;
        for sub in ["trash", ROOTFS_MOUNT_POINT] {
            let dir = cfg.root.join(sub);
            fs::create_dir_all(&dir).map_err(|source| ContainerError::Io {
                op: "create",
                path: dir.clone(),
                source,
            })?;
        }
        let images = ImageStore::open(&cfg.root.join("image"))?;
        let rt = Runtime {
            cfg,
            images,
            zygotes: Default::default(),
        };
        {
            let _lock = rt.lock_containers()?;
            rt.sweep_partial()?;
            // After the sweep, so that a half-created container's name is not indexed.
            rt.open_names()?;
        }
        Ok(rt)
    }

    /// Removes directories a crash left half-created or half-removed (no `container.json`):
    /// `create` writes that file last and `remove` deletes it first, under the same lock,
    /// which the caller holds.
    fn sweep_partial(&self) -> Result<()> {
        if let Ok(entries) = fs::read_dir(self.trash_dir()) {
            for e in entries.flatten() {
                super::delete::purge(&e.path());
            }
        }
        for e in super::lookup::read_dir(&self.cfg.root.join("containers"))?.flatten() {
            let path = e.path();
            if path.is_dir() && !path.join(super::state::files::CONTAINER).exists() {
                tracing::info!(path = %path.display(), "removing partial container directory");
                if let Err(err) = fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), %err, "remove partial container");
                }
            }
        }
        Ok(())
    }

    /// The node's image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// Creates a container from `spec`: resolves the image and the process, prepares the
    /// container's directory. Nothing runs until [`Runtime::start`].
    pub fn create(&self, spec: ContainerSpec) -> Result<Container> {
        let image = self.images.resolve(&spec.image)?;
        let layers = self.images.layer_dirs(&image)?;
        let init_layer = self.images.init_layer(&image, &layers)?;
        let id = new_id();
        let process = resolve_process(&spec, &image, &layers)?;
        let requested = match &spec.name {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(n).to_string();
                validate_name(&n)?;
                Some(n)
            }
            None => None,
        };
        // Held until container.json is written: the name index tells a stale entry from one
        // whose create is under way only under this lock (see `names.rs`).
        let _lock = self.lock_containers()?;
        let name = match requested {
            Some(n) => {
                self.reserve_name(&n, &id)?;
                n
            }
            None => self.generate_name(&id)?,
        };
        let dir = self.container_dir(&id);
        // overlayfs lists the top layer first.
        let lower_dirs = init_layer
            .into_iter()
            .chain(layers.into_iter().rev())
            .collect();
        let result = self.write_container(&dir, &id, &name, spec, image, lower_dirs, process);
        if let Err(err) = &result {
            let _ = fs::remove_dir_all(&dir);
            // A leftover entry is stale (no container.json) and would be dropped when next
            // found; logged so that it is not a silent leak.
            if let Err(cleanup) = self.release_name(&name, &id) {
                tracing::warn!(
                    container = %id, %name, %err, %cleanup,
                    "release the name of a failed create"
                );
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn write_container(
        &self,
        dir: &Path,
        id: &str,
        name: &str,
        spec: ContainerSpec,
        image: ImageInfo,
        lower_dirs: Vec<PathBuf>,
        process: ProcessSpec,
    ) -> Result<Container> {
        for sub in ["upper", "work"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|source| ContainerError::Io {
                op: "create",
                path: p,
                source,
            })?;
        }
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| id[..12].to_string());
        let run = RunSpec {
            id: id.to_string(),
            process: process.clone(),
            hostname,
            lower_dirs,
            upper_dir: dir.join("upper"),
            work_dir: dir.join("work"),
            rootfs: self.cfg.root.join(ROOTFS_MOUNT_POINT),
            read_only: spec.read_only,
            volatile: spec.auto_remove || spec.disposable,
            network: spec.network.clone(),
            names: spec.names.clone(),
            cgroup: self.cfg.cgroup_parent.clone(),
            memory: spec.memory,
            nano_cpus: spec.nano_cpus,
            pids_limit: spec.pids_limit,
            log_max_size: self.cfg.log_max_size,
        };
        let container = Container {
            id: id.to_string(),
            name: name.to_string(),
            image: spec.image.clone(),
            image_id: image.id,
            created: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            spec,
            process,
            state: Default::default(),
        };
        let io = |source| ContainerError::Io {
            op: "write",
            path: dir.to_path_buf(),
            source,
        };
        // One file, written last: its presence is what makes the directory a container.
        write_json(
            dir,
            files::CONTAINER,
            &StoredContainer::new(&container, &run),
        )
        .map_err(io)?;
        Ok(container)
    }

    /// Picks a free name and reserves it for `id`, as `create` does with a requested one.
    fn generate_name(&self, id: &str) -> Result<String> {
        let mut attempt = 0;
        loop {
            let seed = random_u64() ^ attempt;
            let name = if attempt < WORD_NAME_ATTEMPTS {
                let left = NAME_LEFT[(seed % NAME_LEFT.len() as u64) as usize];
                let right = NAME_RIGHT[((seed >> 16) % NAME_RIGHT.len() as u64) as usize];
                format!("{left}_{right}")
            } else {
                format!("shoal_{:08x}", seed as u32)
            };
            match self.reserve_name(&name, id) {
                Ok(()) => return Ok(name),
                // 32 random bits colliding this often means the entropy source is broken,
                // not that the names ran out: give up rather than loop.
                Err(e @ ContainerError::NameInUse { .. })
                    if attempt + 1 == GENERATED_NAME_ATTEMPTS =>
                {
                    return Err(e)
                }
                Err(ContainerError::NameInUse { .. }) => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Where every container's init mounts its root, in its own mount namespace (made private
/// first, so no mount there is seen outside): one directory for all containers rather than
/// one more inode to make per container.
const ROOTFS_MOUNT_POINT: &str = "rootfs";

/// Word pairs tried before falling back to `shoal_<hex>`: there are only 256 pairs, so once a
/// node has a few hundred unnamed containers most tries collide, and each costs a reservation
/// attempt; a handful keeps the readable names for small nodes without spending long on full
/// ones.
const WORD_NAME_ATTEMPTS: u64 = 16;
/// All attempts, the random-hex ones included.
const GENERATED_NAME_ATTEMPTS: u64 = WORD_NAME_ATTEMPTS + 8;

// Docker's generator has long lists; a short one is enough, collisions retry.
const NAME_LEFT: [&str; 16] = [
    "brave", "calm", "eager", "fervent", "gentle", "happy", "keen", "lucid", "nifty", "quirky",
    "serene", "sharp", "swift", "tender", "vivid", "zealous",
];
const NAME_RIGHT: [&str; 16] = [
    "babbage", "curie", "dijkstra", "euler", "feynman", "gauss", "hopper", "knuth", "lamport",
    "liskov", "lovelace", "noether", "ritchie", "shannon", "thompson", "turing",
];

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    // getrandom never fails for 8 bytes once the pool is initialised; fall back to time.
    if n != b.len() as isize {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        return t ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}

/// A new 64-hex container id.
pub(crate) fn new_id() -> String {
    (0..4).map(|_| format!("{:016x}", random_u64())).collect()
}

/// Docker's rule for container names; what it accepts is also a safe file name in `names/`
/// (no `/`, never `.` or `..`, never a dot file).
pub(super) fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::InvalidName(name.to_string()))
    }
}

/// Turns the request and the image config into the exact process to run.
fn resolve_process(
    spec: &ContainerSpec,
    image: &ImageInfo,
    layers: &[PathBuf],
) -> Result<ProcessSpec> {
    let cfg = &image.config;
    // Docker: an explicit --entrypoint discards the image's Cmd.
    let (entrypoint, cmd) = match &spec.entrypoint {
        Some(ep) => (ep.clone(), spec.cmd.clone()),
        None => {
            let cmd = if spec.cmd.is_empty() {
                cfg.cmd.clone().unwrap_or_default()
            } else {
                spec.cmd.clone()
            };
            (cfg.entrypoint.clone().unwrap_or_default(), cmd)
        }
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() || args[0].is_empty() {
        return Err(ContainerError::InvalidSpec("no command specified".into()));
    }
    let hostname = spec.hostname.clone();
    let mut env = merge_env(&cfg.env, &spec.env)?;
    if !env.iter().any(|kv| kv.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if let Some(h) = hostname {
        env.retain(|kv| !kv.starts_with("HOSTNAME="));
        env.insert(0, format!("HOSTNAME={h}"));
    }
    if spec.tty && !env.iter().any(|kv| kv.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let user = spec
        .user
        .clone()
        .or_else(|| cfg.user.clone())
        .filter(|u| !u.is_empty());
    let (uid, gid, additional_gids) = match user {
        Some(u) => crate::container::user::resolve(&u, layers)?,
        None => (0, 0, Vec::new()),
    };
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            crate::container::user::home(uid, layers).unwrap_or_else(|| "/".into())
        ));
    }
    let mut capabilities = caps::resolve(&spec.cap_add, &spec.cap_drop)
        .map_err(|e| ContainerError::InvalidSpec(e.to_string()))?;
    if !crate::cgroups::device_control_available() {
        // Without a devices cgroup (cgroup v2 needs a BPF program we do not load yet) the
        // only guard against mknod of a host disk is not being allowed to mknod at all.
        capabilities.retain(|c| c != "CAP_MKNOD");
    }
    let cwd = spec
        .workdir
        .clone()
        .or_else(|| cfg.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(ContainerError::InvalidSpec(format!(
            "the working directory '{cwd}' is invalid, it needs to be an absolute path"
        )));
    }
    if let Some(m) = spec.memory {
        // Docker's lower bound: the kernel needs some room to run anything at all.
        if m < 6 * 1024 * 1024 {
            return Err(ContainerError::InvalidSpec(
                "Minimum memory limit allowed is 6MB".into(),
            ));
        }
    }
    if let Some(c) = spec.nano_cpus {
        if c <= 0 {
            return Err(ContainerError::InvalidSpec(format!(
                "Range of CPUs is from 0.01 to {}.00, as there are only {} CPUs available",
                num_cpus(),
                num_cpus()
            )));
        }
    }
    Ok(ProcessSpec {
        args,
        env,
        cwd,
        uid,
        gid,
        additional_gids,
        capabilities,
        tty: spec.tty,
        open_stdin: spec.open_stdin,
    })
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Image environment overridden key by key by the request; `-e KEY` without `=` is dropped
/// (Docker would take it from the client's environment, which the client does).
fn merge_env(base: &[String], overrides: &[String]) -> Result<Vec<String>> {
    let mut env: Vec<String> = base.to_vec();
    for kv in overrides {
        let Some((k, _)) = kv.split_once('=') else {
            continue;
        };
        if k.is_empty() {
            return Err(ContainerError::InvalidSpec(format!(
                "invalid environment variable: {kv}"
            )));
        }
        env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k) && e != k);
        env.push(kv.clone());
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["ab", "web-1", "a.b_c", "X9"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["a", "-ab", "a b", "a/b", "", "_x"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_overrides_by_key() {
        let env = merge_env(
            &["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
        )
        .expect("merge");
        assert_eq!(env, ["PATH=/bin", "A=2", "B=3"]);
        assert!(merge_env(&[], &["=x".into()]).is_err());
    }

    #[test]
    fn ids_are_64_hex() {
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
