//! The kernel's shape, as ARCHITECTURE.md states it: no source file of
//! drs-core over 500 lines, the driver's loop in at most 400, and no
//! module of the plug-ins that live beside it.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the source folder") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_source_file_is_over_500_lines_and_the_loop_is_under_400() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 20, "{files:?}");
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .expect("a source")
            .lines()
            .count()
    };
    let long: Vec<_> = files
        .iter()
        .map(|f| {
            (
                f.strip_prefix(&src).unwrap().display().to_string(),
                lines(f),
            )
        })
        .filter(|(_, n)| *n > 500)
        .collect();
    assert!(long.is_empty(), "over 500 lines: {long:?}");
    let driver = lines(&src.join("conn/driver/mod.rs"));
    assert!(driver <= 400, "the driver's loop is {driver} lines");
    for plugin in [
        "pubsub.rs",
        "topic.rs",
        "stats.rs",
        "auth.rs",
        "server/names.rs",
    ] {
        assert!(!src.join(plugin).exists(), "{plugin} is a plug-in's");
    }
}
