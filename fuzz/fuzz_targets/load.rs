//! `load` on arbitrary SQL text (`sqlvault load` takes any file; a dump snapshot's SQL
//! was written by a backup host). It must never panic, never hang (libFuzzer's
//! `-timeout` catches that), and never leave or create a file anywhere but the
//! destination: the process runs inside an otherwise empty sandbox directory (its
//! working directory, so a relative `ATTACH 'x'` would land in it), and after every
//! input the sandbox must hold only the destination's directory, which holds the
//! destination after a success and nothing after a failure.
//!
//! The sandbox is `$SQLVAULT_FUZZ_SANDBOX` (set by `cargo xtask fuzz`), else a
//! directory under the system temporary directory.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sqlvault_sqlite::{LoadOptions, load};

fn sandbox() -> &'static Path {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::var_os("SQLVAULT_FUZZ_SANDBOX")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join(format!("sqlvault-fuzz-load-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("sandbox");
        let dir = dir.canonicalize().expect("sandbox path");
        std::env::set_current_dir(&dir).expect("enter sandbox");
        dir
    })
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let root = sandbox();
    let run = root.join("run");
    std::fs::create_dir(&run).expect("run dir");
    let dest = run.join("out.db");
    // A bound on line and statement length keeps one input's memory small; the work
    // bound is the loader's own.
    let opts = LoadOptions::default().with_max_statement_bytes(Some(1 << 16));
    let r = load(data, Path::new("fuzz.sql"), &dest, &opts);
    assert_eq!(
        names(root),
        ["run"],
        "a file appeared beside the destination's directory"
    );
    let left = names(&run);
    match &r {
        Ok(rep) => {
            assert_eq!(left, ["out.db"], "files beside the loaded database");
            assert_eq!(rep.path, dest);
        }
        Err(e) => assert!(left.is_empty(), "{left:?} left behind after a failed load: {e}"),
    }
    std::fs::remove_dir_all(&run).expect("clean");
});
