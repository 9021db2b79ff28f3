//! Installing like a GStreamer plugin: `meson setup` + `meson install` put
//! the plugin in the system plugin directory and `cpuguard-run` in bindir,
//! where GStreamer and a shell find them; `cargo install --path .` gives the
//! binary. The release build is shared with the workspace's target dir, so
//! this costs one release build at most.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// target/<profile>/deps/<test> -> target
fn cargo_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .expect("target dir above the test binary")
        .to_path_buf()
}

fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run {cmd:?}: {e} (scripts/deps.sh installs it)")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where gst-inspect-1.0 and every GStreamer app look for system plugins.
fn system_plugin_dir() -> PathBuf {
    let out = run(
        "pkg-config",
        Command::new("pkg-config").args(["--variable=pluginsdir", "gstreamer-1.0"]),
    );
    PathBuf::from(stdout(&out).trim())
}

/// `dest` + an absolute path.
fn staged(dest: &Path, path: &Path) -> PathBuf {
    dest.join(path.strip_prefix("/").unwrap_or(path))
}

#[test]
fn meson_install_puts_the_plugin_where_gstreamer_looks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let build = tmp.path().join("build");
    let dest = tmp.path().join("dest");
    let src = env!("CARGO_MANIFEST_DIR");

    run(
        "meson setup",
        Command::new("meson")
            .args(["setup", "--prefix=/usr"])
            .arg(format!(
                "-Dcargo_target_dir={}",
                cargo_target_dir().display()
            ))
            .arg(&build)
            .arg(src),
    );
    run(
        "meson install",
        Command::new("meson")
            .args(["install", "--quiet", "-C"])
            .arg(&build)
            .arg("--destdir")
            .arg(&dest),
    );

    // With prefix /usr, the plugin lands in GStreamer's own plugin directory.
    let plugins = staged(&dest, &system_plugin_dir());
    let plugin = plugins.join("libgstcpuguard.so");
    assert!(
        plugin.is_file(),
        "meson did not install {} (installed: {:?})",
        plugin.display(),
        walk(&dest)
    );

    // Found from that directory alone, with a registry of its own.
    let inspect = run(
        "gst-inspect-1.0 cpuguard",
        Command::new("gst-inspect-1.0")
            .arg("cpuguard")
            .env("GST_PLUGIN_SYSTEM_PATH", &plugins)
            .env_remove("GST_PLUGIN_PATH")
            .env("GST_REGISTRY", tmp.path().join("registry.bin")),
    );
    let text = stdout(&inspect);
    assert!(text.contains("CPU guard"), "no element in:\n{text}");
    assert!(
        text.contains(&plugin.display().to_string()),
        "not loaded from {}:\n{text}",
        plugin.display()
    );

    let bin = staged(&dest, Path::new("/usr/bin/cpuguard-run"));
    let version = run(
        "installed cpuguard-run --version",
        Command::new(&bin).arg("--version"),
    );
    assert_eq!(
        stdout(&version).trim(),
        concat!("cpuguard-run ", env!("CARGO_PKG_VERSION"))
    );

    // `cargo install --path .` reuses the same release build.
    let root = tmp.path().join("cargo-root");
    run(
        "cargo install --path .",
        Command::new(env!("CARGO"))
            .args(["install", "--locked", "--quiet", "--path", src, "--root"])
            .arg(&root)
            .arg("--target-dir")
            .arg(cargo_target_dir()),
    );
    let version = run(
        "cargo-installed cpuguard-run --version",
        Command::new(root.join("bin/cpuguard-run")).arg("--version"),
    );
    assert!(stdout(&version).starts_with("cpuguard-run "));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}
