//! SQLite's authorizer arguments as rusqlite's typed action, read straight from the C
//! callback: the guard installs its own `extern "C"` authorizer rather than rusqlite's
//! boxed closure, whose per-call conversions cost more than the rules themselves
//! (`cargo xtask bench --policy` shows both).

use rusqlite::ffi;
use rusqlite::hooks::{AuthAction, TransactionOperation};

fn operation(s: &str) -> TransactionOperation {
    match s {
        "BEGIN" => TransactionOperation::Begin,
        "RELEASE" => TransactionOperation::Release,
        "ROLLBACK" => TransactionOperation::Rollback,
        _ => TransactionOperation::Unknown,
    }
}

/// The action SQLite asks about, from its code and first two arguments (see
/// <https://sqlite.org/c3ref/c_alter_table.html> for which argument is what). A code or
/// an argument missing where the code promises one comes out as `Unknown`, which the
/// rules deny.
pub(crate) fn action_of<'a>(code: i32, a1: Option<&'a str>, a2: Option<&'a str>) -> AuthAction<'a> {
    use AuthAction as A;
    match (code, a1, a2) {
        (ffi::SQLITE_CREATE_INDEX, Some(i), Some(t)) => A::CreateIndex {
            index_name: i,
            table_name: t,
        },
        (ffi::SQLITE_CREATE_TABLE, Some(t), _) => A::CreateTable { table_name: t },
        (ffi::SQLITE_CREATE_TEMP_INDEX, Some(i), Some(t)) => A::CreateTempIndex {
            index_name: i,
            table_name: t,
        },
        (ffi::SQLITE_CREATE_TEMP_TABLE, Some(t), _) => A::CreateTempTable { table_name: t },
        (ffi::SQLITE_CREATE_TEMP_TRIGGER, Some(g), Some(t)) => A::CreateTempTrigger {
            trigger_name: g,
            table_name: t,
        },
        (ffi::SQLITE_CREATE_TEMP_VIEW, Some(v), _) => A::CreateTempView { view_name: v },
        (ffi::SQLITE_CREATE_TRIGGER, Some(g), Some(t)) => A::CreateTrigger {
            trigger_name: g,
            table_name: t,
        },
        (ffi::SQLITE_CREATE_VIEW, Some(v), _) => A::CreateView { view_name: v },
        (ffi::SQLITE_DELETE, Some(t), _) => A::Delete { table_name: t },
        (ffi::SQLITE_DROP_INDEX, Some(i), Some(t)) => A::DropIndex {
            index_name: i,
            table_name: t,
        },
        (ffi::SQLITE_DROP_TABLE, Some(t), _) => A::DropTable { table_name: t },
        (ffi::SQLITE_DROP_TEMP_INDEX, Some(i), Some(t)) => A::DropTempIndex {
            index_name: i,
            table_name: t,
        },
        (ffi::SQLITE_DROP_TEMP_TABLE, Some(t), _) => A::DropTempTable { table_name: t },
        (ffi::SQLITE_DROP_TEMP_TRIGGER, Some(g), Some(t)) => A::DropTempTrigger {
            trigger_name: g,
            table_name: t,
        },
        (ffi::SQLITE_DROP_TEMP_VIEW, Some(v), _) => A::DropTempView { view_name: v },
        (ffi::SQLITE_DROP_TRIGGER, Some(g), Some(t)) => A::DropTrigger {
            trigger_name: g,
            table_name: t,
        },
        (ffi::SQLITE_DROP_VIEW, Some(v), _) => A::DropView { view_name: v },
        (ffi::SQLITE_INSERT, Some(t), _) => A::Insert { table_name: t },
        (ffi::SQLITE_PRAGMA, Some(p), v) => A::Pragma {
            pragma_name: p,
            pragma_value: v,
        },
        (ffi::SQLITE_READ, Some(t), Some(c)) => A::Read {
            table_name: t,
            column_name: c,
        },
        (ffi::SQLITE_SELECT, ..) => A::Select,
        (ffi::SQLITE_TRANSACTION, Some(op), _) => A::Transaction {
            operation: operation(op),
        },
        (ffi::SQLITE_UPDATE, Some(t), Some(c)) => A::Update {
            table_name: t,
            column_name: c,
        },
        (ffi::SQLITE_ATTACH, Some(f), _) => A::Attach { filename: f },
        (ffi::SQLITE_DETACH, Some(d), _) => A::Detach { database_name: d },
        (ffi::SQLITE_ALTER_TABLE, Some(d), Some(t)) => A::AlterTable {
            database_name: d,
            table_name: t,
        },
        (ffi::SQLITE_REINDEX, Some(i), _) => A::Reindex { index_name: i },
        (ffi::SQLITE_ANALYZE, Some(t), _) => A::Analyze { table_name: t },
        (ffi::SQLITE_CREATE_VTABLE, Some(t), Some(m)) => A::CreateVtable {
            table_name: t,
            module_name: m,
        },
        (ffi::SQLITE_DROP_VTABLE, Some(t), Some(m)) => A::DropVtable {
            table_name: t,
            module_name: m,
        },
        (ffi::SQLITE_FUNCTION, _, Some(f)) => A::Function { function_name: f },
        (ffi::SQLITE_SAVEPOINT, Some(op), Some(name)) => A::Savepoint {
            operation: operation(op),
            savepoint_name: name,
        },
        (ffi::SQLITE_RECURSIVE, ..) => A::Recursive,
        (code, arg1, arg2) => A::Unknown { code, arg1, arg2 },
    }
}
