//! What each package would publish: every publishable crate holds its
//! sources, manifest, README and licenses and no tests; the Python client builds an
//! sdist and a wheel; the JavaScript client packs with its types. Nothing
//! is uploaded.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Runs `program args` in `dir`; its stdout, or `None` when the program
/// is missing.
fn run(dir: &Path, program: &str, args: &[&str]) -> Option<String> {
    let out = match Command::new(program).args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("{program}: {e}"),
    };
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).expect("utf-8"))
}

/// The workspace's publishable packages (those without `publish = false`).
fn publishable() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let meta = run(
        &root(),
        &cargo,
        &[
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ],
    )
    .expect("cargo");
    let meta: serde_json::Value = serde_json::from_str(&meta).expect("cargo metadata");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["publish"].as_array().map_or(true, |r| !r.is_empty()))
        .map(|p| {
            for field in [
                "description",
                "license",
                "repository",
                "readme",
                "keywords",
                "categories",
            ] {
                let value = &p[field];
                assert!(
                    !(value.is_null() || value.as_array().is_some_and(Vec::is_empty)),
                    "{}: no {field}",
                    p["name"]
                );
            }
            p["name"].as_str().expect("a name").to_string()
        })
        .collect()
}

#[test]
fn every_publishable_crate_holds_its_sources_and_readme_and_no_tests() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let crates = publishable();
    assert!(crates.len() >= 20, "{crates:?}");
    let mut args = vec!["package", "--list", "--allow-dirty", "--offline"];
    for name in &crates {
        args.extend(["-p", name.as_str()]);
    }
    // One run for all: cargo prints each package's files in turn.
    let listed = run(&root(), &cargo, &args).expect("cargo");
    let files: Vec<&str> = listed.lines().collect();
    for forbidden in ["tests/", "benches/", "fixtures/", "node_modules/"] {
        assert!(
            !files.iter().any(|f| f.starts_with(forbidden)),
            "a package holds {forbidden}: {files:?}"
        );
    }
    for each in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        let count = files.iter().filter(|f| **f == each).count();
        assert_eq!(count, crates.len(), "one {each} per crate");
    }
    assert!(
        files.contains(&"src/dashboard.html"),
        "drs-metrics' dashboard"
    );
    assert!(files.contains(&"drs.example.toml"), "drs-cli's example");
}

#[test]
fn the_javascript_client_packs_with_its_types() {
    let dir = root().join("clients/js");
    let Some(packed) = run(
        &dir,
        "npm",
        &["pack", "--dry-run", "--json", "--ignore-scripts"],
    ) else {
        drs_testkit::skip("the_javascript_client_packs_with_its_types", "npm");
        return;
    };
    let packed: serde_json::Value = serde_json::from_str(&packed).expect("npm pack --json");
    let files: Vec<&str> = packed[0]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("a path"))
        .collect();
    for wanted in [
        "drs-client.js",
        "drs-client.d.ts",
        "README.md",
        "package.json",
        "LICENSE-MIT",
        "LICENSE-APACHE",
    ] {
        assert!(files.contains(&wanted), "{wanted} missing: {files:?}");
    }
    // npm packs no symlink: the client keeps copies of the licenses.
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let copy = std::fs::read(dir.join(license)).expect("the client's license");
        let root = std::fs::read(root().join(license)).expect("the license");
        assert!(copy == root, "clients/js/{license} differs from the root's");
    }
    assert!(
        !files.iter().any(|f| f.starts_with("test/")),
        "tests packed: {files:?}"
    );
    assert_eq!(packed[0]["name"], "drsrpc");
}

#[test]
fn the_python_client_builds_an_sdist_and_a_wheel() {
    let python = "python3";
    let has_build = Command::new(python)
        .args(["-c", "import build, wheel, setuptools"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_build {
        drs_testkit::skip(
            "the_python_client_builds_an_sdist_and_a_wheel",
            "Python's build, wheel and setuptools packages",
        );
        return;
    }
    // Without isolation: the build uses the installed setuptools instead
    // of fetching one (tests reach no network but loopback).
    let out = std::env::temp_dir().join(format!("drs-python-dist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let out_arg = out.to_str().expect("utf-8");
    run(
        &root().join("clients/python"),
        python,
        &["-m", "build", "--no-isolation", "--outdir", out_arg, "."],
    )
    .expect("python3");
    let built: Vec<String> = std::fs::read_dir(&out)
        .expect("the dist folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        built.iter().any(|f| f == "drsrpc-0.1.0.tar.gz"),
        "{built:?}"
    );
    let sdist = run(
        &out,
        "python3",
        &["-m", "tarfile", "-l", "drsrpc-0.1.0.tar.gz"],
    )
    .expect("python3");
    let wheel = built
        .iter()
        .find(|f| f.starts_with("drsrpc-0.1.0-") && f.ends_with(".whl"))
        .unwrap_or_else(|| panic!("no wheel: {built:?}"));
    let listing = run(&out, "python3", &["-m", "zipfile", "-l", wheel]).expect("python3");
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        assert!(
            sdist.contains(&format!("drsrpc-0.1.0/{license}")),
            "{license} not in the sdist:\n{sdist}"
        );
        assert!(
            listing.contains(&format!("drsrpc-0.1.0.dist-info/{license}")),
            "{license} not in the wheel:\n{listing}"
        );
    }
    for module in [
        "drs_client/__init__.py",
        "drs_client/aio.py",
        "drs_client/sync.py",
    ] {
        assert!(
            listing.contains(module),
            "{module} not in the wheel:\n{listing}"
        );
    }
    assert!(
        !listing.contains("tests/"),
        "tests in the wheel:\n{listing}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
