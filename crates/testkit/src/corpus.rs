//! The corpus of real databases nobody on the project wrote (`../shared/corpus`):
//! where it is, what `MANIFEST.tsv` says of each file, and private copies to test on.
//! A corpus file is never opened in place: SQLite could checkpoint its `-wal` into it
//! or create side files beside it.

use std::path::{Path, PathBuf};

/// One database of the corpus, as `MANIFEST.tsv` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusDb {
    /// File name in the corpus directory.
    pub file: String,
    /// `none`, `3`, `4` or `legacy` (SQLCipher 1.x/2.x).
    pub cipher: String,
    /// The key (a passphrase, or `x'…'` for a raw key) of an encrypted file.
    pub key: Option<String>,
    /// What Debian's `sqlcipher` 3.4.1 CLI needs after the key to open it: `None` when
    /// it cannot, `Some("")` when nothing (else `;`-separated pragmas).
    pub stock_cli_pragmas: Option<String>,
    /// What SQLCipher 4 (sqlvault's, Python's `sqlcipher3`) needs after the key:
    /// `;`-separated pragmas, empty when nothing.
    pub sqlcipher4_pragmas: String,
}

impl CorpusDb {
    /// Whether the file is SQLCipher-encrypted.
    pub fn encrypted(&self) -> bool {
        self.cipher != "none"
    }
}

/// The corpus directory: `SQLVAULT_CORPUS`, else `../shared/corpus` beside the
/// checkout, else the project machine's `/work/shared/corpus`. Panics, naming where
/// it looked, when there is none: a test that needs the corpus must not pass without it.
pub fn corpus_dir() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var_os("SQLVAULT_CORPUS")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
            PathBuf::from("/work/shared/corpus"),
        ])
        .collect();
    candidates
        .iter()
        .find(|c| c.join("MANIFEST.tsv").is_file())
        .cloned()
        .unwrap_or_else(|| panic!("the corpus of real databases is needed (SQLVAULT_CORPUS, or one of {candidates:?})"))
}

/// Every database `MANIFEST.tsv` lists, in its order.
pub fn corpus() -> Vec<CorpusDb> {
    let dir = corpus_dir();
    let text = std::fs::read_to_string(dir.join("MANIFEST.tsv")).expect("read MANIFEST.tsv");
    let out: Vec<CorpusDb> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(f.len() >= 3, "MANIFEST.tsv line with too few fields: {l}");
            let stock = f.get(3).copied().unwrap_or("-");
            let four = f.get(4).copied().unwrap_or("-");
            CorpusDb {
                file: f[0].to_string(),
                cipher: f[1].to_string(),
                key: (f[2] != "-").then(|| f[2].to_string()),
                stock_cli_pragmas: match stock {
                    "-" => None,
                    "default" => Some(String::new()),
                    p => Some(p.to_string()),
                },
                sqlcipher4_pragmas: match four {
                    "-" | "default" => String::new(),
                    p => p.to_string(),
                },
            }
        })
        .collect();
    assert!(out.len() >= 20, "MANIFEST.tsv lists {} databases", out.len());
    out
}

/// Copies `file` and its `-wal` (when the corpus has one) into `dir`; returns the copy.
pub fn copy_corpus_db(file: &str, dir: &Path) -> PathBuf {
    let src = corpus_dir();
    let dst = dir.join(file);
    std::fs::copy(src.join(file), &dst).unwrap_or_else(|e| panic!("copy {file}: {e}"));
    let wal = src.join(format!("{file}-wal"));
    if wal.is_file() {
        std::fs::copy(&wal, dir.join(format!("{file}-wal"))).expect("copy -wal");
    }
    dst
}
