//! The decision: one authorizer call in, allow / mask / deny out. Pure over the role
//! and a catalog of the schema, so every rule is testable without a statement.
//!
//! What SQLite asks, and what it means (checked against SQLite 3.54):
//! - `SQLITE_READ table column` for every column a statement reads — in the result,
//!   `WHERE`, `ORDER BY`, `GROUP BY`, `RETURNING`, a subquery, a CTE, a view's body
//!   (with the view as accessor) or a trigger's body (with the trigger as accessor);
//!   column `""` when a table is read without naming a column (`count(*)`). Answering
//!   `SQLITE_IGNORE` makes the column read as NULL everywhere in that statement, which
//!   is how a mask leaves no oracle.
//! - Connecting a virtual table (`json_each`, an FTS table) makes SQLite declare it:
//!   it asks `UPDATE sqlite_master` for each column and `READ sqlite_master ROWID`.
//!   Denying those breaks every virtual table; they write nothing (SQLite refuses user
//!   writes to its schema itself, and `CREATE`/`DROP` are asked separately).
//! - FTS and R*Tree run their own SQL on their shadow tables, through the same
//!   authorizer, as top-level statements (accessor none), and FTS5 asks `PRAGMA
//!   data_version`. So a shadow table is allowed exactly when its virtual table is,
//!   with no column rule on it (its content is the virtual table's content).
//! - `VACUUM` and `VACUUM INTO` ask `SQLITE_ATTACH` first.

use rusqlite::hooks::{AuthAction, AuthContext};

use crate::lists::{BUILTIN_FUNCTIONS, CREATABLE_MODULES, NEVER_FUNCTIONS, PRAGMAS_TAKING_A_NAME, READ_ONLY_PRAGMAS};
use crate::names::{NameMap, NameSet, with_lower};
use crate::policy::Role;
use crate::recent::Memory;

/// Suffixes of FTS3/4/5 and R*Tree shadow tables: a table made after the guard read
/// the schema, named like one, needs naming to be granted until the guard refreshes.
const SHADOW_SUFFIXES: &[&str] = &[
    "config", "content", "data", "docsize", "idx", "node", "parent", "rowid", "segdir", "segments", "stat",
];

/// The decision for one authorizer call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The action goes ahead.
    Allow,
    /// The column reads as NULL.
    Mask,
    /// The statement fails to prepare.
    Deny,
}

/// What a schema object is, as far as the rules care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Table,
    View,
    Virtual,
    Shadow { owner: String },
}

/// The schema as the guard last read it, plus what this connection created since.
#[derive(Debug, Clone, Default)]
pub(crate) struct Catalog {
    pub kinds: NameMap<Kind>,
    /// Index name → its table.
    pub indexes: NameMap<String>,
    /// Table → its indexes' key columns, as `(index, column)`; `None` for an expression.
    /// A WITHOUT ROWID table's primary key is one of them.
    pub index_keys: NameMap<Vec<(String, Option<String>)>>,
    /// Table → its generated columns.
    pub generated: NameMap<NameSet>,
    /// Tables whose definition has a CHECK constraint.
    pub checks: NameSet,
    /// Temporary tables and views this principal made.
    pub temp_names: NameSet,
    /// Lowercase name → the name as declared, where they differ.
    pub declared: NameMap<String>,
    /// Virtual-table modules of the connection: a name among them that is no table is
    /// an eponymous virtual table (`dbstat`, `sqlite_dbpage`).
    pub modules: NameSet,
}

impl Catalog {
    /// Sets `owner` for each shadow table: the longest virtual table whose name and
    /// `_` start it.
    pub fn link_shadows(&mut self) {
        let vtabs: Vec<String> = self
            .kinds
            .iter()
            .filter(|(_, k)| **k == Kind::Virtual)
            .map(|(n, _)| n.clone())
            .collect();
        for (name, kind) in self.kinds.iter_mut() {
            if let Kind::Shadow { owner } = kind {
                *owner = vtabs
                    .iter()
                    .filter(|v| {
                        name.len() > v.len() + 1 && name.starts_with(v.as_str()) && name.as_bytes()[v.len()] == b'_'
                    })
                    .max_by_key(|v| v.len())
                    .cloned()
                    .unwrap_or_default();
            }
        }
    }
}

