//! The client packages' own suites, against the real `demo_server`:
//! `clients/python` (pytest) and `clients/js` (Node's test runner). Each
//! suite starts and restarts demo_servers itself (`DRS_DEMO_SERVER` names
//! the binary); the TLS tests get a CA and a certificate for `localhost`
//! made here (`DRS_TLS_CA`, `DRS_TLS_CERT`, `DRS_TLS_KEY`; no key is
//! committed).
//!
//! CI installs Python's and Node's packages (`.ci/run`); where they are
//! missing and `CI` is not set, these tests say so (`SKIPPED …`) and pass
//! without running.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::{example_path, python_has};

/// A CA and a server certificate for `localhost` in a directory of their
/// own: (dir, ca, cert, key).
fn tls_files(tag: &str) -> (PathBuf, String, String, String) {
    use drs_tls::test_pki::{TestCa, Usage};
    let ca = TestCa::new("drs client test CA");
    let (cert, key) = ca.issue("localhost", &["localhost"], Usage::Server, false);
    let dir = std::env::temp_dir().join(format!("drs-clients-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("PEM written");
        path.to_string_lossy().into_owned()
    };
    let (ca, cert, key) = (
        file("ca.pem", ca.pem()),
        file("server.pem", cert),
        file("server.key", key),
    );
    (dir, ca, cert, key)
}

fn clients_dir(which: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("clients")
        .join(which)
}

/// Runs `program args` in `dir` with the demo server and the TLS files in
/// its environment, and fails with its output unless it succeeds.
fn run_suite(tag: &str, program: &str, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> String {
    let demo = example_path("demo_server");
    let (tls_dir, ca, cert, key) = tls_files(tag);
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("DRS_DEMO_SERVER", &demo)
        .env("DRS_TLS_CA", &ca)
        .env("DRS_TLS_CERT", &cert)
        .env("DRS_TLS_KEY", &key)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let _ = std::fs::remove_dir_all(&tls_dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn python_client_package() {
    if !python_has(&["websockets", "msgpack", "pytest"]) {
        return;
    }
    let dir = clients_dir("python");
    let stdout = run_suite(
        "py",
        "python3",
        &["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        &dir,
        &[("PYTHONPATH", dir.to_str().expect("a UTF-8 path"))],
    );
    assert!(stdout.contains(" passed"), "{stdout}");
    assert!(
        !stdout.contains("skipped"),
        "nothing may skip here: {stdout}"
    );
}

/// Whether Node can run the JS client's tests: `node` on the PATH and the
/// package's dependencies installed (`npm install` in clients/js).
fn node_ready(dir: &Path) -> bool {
    let mut probe = Command::new("node");
    probe
        .args([
            "-e",
            "import('ws').then(() => process.exit(0), () => process.exit(1))",
        ])
        .current_dir(dir);
    common::ready(
        probe,
        "node with clients/js's dependencies (cd clients/js && npm install)",
    )
}

#[test]
fn js_client_package() {
    let dir = clients_dir("js");
    if !node_ready(&dir) {
        return;
    }
    let stdout = run_suite(
        "js",
        "node",
        &["--test", "--test-reporter=spec", "test/"],
        &dir,
        &[],
    );
    assert!(stdout.contains("pass"), "{stdout}");
    assert!(
        !stdout.contains("# skipped") || stdout.contains("# skipped 0"),
        "nothing may skip here: {stdout}"
    );
}

/// The code blocks of a README in `lang`, as written.
fn code_blocks(readme: &Path, lang: &str) -> Vec<String> {
    let text = std::fs::read_to_string(readme).expect("the README");
    let fence = format!("```{lang}\n");
    text.split(&fence)
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default().to_string())
        .collect()
}

/// The demo server the READMEs name (`--tcp 127.0.0.1:12000 --ws
/// 127.0.0.1:12001`), on free ports: (server, how to rewrite a block).
fn readme_server() -> (common::DemoServer, impl Fn(&str) -> String) {
    let server = common::DemoServer::start(&["--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0"]);
    let (tcp, ws) = (server.addr(0).to_string(), server.addr(1).to_string());
    let rewrite = move |block: &str| {
        block
            .replace("127.0.0.1:12000", &tcp)
            .replace("127.0.0.1:12001", &ws)
    };
    (server, rewrite)
}

/// Every Python example of clients/python/README.md runs as written
/// against the demo server the README names, and exits quietly.
#[test]
fn the_python_readme_examples_run() {
    if !python_has(&["websockets"]) {
        return;
    }
    let dir = clients_dir("python");
    let blocks = code_blocks(&dir.join("README.md"), "python");
    assert!(blocks.len() >= 2, "the README's examples");
    let (_server, rewrite) = readme_server();
    for block in blocks {
        let mut python = Command::new("python3");
        python
            .args(["-c", &rewrite(&block)])
            .env("PYTHONPATH", &dir);
        runs_quietly(python, &block).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Runs `command` (an example `block`): an error unless it succeeds with
/// nothing on stderr.
fn runs_quietly(mut command: Command, block: &str) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .expect("the example runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stderr.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{block}\nfailed or was not quiet:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    ))
}

/// Every JavaScript example of clients/js/README.md runs as written in
/// Node (importing the package by its name) against the demo server the
/// README names.
#[test]
fn the_js_readme_examples_run() {
    let dir = clients_dir("js");
    if !node_ready(&dir) {
        return;
    }
    let blocks = code_blocks(&dir.join("README.md"), "js");
    assert!(!blocks.is_empty(), "the README's examples");
    let (_server, rewrite) = readme_server();
    for (i, block) in blocks.iter().enumerate() {
        // Inside the package, so that `import … from "drsrpc"` finds it.
        let file = dir.join(format!(".readme-example-{}-{i}.mjs", std::process::id()));
        std::fs::write(&file, rewrite(block)).expect("written");
        let mut node = Command::new("node");
        node.arg(&file).current_dir(&dir);
        let ran = runs_quietly(node, block);
        let _ = std::fs::remove_file(&file);
        ran.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The JavaScript package installs into a project of one's own both ways
/// its README gives, with Node as CI has it (no global WebSocket before
/// Node 22: `ws` must come along): from the folder with
/// `--install-links` (a plain folder install is a symlink whose
/// dependencies stay behind) and from `npm pack`'s tarball. Offline: `ws`
/// comes from npm's cache, filled by `npm ci` in clients/js.
#[test]
fn the_js_package_installs_from_its_folder_and_from_a_tarball() {
    let dir = clients_dir("js");
    if !node_ready(&dir) {
        return;
    }
    let package = dir.canonicalize().expect("clients/js");
    let server = common::DemoServer::start(&["--ws", "127.0.0.1:0"]);
    let npm = |cwd: &Path, args: &[&str]| {
        let out = Command::new("npm")
            .args(args)
            .args(["--offline", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .expect("npm runs");
        assert!(
            out.status.success(),
            "npm {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for way in ["folder", "tarball"] {
        let project =
            std::env::temp_dir().join(format!("drs-js-install-{way}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&project);
        std::fs::create_dir_all(&project).expect("project dir");
        std::fs::write(
            project.join("package.json"),
            r#"{"name": "consumer", "private": true, "type": "module"}"#,
        )
        .expect("package.json");
        let target = match way {
            "folder" => package.to_string_lossy().into_owned(),
            _ => {
                let tarball = npm(
                    &project,
                    &[
                        "pack",
                        &package.to_string_lossy(),
                        "--pack-destination",
                        ".",
                    ],
                );
                format!("./{}", tarball.lines().last().unwrap_or_default())
            }
        };
        npm(&project, &["install", "--install-links", &target]);
        let program = format!(
            "import {{ connect }} from \"drsrpc\";\n\
             const c = await connect(\"ws://{}/socket\");\n\
             console.log(await c.call(\"add\", {{ a: 1, b: 2 }}));\n\
             c.close();\n",
            server.addr(0)
        );
        std::fs::write(project.join("use.mjs"), program).expect("program");
        let out = Command::new("node")
            .arg("use.mjs")
            .current_dir(&project)
            .stdin(Stdio::null())
            .output()
            .expect("node runs");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "3",
            "installed from the {way}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&project);
    }
}
