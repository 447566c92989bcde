//! The Debian packages (README "Install"): built by cargo-deb from this
//! build's binaries, unpacked into a folder standing for `/`, and run from
//! there. `dpkg -x` rather than `dpkg -i`: the tests run beside others on
//! one machine, and installing would take dpkg's lock, put files in /usr
//! and /etc and run the server's postinst (a system user) for every run;
//! what is checked (the files, their modes, the conffile, the Depends field,
//! the unit files against the binaries they start, the installed agent
//! serving with the installed config's layout) is the same either way.

use baton_tests::{AgentUnderTest, bin};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo deb` of one crate, from the binaries already built in this
/// profile (the tests' build; no release build).
fn build_deb(package: &str, out: &Path) -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    let have_cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have_cargo_deb,
        "cargo-deb is missing: ./scripts/test installs it (cargo install --locked cargo-deb)"
    );
    let folder = out.join(package);
    std::fs::create_dir_all(&folder).unwrap();
    run(Command::new("cargo")
        .current_dir(workspace())
        .args([
            "deb",
            "--no-build",
            "--fast",
            "--no-dbgsym",
            "--profile",
            profile,
        ])
        .args(["-p", package, "-o"])
        .arg(&folder));
    std::fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("cargo deb -p {package} made no .deb"))
}

fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))
        .trim()
        .to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `systemd-analyze verify` of an installed unit, its `/usr/bin` commands
/// pointed into `root`: the unit is sound and starts a binary the package
/// installed.
fn verify_unit(root: &Path, unit: &str, scratch: &Path) {
    let text = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(unit)).unwrap();
    let rooted = text.replace(
        "/usr/bin/baton",
        &format!("{}/usr/bin/baton", root.display()),
    );
    let copy = scratch.join(unit);
    std::fs::write(&copy, rooted).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze is missing: install Debian's systemd package");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{unit}: {stderr}"
    );
}

#[test]
fn the_debian_packages_install_a_working_agent_server_and_command_line() {
    let scratch = tempfile::tempdir().unwrap();
    let debs = scratch.path().join("debs");
    let root = scratch.path().join("root");
    let units = scratch.path().join("units");
    std::fs::create_dir_all(&units).unwrap();

    for package in ["baton-agent", "baton-server", "baton"] {
        let deb = build_deb(package, &debs);
        assert_eq!(field(&deb, "Package"), package);
        assert!(
            field(&deb, "Depends").contains("libc6"),
            "{package}: Depends: {}",
            field(&deb, "Depends")
        );
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
        if package == "baton-agent" {
            let control = scratch.path().join("agent-control");
            run(Command::new("dpkg-deb")
                .arg("--control")
                .arg(&deb)
                .arg(&control));
            let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
            assert!(conffiles.contains("/etc/baton/agent.toml"), "{conffiles}");
        }
    }

    for binary in ["baton-agent", "baton-server", "baton"] {
        assert_eq!(mode(&root.join("usr/bin").join(binary)), 0o755, "{binary}");
    }
    assert_eq!(mode(&root.join("etc/baton/agent.toml")), 0o600);
    for file in [
        "usr/share/doc/baton-agent/README.systemd.md",
        "usr/share/doc/baton-agent/examples/agent.toml",
        "usr/lib/sysusers.d/baton.conf",
    ] {
        assert!(root.join(file).is_file(), "{file} is not in the packages");
    }
    verify_unit(&root, "baton-agent.service", &units);
    verify_unit(&root, "baton-server.service", &units);

    let agent = root.join("usr/bin/baton-agent");
    // The installed config is valid as shipped (here with its sockets in a
    // scratch folder, not the machine's /run/baton).
    let shipped = std::fs::read_to_string(root.join("etc/baton/agent.toml")).unwrap();
    let checked = scratch.path().join("shipped.toml");
    std::fs::write(
        &checked,
        format!(
            "control_socket = \"{}/run/agent.sock\"\n{shipped}",
            scratch.path().display()
        ),
    )
    .unwrap();
    let check = run(Command::new(&agent)
        .arg("--check")
        .arg("--config")
        .arg(&checked));
    assert!(check.contains("ok"), "{check}");
    run(Command::new(root.join("usr/bin/baton-server")).arg("--version"));

    // The installed agent runs a demo service, and the installed command
    // line drives it.
    let under_test = AgentUnderTest::start_with_binary(
        &agent,
        &baton_tests::demo_service("web", "ready = \"notify\""),
    );
    let mut stream = std::net::TcpStream::connect(under_test.tcp_addr("web", "http")).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    let status = run(Command::new(root.join("usr/bin/baton"))
        .env_remove("BATON_SERVER")
        .arg("--agent")
        .arg(&under_test.socket)
        .arg("status"));
    assert!(status.contains("web"), "{status}");
    // Not the workspace's agent: the one from the package.
    assert_ne!(agent, bin("baton-agent"));
}
