//! Detects whether the bundled SQLite is compiled with SQLITE_ENABLE_SNAPSHOT (via the
//! LIBSQLITE3_FLAGS variable that libsqlite3-sys reads). With it, a WAL-mode snapshot
//! computes its logical checksum on a second connection pinned to the same snapshot,
//! in parallel with streaming pages; without it, the two run one after the other.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBSQLITE3_FLAGS");
    println!("cargo::rustc-check-cfg=cfg(sqlvault_snapshot)");
    if std::env::var("LIBSQLITE3_FLAGS").is_ok_and(|f| f.split_whitespace().any(|x| x == "-DSQLITE_ENABLE_SNAPSHOT")) {
        println!("cargo:rustc-cfg=sqlvault_snapshot");
    }
}
