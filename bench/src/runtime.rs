//! Runtime benchmark (issue 3): the lifecycle of a `/bin/true` container — create, start,
//! wait, remove — through shoal's runtime API, through the whole `shoal container run --rm`
//! path (client + daemon), and through Debian's `runc run`, on the same busybox root
//! filesystem, in one run; prints medians and ratios, and the resident memory of one idle
//! supervisor. Run it with `bench/runtime.sh` (release build, as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use shoal_runtime::{ContainerSpec, Runtime, RuntimeConfig};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?.to_path_buf();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("repo")?
        .to_path_buf();
    let work = tempfile::Builder::new().prefix("shoal-bench").tempdir()?;
    let tar = work.path().join("rootfs.tar");
    let st = Command::new(repo.join("deploy/build-demo-image.sh"))
        .arg(&tar)
        .stdout(Stdio::null())
        .status()?;
    ensure!(st.success(), "build-demo-image.sh failed");

    println!("runtime benchmark: {n} runs each of create+start+wait+remove of /bin/true");
    let api = bench_api(&bin, work.path(), &tar, n)?;
    let runc = bench_runc(work.path(), &tar, n)?;
    let cli = if bin.join("shoald").exists() {
        Some(bench_cli(&bin, work.path(), &tar, n)?)
    } else {
        println!("(no shoald next to the benchmark: CLI path skipped)");
        None
    };
    let rss = idle_shim_rss(&bin, work.path(), &tar)?;

    println!();
    println!("{:<40} {:>10}", "path", "median ms");
    println!("{:<40} {:>10.2}", "shoal runtime API", ms(api));
    if let Some(cli) = cli {
        let label = "shoal container run --rm (CLI+daemon)";
        println!("{label:<40} {:>10.2}", ms(cli));
    }
    println!("{:<40} {:>10.2}", "runc run", ms(runc));
    println!();
    println!(
        "ratio shoal API / runc      = {:.3}  (target <= 0.333)",
        api.as_secs_f64() / runc.as_secs_f64()
    );
    if let Some(cli) = cli {
        println!(
            "ratio shoal CLI run / runc  = {:.3}  (target <= 1.0)",
            cli.as_secs_f64() / runc.as_secs_f64()
        );
    }
    println!(
        "idle supervisor RSS         = {:.0} KiB  (target < 2048 KiB)",
        rss as f64
    );
    Ok(())
}

fn runtime(bin: &Path, root: PathBuf) -> Result<Runtime> {
    let mut cfg = RuntimeConfig::new(root);
    cfg.shim = bin.join("shoal-shim");
    cfg.cgroup_parent = "shoal-bench".into();
    Ok(Runtime::open(cfg)?)
}

fn bench_api(bin: &Path, work: &Path, tar: &Path, n: usize) -> Result<Duration> {
    let rt = runtime(bin, work.join("api"))?;
    rt.images()
        .import(&mut std::fs::File::open(tar)?, "bench:latest")?;
    // `--rm`, as the CLI path below and `runc run` (which deletes its container at exit):
    // the container is not started again, so its overlay is volatile (no sync at exit).
    let spec = ContainerSpec {
        image: "bench:latest".into(),
        cmd: vec!["/bin/true".into()],
        auto_remove: std::env::var_os("NO_RM").is_none(),
        ..Default::default()
    };
    let mut times = Vec::with_capacity(n);
    let mut phases: [Vec<Duration>; 4] = Default::default();
    for i in 0..n + 5 {
        let t = Instant::now();
        let c = rt.create(spec.clone())?;
        let t1 = Instant::now();
        rt.start(&c.id)?;
        let t2 = Instant::now();
        let s = rt.wait(&c.id)?;
        let t3 = Instant::now();
        rt.remove(&c.id, false)?;
        let d = t.elapsed();
        ensure!(s.exit_code == 0, "exit {}", s.exit_code);
        // The first runs warm the page cache and the cgroup hierarchy.
        if i >= 5 {
            times.push(d);
            phases[0].push(t1 - t);
            phases[1].push(t2 - t1);
            phases[2].push(t3 - t2);
            phases[3].push(t3.elapsed());
        }
    }
    let [create, start, wait, remove] = phases.map(median);
    println!(
        "shoal API phases (median ms): create {:.2}, start {:.2}, wait {:.2}, remove {:.2}",
        ms(create),
        ms(start),
        ms(wait),
        ms(remove)
    );
    Ok(median(times))
}

fn bench_runc(work: &Path, tar: &Path, n: usize) -> Result<Duration> {
    let bundle = work.join("runc");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let st = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(&rootfs)
        .status()?;
    ensure!(st.success(), "untar rootfs");
    let st = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .context("runc not found: apt-get install -y runc")?;
    ensure!(st.success(), "runc spec");
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path)?)?;
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let id = format!("shoal-bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let st = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        let d = t.elapsed();
        if !st.success() {
            let _ = Command::new("runc").args(["delete", "-f", &id]).status();
            bail!("runc run failed: {st}");
        }
        if i >= 5 {
            times.push(d);
        }
    }
    Ok(median(times))
}

struct Daemon {
    child: std::process::Child,
    sock: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench_cli(bin: &Path, work: &Path, tar: &Path, n: usize) -> Result<Duration> {
    let sock = work.join("shoal.sock");
    let child = Command::new(bin.join("shoald"))
        .arg("--data-root")
        .arg(work.join("cli"))
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .stderr(Stdio::null())
        .spawn()
        .context("start shoald")?;
    let d = Daemon { child, sock };
    for _ in 0..200 {
        if d.sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let shoal = |args: &[&str]| -> Result<()> {
        let st = Command::new(bin.join("shoal"))
            .arg("-H")
            .arg(format!("unix://{}", d.sock.display()))
            .args(args)
            .stdout(Stdio::null())
            .status()?;
        ensure!(st.success(), "shoal {args:?}: {st}");
        Ok(())
    };
    shoal(&[
        "image",
        "import",
        &tar.display().to_string(),
        "bench:latest",
    ])?;
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let t = Instant::now();
        // runc's bundle has a network namespace with loopback only: `none`, not the default
        // bridge, is the same work.
        shoal(&[
            "container",
            "run",
            "--rm",
            "--network",
            "none",
            "bench:latest",
            "/bin/true",
        ])?;
        if i >= 5 {
            times.push(t.elapsed());
        }
    }
    Ok(median(times))
}

fn idle_shim_rss(bin: &Path, work: &Path, tar: &Path) -> Result<u64> {
    let rt = runtime(bin, work.join("rss"))?;
    rt.images()
        .import(&mut std::fs::File::open(tar)?, "bench:latest")?;
    let c = rt.create(ContainerSpec {
        image: "bench:latest".into(),
        cmd: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    })?;
    let c = rt.start(&c.id)?;
    std::thread::sleep(Duration::from_millis(300));
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.state.shim_pid))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    rt.remove(&c.id, true)?;
    Ok(rss)
}
