//! Every install instruction the project gives (`cargo add X`,
//! `pip install X`, `npm install X` in READMEs, docs, error messages and
//! test hints) names a package that is ours or one of our real
//! dependencies: the public registries hold unrelated projects under
//! names close to ours (`drs` and `drs-core` on crates.io, `drs-client`
//! on PyPI).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of `key = "…"` on its own line in `text`, first occurrence.
fn toml_string(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(key)?.trim_start().strip_prefix('=')?;
        Some(rest.trim().trim_matches('"').to_string())
    })
}

/// Our crates: the workspace members' package names.
fn our_crates() -> BTreeSet<String> {
    let root = root();
    let workspace = read(&root.join("Cargo.toml"));
    let members: Vec<String> = workspace
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("workspace members")
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect();
    members
        .iter()
        .map(|m| {
            toml_string(&read(&root.join(m).join("Cargo.toml")), "name")
                .unwrap_or_else(|| panic!("{m}: no package name"))
        })
        .collect()
}

/// Dependency names from a `"deps": { "name": … }` object of package.json.
fn npm_names(package: &str) -> BTreeSet<String> {
    let json: serde_json::Value = serde_json::from_str(package).expect("package.json");
    let mut names = BTreeSet::new();
    names.insert(json["name"].as_str().expect("a name").to_string());
    for section in ["dependencies", "optionalDependencies", "devDependencies"] {
        if let Some(deps) = json[section].as_object() {
            names.extend(deps.keys().cloned());
        }
    }
    names
}

/// Ours on PyPI, and what it and the tests install: the pyproject's
/// dependencies and the packages `.ci/run` installs.
fn pip_names() -> BTreeSet<String> {
    let root = root();
    let pyproject = read(&root.join("clients/python/pyproject.toml"));
    let mut names = BTreeSet::new();
    names.insert(toml_string(&pyproject, "name").expect("a name"));
    for quoted in pyproject.split('"').skip(1).step_by(2) {
        let name: String = quoted
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if !name.is_empty() && quoted.contains(">=") {
            names.insert(name);
        }
    }
    let ci = read(&root.join(".ci/run"));
    let install = ci
        .split("pip install")
        .nth(1)
        .expect(".ci/run installs Python packages")
        .split("\nfi")
        .next()
        .unwrap_or_default();
    names.extend(
        install
            .split_whitespace()
            .filter(|w| !w.starts_with('-') && *w != "\\")
            .map(str::to_string),
    );
    names
}

/// Files that may hold install instructions.
fn texts() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(
                    name.as_str(),
                    "target" | "node_modules" | ".git" | "corpus" | "artifacts"
                ) {
                    walk(&path, out);
                }
            } else if [".md", ".rs", ".py", ".js", ".ts", ".toml", ".html"]
                .iter()
                .any(|ext| name.ends_with(ext))
                || name == "run"
            {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out
}

/// The packages each `tool install`-style instruction in `text` names:
/// the words after `command` up to the end of its line (or of a line
/// continued with `\`), a closing quote or bracket, or a comment.
fn named_after<'a>(text: &'a str, command: &str) -> Vec<&'a str> {
    let mut names = Vec::new();
    for (i, _) in text.match_indices(command) {
        let rest = &text[i + command.len()..];
        let mut end = 0;
        for line in rest.split_inclusive('\n') {
            end += line.len();
            if !line.trim_end().ends_with('\\') {
                break;
            }
        }
        for word in rest[..end].split_whitespace() {
            if word == "\\" || word.starts_with('-') {
                continue;
            }
            if word.starts_with('#') || word.starts_with("//") {
                break;
            }
            let closes = word.ends_with(|c: char| "`'\"),;".contains(c));
            let name = word.trim_matches(|c: char| "`'\"(),;".contains(c));
            // A path or a placeholder is not a package.
            if name.starts_with('.') || name.starts_with('/') || name.contains('{') {
                break;
            }
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_[]".contains(c))
            {
                names.push(name.split('[').next().unwrap_or(name));
            }
            if closes {
                break;
            }
        }
    }
    names
}

#[test]
fn install_instructions_name_our_packages_or_real_dependencies() {
    let crates = our_crates();
    let pip = pip_names();
    let npm = npm_names(&read(&root().join("clients/js/package.json")));
    assert!(crates.contains("drsrpc") && crates.contains("drsrpc-core"));
    assert!(pip.contains("drsrpc") && pip.contains("u-msgpack-python"));
    assert!(npm.contains("drsrpc") && npm.contains("ws"));
    let this_file = Path::new(file!()).file_name().expect("a name");
    let mut wrong = Vec::new();
    let mut seen = 0;
    for path in texts() {
        if path.file_name() == Some(this_file) {
            continue;
        }
        let text = read(&path);
        for (command, known) in [
            ("cargo add ", &crates),
            ("pip install ", &pip),
            ("npm install ", &npm),
        ] {
            for name in named_after(&text, command) {
                seen += 1;
                if !known.contains(name) {
                    wrong.push(format!("{}: {command}{name}", path.display()));
                }
            }
        }
    }
    assert!(seen >= 3, "only {seen} install instructions found");
    assert!(
        wrong.is_empty(),
        "install instructions naming packages that are not ours nor our dependencies:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_reads_instructions_as_written() {
    assert_eq!(
        named_after("run `cargo add drsrpc` then", "cargo add "),
        ["drsrpc"]
    );
    assert_eq!(
        named_after("pip install drsrpc[msgpack] redis\n", "pip install "),
        ["drsrpc", "redis"]
    );
    assert!(named_after("npm install ./clients/js # x", "npm install ").is_empty());
    assert!(named_after("(pip install {})", "pip install ").is_empty());
    assert_eq!(
        named_after("pip install --quiet x \\\n  y\nz", "pip install "),
        ["x", "y"]
    );
}