/// A verdict and, when denied, why (in words a user can act on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allow, mask or deny.
    pub decision: Decision,
    /// Why it was denied (or masked).
    pub reason: Option<String>,
}

impl Verdict {
    fn allow() -> Verdict {
        Verdict {
            decision: Decision::Allow,
            reason: None,
        }
    }
    fn mask() -> Verdict {
        // No reason text: a mask is the common case of a masked role's reads, and the
        // audit event says "masked" with the table and column.
        Verdict {
            decision: Decision::Mask,
            reason: None,
        }
    }
    fn deny(why: String) -> Verdict {
        Verdict {
            decision: Decision::Deny,
            reason: Some(why),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Db {
    Main,
    Temp,
    Other,
}

fn db_of(name: Option<&str>) -> Db {
    match name {
        None => Db::Main,
        Some(n) if n.eq_ignore_ascii_case("main") => Db::Main,
        Some(n) if n.eq_ignore_ascii_case("temp") => Db::Temp,
        Some(_) => Db::Other,
    }
}

fn is_schema_table(lower: &str) -> bool {
    matches!(
        lower,
        "sqlite_master" | "sqlite_schema" | "sqlite_temp_master" | "sqlite_temp_schema"
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Insert,
    Update,
    Delete,
}

impl Write {
    fn word(self) -> &'static str {
        match self {
            Write::Insert => "insert",
            Write::Update => "update",
            Write::Delete => "delete",
        }
    }
}

/// The rules of one role over one catalog.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub role_name: String,
    pub role: Role,
    pub catalog: Catalog,
    /// Whether the role has any column rule (skips three scans per column otherwise).
    column_rules: bool,
    /// A rule names `*.column`: every table may have column rules.
    star_rules: bool,
    /// Tables a column rule names.
    ruled_tables: NameSet,
    /// Tables whose row order shows a hidden column: an index of theirs has a column the
    /// role masks or denies. Table → why.
    ordered_by_hidden: NameMap<String>,
    /// Tables and views of the main schema the role reads whole — granted, no column
    /// rule, not denied for their order, not internal or shadow — by their names as
    /// declared and lowercase: the authorizer answers a read of them before converting
    /// anything.
    whole: ByteSet,
    /// The same for inserts, updates (no column rule, no CHECK) and deletes: tables the
    /// role writes that way with nothing else to decide.
    insert_whole: ByteSet,
    update_whole: ByteSet,
    delete_whole: ByteSet,
    /// Answers of [`Rules::allowed_outright`] by the address of the name SQLite passed
    /// (its schema's own string, the same for every column of a table): see
    /// [`Rules::allowed_outright_at`].
    recent: Memory,
}

type ByteSet = std::collections::HashSet<Box<[u8]>, std::hash::BuildHasherDefault<crate::names::NameHasher>>;

/// The prefix of the triggers the guard installs; a principal can neither create nor
/// drop a trigger so named.
pub(crate) const GUARD_TRIGGER_PREFIX: &str = "sqlvault_guard_";

impl Rules {
    pub fn new(role_name: &str, role: &Role, catalog: Catalog) -> Rules {
        let rules = || role.mask.iter().chain(&role.deny).chain(&role.allow);
        let mut r = Rules {
            role_name: role_name.to_string(),
            column_rules: !(role.mask.is_empty() && role.deny.is_empty() && role.allow.is_empty()),
            star_rules: rules().any(|c| c.table.is_none()),
            ruled_tables: rules().filter_map(|c| c.table.clone()).collect(),
            role: role.clone(),
            catalog: Catalog::default(),
            ordered_by_hidden: NameMap::default(),
            whole: Default::default(),
            insert_whole: Default::default(),
            update_whole: Default::default(),
            delete_whole: Default::default(),
            recent: Memory::default(),
        };
        r.set_catalog(catalog);
        r
    }

    /// Takes a new reading of the schema, and what follows from it for this role.
    pub fn set_catalog(&mut self, mut catalog: Catalog) {
        catalog.temp_names = std::mem::take(&mut self.catalog.temp_names);
        self.catalog = catalog;
        self.ordered_by_hidden.clear();
        if !self.column_rules {
            self.fill_whole();
            return;
        }
        let mut found = Vec::new();
        for (table, keys) in &self.catalog.index_keys {
            if !self.has_column_rules_on(table) {
                continue;
            }
            let hidden = keys.iter().find(|(_, c)| match c {
                Some(c) => self.hidden(table, c),
                // An expression may read any column.
                None => true,
            });
            if let Some((index, c)) = hidden {
                let what = match c {
                    Some(c) => format!("column {table}.{c}, which the role masks or denies"),
                    None => "an expression, over columns the role may not see".to_string(),
                };
                found.push((
                    table.clone(),
                    format!("index {index} of {table} holds {what}, and rows scanned through it come out in its order"),
                ));
            }
        }
        self.ordered_by_hidden.extend(found);
        self.fill_whole();
    }

    fn fill_whole(&mut self) {
        let mut sets: [ByteSet; 4] = Default::default();
        for (name, kind) in &self.catalog.kinds {
            if !matches!(kind, Kind::Table | Kind::View | Kind::Virtual)
                || name.starts_with("sqlite_")
                || self.has_column_rules_on(name)
                || self.ordered_by_hidden.contains_key(name)
            {
                continue;
            }
            let plain_table = *kind == Kind::Table;
            let grants = [
                self.role.select.covers_lower(name),
                plain_table && self.role.insert.covers_lower(name),
                plain_table && self.role.update.covers_lower(name),
                plain_table && self.role.delete.covers_lower(name),
            ];
            for (set, granted) in sets.iter_mut().zip(grants) {
                if granted {
                    set.insert(name.as_bytes().into());
                    if let Some(declared) = self.catalog.declared.get(name) {
                        set.insert(declared.as_bytes().into());
                    }
                }
            }
        }
        let [w, i, u, d] = sets;
        (self.whole, self.insert_whole, self.update_whole, self.delete_whole) = (w, i, u, d);
        self.forget_recent();
    }

    /// Whether the role masks, denies or allow-lists any column.
    pub fn has_column_rules(&self) -> bool {
        self.column_rules
    }

    /// Forgets every remembered answer: the rules or the catalog changed.
    pub fn forget_recent(&self) {
        self.recent.forget();
    }

    /// A remembered decision (allow or mask) of reading the column named at `column` of
    /// the table named at `table` (see [`crate::recent`]).
    ///
    /// # Safety
    /// Both must point to NUL-terminated strings valid for the call.
    pub unsafe fn read_decided_at(
        &self,
        table: *const std::ffi::c_char,
        column: *const std::ffi::c_char,
    ) -> Option<Decision> {
        // SAFETY: the caller's promise.
        match unsafe { self.recent.read(table, column) } {
            Some(0) => Some(Decision::Allow),
            Some(1) => Some(Decision::Mask),
            _ => None,
        }
    }

    /// Remembers `decision` (allow or mask) for a column read.
    ///
    /// # Safety
    /// Both must point to NUL-terminated strings valid for the call.
    pub unsafe fn remember_read(
        &self,
        table: *const std::ffi::c_char,
        column: *const std::ffi::c_char,
        decision: Decision,
    ) {
        let code = match decision {
            Decision::Allow => 0,
            Decision::Mask => 1,
            Decision::Deny => return,
        };
        // SAFETY: the caller's promise.
        unsafe { self.recent.remember_read(table, column, code) }
    }

    /// [`Rules::allowed_outright`] (or [`Rules::function_outright`]) for the name at
    /// `name`, remembered by its address (see [`crate::recent`]).
    ///
    /// # Safety
    /// `name` must point to a NUL-terminated string valid for the call.
    pub unsafe fn allowed_outright_at(&self, code: i32, name: *const std::ffi::c_char) -> bool {
        use rusqlite::ffi::{SQLITE_DELETE, SQLITE_FUNCTION, SQLITE_INSERT, SQLITE_READ, SQLITE_UPDATE};
        let bit = match code {
            SQLITE_READ => 1u8,
            SQLITE_INSERT => 2,
            SQLITE_UPDATE => 4,
            SQLITE_DELETE => 8,
            SQLITE_FUNCTION => 16,
            _ => return false,
        };
        let function = code == SQLITE_FUNCTION;
        let fresh = |bytes: &[u8]| -> u8 {
            if function {
                return if self.function_outright(bytes) { 16 } else { 0 };
            }
            [SQLITE_READ, SQLITE_INSERT, SQLITE_UPDATE, SQLITE_DELETE]
                .iter()
                .enumerate()
                .filter(|(_, c)| self.allowed_outright(**c, bytes))
                .fold(0u8, |acc, (i, _)| acc | (1 << i))
        };
        // SAFETY: the caller's promise.
        unsafe { self.recent.name_bit(name, bit, function, fresh) }
    }

    /// Whether SQLite's question `code` about `table` (as SQLite passes it) in the main
    /// database is answered yes outright: a read of a table the role reads whole, or an
    /// insert, update or delete of one it writes that way.
    pub fn allowed_outright(&self, code: i32, table: &[u8]) -> bool {
        let set = match code {
            rusqlite::ffi::SQLITE_READ => &self.whole,
            rusqlite::ffi::SQLITE_INSERT => &self.insert_whole,
            rusqlite::ffi::SQLITE_UPDATE => &self.update_whole,
            rusqlite::ffi::SQLITE_DELETE => &self.delete_whole,
            _ => return false,
        };
        !set.is_empty() && set.contains(table)
    }

    /// Whether `name`, as SQLite passes it, is one of SQLite's built-in harmless
    /// functions (an application function of the same name is taken for it).
    pub fn function_outright(&self, name: &[u8]) -> bool {
        BUILTIN_FUNCTIONS.binary_search_by(|f| f.as_bytes().cmp(name)).is_ok()
    }

    /// Why every read of `table` (lowercase) is denied to this role for the order an
    /// index of it shows, if it is.
    pub fn ordered_reason(&self, table: &str) -> Option<&str> {
        self.ordered_by_hidden.get(table).map(String::as_str)
    }

    /// Whether the role masks or denies `column` of `table` (both lowercase), or leaves
    /// it out of the table's allow-list.
    fn hidden(&self, table: &str, column: &str) -> bool {
        self.role
            .mask
            .iter()
            .chain(&self.role.deny)
            .any(|r| r.matches(table, column))
            || {
                let mut listed = self
                    .role
                    .allow
                    .iter()
                    .filter(|r| r.table.as_deref() == Some(table))
                    .peekable();
                listed.peek().is_some() && !listed.any(|r| r.column == column)
            }
    }

    /// The tables for which the guard installs a trigger refusing deletes: those the
    /// role may insert into or update but not delete from, where `INSERT OR REPLACE`
    /// and `UPDATE OR REPLACE` would delete conflicting rows without SQLite asking.
    pub fn tables_needing_delete_guard(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .catalog
            .kinds
            .iter()
            .filter(|(t, k)| **k == Kind::Table && !t.starts_with("sqlite_"))
            .filter(|(t, _)| {
                (self.role.insert.covers_lower(t) || self.role.update.covers_lower(t))
                    && !self.role.delete.covers_lower(t)
            })
            .map(|(t, _)| t.clone())
            .collect();
        out.sort();
        out
    }

    /// Decides one authorizer call, and remembers what this connection creates.
    pub fn decide(&mut self, ctx: &AuthContext<'_>) -> Verdict {
        use AuthAction as A;
        let db = ctx.database_name;
        match ctx.action {
            A::Select | A::Recursive => Verdict::allow(),
            A::Read {
                table_name,
                column_name,
            } => self.read(db, table_name, column_name),
            A::Insert { table_name } => self.write(Write::Insert, db_of(db), table_name, None),
            A::Update {
                table_name,
                column_name,
            } => self.write(Write::Update, db_of(db), table_name, Some(column_name)),
            A::Delete { table_name } => self.write(Write::Delete, db_of(db), table_name, None),
            A::Function { function_name } => self.function(function_name),
            A::Pragma {
                pragma_name,
                pragma_value,
            } => self.pragma(db_of(db), pragma_name, pragma_value),
            A::Transaction { .. } | A::Savepoint { .. } => {
                if self.role.transactions {
                    Verdict::allow()
                } else {
                    self.no("transactions (BEGIN, COMMIT, SAVEPOINT) are not granted")
                }
            }
            A::Attach { .. } => Verdict::deny("ATTACH and VACUUM are never allowed on a guarded connection".into()),
            A::Detach { .. } => Verdict::deny("DETACH is never allowed on a guarded connection".into()),
            A::CreateTable { table_name } | A::CreateTempTable { table_name } | A::CreateVtable { table_name, .. }
                if self.reserved_name(table_name) =>
            {
                Verdict::deny(format!(
                    "{table_name} is the name of a built-in table-valued function or module"
                ))
            }
            A::CreateView { view_name } | A::CreateTempView { view_name } if self.reserved_name(view_name) => {
                Verdict::deny(format!(
                    "{view_name} is the name of a built-in table-valued function or module"
                ))
            }
            A::CreateTempTable { table_name } => {
                let v = self.temp();
                if v.decision == Decision::Allow {
                    self.catalog.temp_names.insert(table_name.to_ascii_lowercase());
                }
                v
            }
            A::CreateTempView { view_name } => {
                let v = self.temp();
                if v.decision == Decision::Allow {
                    self.catalog.temp_names.insert(view_name.to_ascii_lowercase());
                }
                v
            }
            A::CreateVtable {
                table_name,
                module_name,
            } => {
                let module = module_name.to_ascii_lowercase();
                if !CREATABLE_MODULES.contains(&module.as_str()) {
                    return Verdict::deny(format!(
                        "virtual tables of module {module} are never created on a guarded connection"
                    ));
                }
                let v = self.schema(db_of(db));
                if v.decision == Decision::Allow {
                    self.catalog
                        .kinds
                        .insert(table_name.to_ascii_lowercase(), Kind::Virtual);
                }
                v
            }
            A::CreateTable { table_name } => {
                let v = self.schema(db_of(db));
                if v.decision == Decision::Allow {
                    let l = table_name.to_ascii_lowercase();
                    let kind = match self.looks_shadow(&l) {
                        Some(owner) => Kind::Shadow { owner },
                        None => Kind::Table,
                    };
                    self.catalog.kinds.entry(l).or_insert(kind);
                }
                v
            }
            A::CreateView { view_name } => {
                let v = self.schema(db_of(db));
                if v.decision == Decision::Allow {
                    self.catalog.kinds.insert(view_name.to_ascii_lowercase(), Kind::View);
                }
                v
            }
            A::CreateTempTrigger { trigger_name, .. } | A::DropTempTrigger { trigger_name, .. }
                if trigger_name.to_ascii_lowercase().starts_with(GUARD_TRIGGER_PREFIX) =>
            {
                Verdict::deny(format!("trigger {trigger_name} is the guard's own"))
            }
            // A new index on a masked column would order rows by it; a renamed or added
            // column would slip out of rules keyed by name.
            A::CreateIndex { table_name, .. } | A::AlterTable { table_name, .. }
                if self.has_column_rules_on(&table_name.to_ascii_lowercase()) =>
            {
                self.no(&format!(
                    "indexing or altering {table_name}, whose columns the role masks or denies, is not allowed"
                ))
            }
            A::CreateTrigger { .. }
            | A::CreateIndex { .. }
            | A::DropIndex { .. }
            | A::DropTable { .. }
            | A::DropTrigger { .. }
            | A::DropView { .. }
            | A::DropVtable { .. }
            | A::Reindex { .. }
            | A::Analyze { .. } => self.schema(db_of(db)),
            A::AlterTable { database_name, .. } => self.schema(db_of(Some(database_name))),
            A::CreateTempIndex { .. }
            | A::CreateTempTrigger { .. }
            | A::DropTempIndex { .. }
            | A::DropTempTable { .. }
            | A::DropTempTrigger { .. }
            | A::DropTempView { .. } => self.temp(),
            _ => Verdict::deny("an action this guard does not know is denied".into()),
        }
    }

    /// Names a table or view may not take: a table-valued pragma's, `json_each`'s,
    /// a module's. Such a table would stand in for the built-in where a name is looked
    /// up unqualified.
    fn reserved_name(&self, name: &str) -> bool {
        let l = name.to_ascii_lowercase();
        l.starts_with("pragma_") || l == "json_each" || l == "json_tree" || self.catalog.modules.contains(&l)
    }

    fn no(&self, what: &str) -> Verdict {
        Verdict::deny(format!("{what} for role {}", self.role_name))
    }

    fn schema(&self, db: Db) -> Verdict {
        match db {
            Db::Main if self.role.schema => Verdict::allow(),
            Db::Main => self.no("schema changes are not granted"),
            Db::Temp => self.temp(),
            Db::Other => Verdict::deny("only the main database can be used on a guarded connection".into()),
        }
    }

    fn temp(&self) -> Verdict {
        if self.role.temp {
            Verdict::allow()
        } else {
            self.no("temporary tables, views and triggers are not granted")
        }
    }

    /// A name made after the catalog was read that looks like a shadow table: the
    /// virtual table it would belong to (or `""` when none is known).
    fn looks_shadow(&self, lower: &str) -> Option<String> {
        let (prefix, suffix) = lower.rsplit_once('_')?;
        if !SHADOW_SUFFIXES.contains(&suffix) {
            return None;
        }
        match self.catalog.kinds.get(prefix) {
            Some(Kind::Virtual) => Some(prefix.to_string()),
            _ => Some(String::new()),
        }
    }

    fn has_column_rules_on(&self, table: &str) -> bool {
        self.column_rules && (self.star_rules || self.ruled_tables.contains(table))
    }

    fn read(&mut self, db_name: Option<&str>, table: &str, column: &str) -> Verdict {
        let db = db_of(db_name);
        let db_name_absent = db_name.is_none();
        with_lower(table, |t| {
            if is_schema_table(t) {
                // SQLite's own lookup when it connects a virtual table.
                // ALTER TABLE reads the schema to rewrite it: `schema` implies reading it.
                if column.eq_ignore_ascii_case("rowid") || self.role.catalog || self.role.schema {
                    return Verdict::allow();
                }
                return self.no("reading the schema (sqlite_schema) is not granted");
            }
            match db {
                Db::Other => return Verdict::deny("only the main database can be used on a guarded connection".into()),
                Db::Temp => return self.temp(),
                Db::Main => {}
            }
            if let Some(v) = self.internal(t, true) {
                return v;
            }
            match self.catalog.kinds.get(t) {
                Some(Kind::Shadow { owner }) if !owner.is_empty() => {
                    let owner = owner.clone();
                    return self.shadow(t, &owner, None);
                }
                // A shadow table whose virtual table is unknown: only by name, and then
                // under every column rule like any table.
                Some(Kind::Shadow { .. }) if !self.role.select.names_lower(t) => {
                    return self.named_only(t, "select");
                }
                Some(_) => {}
                None => {
                    // The table-valued form of a read-only pragma: SQLite asks
                    // SQLITE_PRAGMA too, and that answer decides. (A real table of that
                    // name, made since the catalog was read, would pass here until a
                    // refresh; principals cannot make one.)
                    if let Some(p) = t.strip_prefix("pragma_")
                        && (READ_ONLY_PRAGMAS.contains(&p) || p == "data_version")
                    {
                        return Verdict::allow();
                    }
                    if t == "json_each" || t == "json_tree" {
                        return Verdict::allow();
                    }
                    if self.catalog.modules.contains(t) || self.looks_shadow(t).is_some() {
                        if !self.role.select.names_lower(t) {
                            return self.named_only(t, "select");
                        }
                    } else if db_name_absent && column.is_empty() {
                        // `count(*) FROM c` of a CTE or subquery: SQLite names no database
                        // — nor for a table written without one, so this is no proof of a
                        // CTE. Allowed where a table of that name would be granted anyway:
                        // through "*", or a temporary table this principal made.
                        if self.role.select.all || self.catalog.temp_names.contains(t) {
                            return Verdict::allow();
                        }
                        return self.no(&format!(
                            "select on {table} is not granted (count a CTE's column, count(x), rather than count(*))"
                        ));
                    }
                }
            }
            // The accessor (the view or trigger whose body asks) plays no part: SQLite
            // names any subquery or CTE as accessor, so a CTE could pose as a view, and
            // a view's grant passes nothing to the tables it reads.
            if !self.role.select.covers_lower(t) {
                return self.no(&format!("select on {table} is not granted"));
            }
            if !self.ordered_by_hidden.is_empty()
                && let Some(why) = self.ordered_by_hidden.get(t)
            {
                return self.no(why);
            }
            let v = self.column(t, column, None);
            // SQLite evaluates a RETURNING clause without the authorizer's IGNORE (the
            // clause is resolved twice and only the first, discarded copy is asked
            // about): a masked column would come back in clear. Only a statement that
            // writes `t` can return its columns, so for a role that may write `t` its
            // masked columns are denied, whatever view, CTE or trigger names them.
            if v.decision == Decision::Mask && self.writes(t) {
                return self.no(&format!(
                    "column {t}.{} is masked, and masks cannot hold in RETURNING of a table the role writes: it is denied",
                    column.to_ascii_lowercase()
                ));
            }
            v
        })
    }

    /// SQLite's internal tables other than the schema: `None` when `t` is not one.
    fn internal(&self, t: &str, read: bool) -> Option<Verdict> {
        if !t.starts_with("sqlite_") {
            return None;
        }
        // STAT4 samples index keys (masked values); STAT1 tells whether they repeat.
        if read && t.starts_with("sqlite_stat") && self.column_rules {
            return Some(self.no(&format!(
                "{t} describes the values of indexed columns, and the role masks or denies columns"
            )));
        }
        if t == "sqlite_sequence" || t.starts_with("sqlite_stat") {
            return Some(match (read, self.role.catalog, self.role.schema) {
                (true, true, _) | (false, _, true) => Verdict::allow(),
                (true, false, _) => self.no(&format!("reading {t} is not granted (catalog)")),
                (false, _, false) => self.no(&format!("writing {t} is not granted (schema)")),
            });
        }
        Some(if read {
            self.named_only(t, "select")
        } else {
            Verdict::deny(format!("{t} is never written on a guarded connection"))
        })
    }

    /// Tables that read the database around the grants (`sqlite_dbpage`, `dbstat`) or
    /// not yet known: granted only by name, never through `"*"`.
    fn named_only(&self, t: &str, what: &str) -> Verdict {
        if self.role.select.names(t) {
            Verdict::allow()
        } else {
            self.no(&format!(
                "{what} on {t} is not granted ({t} must be named to be granted; \"*\" does not cover it)"
            ))
        }
    }

    /// A shadow table: as its virtual table allows, and never when a column rule
    /// touches that table (the shadow holds the masked values).
    fn shadow(&self, t: &str, owner: &str, write: Option<Write>) -> Verdict {
        if owner.is_empty() {
            return self.named_only(t, "select");
        }
        let set = match write {
            None => &self.role.select,
            Some(Write::Insert) => &self.role.insert,
            Some(Write::Update) => &self.role.update,
            Some(Write::Delete) => &self.role.delete,
        };
        if !(set.all || set.names(owner)) {
            let what = write.map_or("select", Write::word);
            return self.no(&format!(
                "{what} on {owner} (whose shadow table {t} this is) is not granted"
            ));
        }
        if write.is_none() && self.has_column_rules_on(owner) {
            return self.no(&format!(
                "shadow table {t} holds columns of {owner} that are masked or denied"
            ));
        }
        Verdict::allow()
    }

    fn writes(&self, t: &str) -> bool {
        [&self.role.insert, &self.role.update, &self.role.delete]
            .iter()
            .any(|s| s.covers_lower(t))
    }

    fn column(&self, t: &str, column: &str, write: Option<Write>) -> Verdict {
        if column.is_empty() || !self.has_column_rules_on(t) {
            return Verdict::allow();
        }
        with_lower(column, |c| {
            if self.role.deny.iter().any(|r| r.matches(t, c)) {
                return self.no(&format!("column {t}.{c} is denied"));
            }
            let listed = self.role.allow.iter().filter(|r| r.table.as_deref() == Some(t));
            let mut any = false;
            let mut hit = false;
            for r in listed {
                any = true;
                hit |= r.column == c;
            }
            if any && !hit && c != "rowid" {
                return self.no(&format!("column {t}.{c} is not in the allowed columns of {t}"));
            }
            let generated = || {
                self.catalog.generated.get(t).is_some_and(|g| g.contains(c))
                    && !self
                        .role
                        .allow
                        .iter()
                        .any(|r| r.table.as_deref() == Some(t) && r.column == c)
                    && self.has_column_rules_on(t)
            };
            if self.role.mask.iter().any(|r| r.matches(t, c)) || generated() {
                return match write {
                    Some(w) => self.no(&format!("{} of masked column {t}.{c} is not allowed", w.word())),
                    None => Verdict::mask(),
                };
            }
            Verdict::allow()
        })
    }

    fn write(&mut self, w: Write, db: Db, table: &str, column: Option<&str>) -> Verdict {
        with_lower(table, |t| {
            if is_schema_table(t) {
                // SQLite refuses writes to its schema from SQL on its own (DEFENSIVE, no
                // writable_schema); it asks while creating, dropping or declaring a
                // virtual table, which are decided separately.
                return Verdict::allow();
            }
            match db {
                Db::Other => return Verdict::deny("only the main database can be used on a guarded connection".into()),
                Db::Temp => return self.temp(),
                Db::Main => {}
            }
            if let Some(v) = self.internal(t, false) {
                return v;
            }
            match self.catalog.kinds.get(t) {
                Some(Kind::Shadow { owner }) => return self.shadow(t, &owner.clone(), Some(w)),
                Some(_) => {}
                None => {
                    if t.starts_with("pragma_")
                        || t == "json_each"
                        || t == "json_tree"
                        || self.catalog.modules.contains(t)
                    {
                        return Verdict::deny(format!("{t} is never written on a guarded connection"));
                    }
                    if let Some(owner) = self.looks_shadow(t) {
                        return self.shadow(t, &owner, Some(w));
                    }
                }
            }
            let set = match w {
                Write::Insert => &self.role.insert,
                Write::Update => &self.role.update,
                Write::Delete => &self.role.delete,
            };
            if !(set.all || set.names(t)) {
                return self.no(&format!("{} on {table} is not granted", w.word()));
            }
            if let Some(why) = self.ordered_by_hidden.get(t) {
                // A foreign key's parent key is indexed: deleting or updating a parent
                // whose key is hidden fails or not as a child matches it.
                return self.no(why);
            }
            if self.has_column_rules_on(t) {
                // SQLite names no column of an INSERT: it would write masked and denied
                // columns (and a UNIQUE one would answer whether a value exists).
                if w == Write::Insert {
                    return self.no(&format!(
                        "insert into {table}, whose columns the role masks or denies, is not allowed (an insert writes every column)"
                    ));
                }
                // A CHECK constraint is evaluated without the authorizer: an update
                // failing or not would tell a masked value.
                if w == Write::Update && self.catalog.checks.contains(t) {
                    return self.no(&format!(
                        "update of {table}, which has CHECK constraints and columns the role masks or denies, is not allowed"
                    ));
                }
            }
            match column {
                Some(c) => self.column(t, c, Some(w)),
                None => Verdict::allow(),
            }
        })
    }

    fn function(&self, name: &str) -> Verdict {
        with_lower(name, |f| {
            if NEVER_FUNCTIONS.contains(&f) {
                return Verdict::deny(format!("function {f} is never allowed on a guarded connection"));
            }
            // ALTER TABLE's own helpers, run by SQLite on its schema; SQL cannot call
            // them (they are internal functions).
            if self.role.schema && (f.starts_with("sqlite_rename_") || f == "sqlite_drop_column") {
                return Verdict::allow();
            }
            if BUILTIN_FUNCTIONS.binary_search(&f).is_ok() || self.role.functions.iter().any(|g| g == "*" || g == f) {
                Verdict::allow()
            } else {
                self.no(&format!("function {f} is not granted"))
            }
        })
    }

    fn pragma(&self, db: Db, name: &str, value: Option<&str>) -> Verdict {
        with_lower(name, |p| {
            if db == Db::Other {
                return Verdict::deny("only the main database can be used on a guarded connection".into());
            }
            // FTS5 asks it of its own accord; a counter of commits, nothing more.
            if value.is_none() && p == "data_version" {
                return Verdict::allow();
            }
            if !self.role.pragmas.iter().any(|g| g == p) {
                return self.no(&format!("pragma {p} is not granted"));
            }
            match value {
                None => Verdict::allow(),
                Some(v) if PRAGMAS_TAKING_A_NAME.contains(&p) => {
                    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                        return Verdict::allow();
                    }
                    let v = v.trim_matches(|c| c == '\'' || c == '"');
                    with_lower(v, |obj| {
                        let table = self.catalog.indexes.get(obj).map(String::as_str).unwrap_or(obj);
                        if self.role.catalog
                            || self.role.select.all && self.internal(table, true).is_none()
                            || self.role.select.names(table)
                        {
                            Verdict::allow()
                        } else {
                            self.no(&format!("pragma {p} on {v}, which the role cannot read,"))
                        }
                    })
                }
                Some(_) => Verdict::deny(format!(
                    "pragma {p} with a value changes a setting; never allowed on a guarded connection"
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_list_is_sorted_and_holds_no_dangerous_function() {
        let mut sorted = BUILTIN_FUNCTIONS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, BUILTIN_FUNCTIONS);
        for f in NEVER_FUNCTIONS {
            assert!(BUILTIN_FUNCTIONS.binary_search(f).is_err(), "{f}");
        }
    }
}
