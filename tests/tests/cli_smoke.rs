//! Smoke test of the whole path: a real `shoald`, the demo image imported with the real
//! `shoal`, and a container run in the foreground, its output and exit code as Docker's.

use shoal_tests::Daemon;

#[test]
fn import_list_and_run() {
    let daemon = Daemon::start();
    let id = daemon.import_demo("demo:latest");
    assert!(id.starts_with("sha256:"), "import printed {id:?}");

    let images = daemon.shoal_ok(&["image", "ls"]);
    let mut lines = images.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("REPOSITORY") && header.contains("IMAGE ID"),
        "{images}"
    );
    assert!(
        lines.any(|l| l.split_whitespace().take(2).eq(["demo", "latest"])),
        "demo:latest not listed:\n{images}"
    );

    let hi = daemon.shoal(&["container", "run", "--rm", "demo", "echo", "hi"]);
    assert_eq!(
        hi.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&hi.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&hi.stdout), "hi\n");
    // --rm: gone by the time run returns, as with Docker.
    assert_eq!(daemon.shoal_ok(&["container", "ls", "-a", "-q"]), "");

    let failed = daemon.shoal(&["run", "demo", "false"]);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&failed.stderr)
    );
}
