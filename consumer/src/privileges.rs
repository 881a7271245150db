//! The consumer's database role: the one list of what the consumer may do in PostgreSQL, granted
//! by the schema owner ([`grant`], run by `tgingest migrate` with `CONSUMER_ROLE`) and checked
//! by the consumer at startup ([`check`]).
//!
//! Guarantees: [`grant`] leaves the role with exactly SELECT, INSERT and UPDATE on every table
//! of the schema (SELECT only on views, on sqlx's migration ledger and on the operators'
//! decisions the consumer honours but must never change, [`READ_ONLY_TABLES`]), USAGE on its sequences
//! and schema, and default privileges that give tables and sequences created later by the same
//! owner the same; never DELETE, TRUNCATE, DDL or TEMP (purge, retention and erasure are operator
//! commands run with the owner's credentials). It never creates a role: managed PostgreSQL owners
//! often cannot. [`check`] fails with one line naming the first missing privilege and its table,
//! instead of the consumer retrying 42501 forever.

use anyhow::{Context, bail};
use sqlx::{AssertSqlSafe, PgPool};

/// What the consumer needs on every table it writes.
pub const TABLE_PRIVILEGES: &[&str] = &["SELECT", "INSERT", "UPDATE"];

/// Tables the consumer reads and never writes: the operators' retention and erasure decisions
/// (`migrations/0006_retention_and_erasure.sql`). A consumer may not undo them.
pub const READ_ONLY_TABLES: &[&str] = &["erased_subjects", "retention_horizons"];

/// What [`grant`] did, and what it could not take away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantReport {
    /// Tables the role may now read and write.
    pub writable: Vec<String>,
    /// Relations the role may only read (views, the migration ledger).
    pub readable: Vec<String>,
    /// Privileges the role still holds through PUBLIC that only the database owner can revoke,
    /// each as a sentence naming the statement that would.
    pub warnings: Vec<String>,
}

/// Grants `role` (which must exist) exactly what the consumer needs on the current schema, in
/// one transaction; run as the schema owner. Idempotent: privileges granted earlier beyond
/// these are revoked.
pub async fn grant(pool: &PgPool, role: &str) -> anyhow::Result<GrantReport> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(pool)
            .await
            .context("looking up the consumer role")?;
    if !exists {
        bail!(
            "CONSUMER_ROLE: role {role:?} does not exist (create it first; migrate never creates roles)"
        );
    }
    let (me, quoted_role, schema, quoted_schema, quoted_db): (
        String,
        String,
        String,
        String,
        String,
    ) = sqlx::query_as(
        "SELECT current_user::text, quote_ident($1), current_schema()::text, \
                    quote_ident(current_schema()), quote_ident(current_database())",
    )
    .bind(role)
    .fetch_one(pool)
    .await
    .context("reading the current schema")?;
    if me == role {
        // Revoking "everything else" from the owner would take its own tables away from it.
        bail!("CONSUMER_ROLE: {role:?} is the role running migrate; name the consumer's own role");
    }
    let relations: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relkind IN ('r', 'p') AND c.relname <> '_sqlx_migrations' \
                AND c.relname <> ALL($1) \
           FROM pg_class c \
          WHERE c.relnamespace = current_schema()::regnamespace \
            AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
          ORDER BY c.relname",
    )
    .bind(READ_ONLY_TABLES)
    .fetch_all(pool)
    .await
    .context("listing the schema's tables")?;

    let (r, s) = (&quoted_role, &quoted_schema);
    let mut statements = vec![
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}"),
        format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {r}"),
        format!("REVOKE CREATE ON SCHEMA {s} FROM {r}"),
        format!("REVOKE CREATE ON SCHEMA {s} FROM PUBLIC"),
        format!("REVOKE TEMPORARY ON DATABASE {quoted_db} FROM {r}"),
        format!("REVOKE TEMPORARY ON DATABASE {quoted_db} FROM PUBLIC"),
        format!("GRANT USAGE ON SCHEMA {s} TO {r}"),
        format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {r}"),
        format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT, INSERT, UPDATE ON TABLES TO {r}"
        ),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE ON SEQUENCES TO {r}"),
    ];
    let (mut writable, mut readable) = (Vec::new(), Vec::new());
    for (table, writes) in relations {
        let quoted = format!("{s}.\"{}\"", table.replace('"', "\"\""));
        let privileges = if writes {
            TABLE_PRIVILEGES.join(", ")
        } else {
            "SELECT".to_owned()
        };
        statements.push(format!("GRANT {privileges} ON {quoted} TO {r}"));
        if writes {
            writable.push(table);
        } else {
            readable.push(table);
        }
    }
    let mut tx = pool.begin().await.context("granting the consumer role")?;
    for statement in statements {
        sqlx::query(AssertSqlSafe(statement.clone()))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("granting the consumer role: {statement}"))?;
    }
    tx.commit().await.context("granting the consumer role")?;

    // A schema owner that does not own the database cannot revoke PUBLIC's TEMP (PostgreSQL only
    // warns); say so rather than claim a privilege is gone.
    let (temp, create): (bool, bool) = sqlx::query_as(
        "SELECT has_database_privilege($1, current_database(), 'TEMPORARY'), \
                has_schema_privilege($1, current_schema(), 'CREATE')",
    )
    .bind(role)
    .fetch_one(pool)
    .await
    .context("checking the consumer role")?;
    let mut warnings = Vec::new();
    if temp {
        warnings.push(format!(
            "role {role:?} can still create temporary tables: as the database owner run \
             REVOKE TEMPORARY ON DATABASE {quoted_db} FROM PUBLIC"
        ));
    }
    if create {
        warnings.push(format!(
            "role {role:?} can still create objects in schema {schema}: as its owner run \
             REVOKE CREATE ON SCHEMA {quoted_schema} FROM PUBLIC"
        ));
    }
    Ok(GrantReport {
        writable,
        readable,
        warnings,
    })
}

/// Fails with one line naming the first of `tables` the connected role may not read.
pub async fn check_readable(pool: &PgPool, tables: &[&str]) -> anyhow::Result<()> {
    let tables: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    let missing: Option<(String, String)> = sqlx::query_as(
        "SELECT current_user::text, t FROM unnest($1::text[]) WITH ORDINALITY AS tables(t, i) \
          WHERE NOT has_table_privilege(t, 'SELECT') ORDER BY i LIMIT 1",
    )
    .bind(&tables)
    .fetch_optional(pool)
    .await
    .context("checking the database role's privileges")?;
    if let Some((user, table)) = missing {
        bail!(
            "database role {user} lacks SELECT on table {table}: have the schema owner run \
             `tgingest migrate` with CONSUMER_ROLE={user}"
        );
    }
    Ok(())
}

/// Fails with one line naming the first privilege of [`TABLE_PRIVILEGES`] the connected role
/// lacks on one of `tables` (or USAGE on a sequence they own). The tables must exist.
pub async fn check(pool: &PgPool, tables: &[&str]) -> anyhow::Result<()> {
    let tables: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    let privileges: Vec<String> = TABLE_PRIVILEGES.iter().map(|p| (*p).to_owned()).collect();
    let missing: Option<(String, String, String)> = sqlx::query_as(
        "SELECT current_user::text, p, t \
           FROM unnest($1::text[]) WITH ORDINALITY AS tables(t, i) \
          CROSS JOIN unnest($2::text[]) WITH ORDINALITY AS privileges(p, j) \
          WHERE NOT has_table_privilege(t, p) \
          ORDER BY i, j LIMIT 1",
    )
    .bind(&tables)
    .bind(&privileges)
    .fetch_optional(pool)
    .await
    .context("checking the database role's privileges")?;
    if let Some((user, privilege, table)) = missing {
        bail!(
            "database role {user} lacks {privilege} on table {table}: have the schema owner run \
             `tgingest migrate` with CONSUMER_ROLE={user}"
        );
    }
    // The CASE keeps the planner from asking has_sequence_privilege about a non-sequence.
    let sequence: Option<(String, String, String)> = sqlx::query_as(
        "SELECT current_user::text, s.oid::regclass::text, d.refobjid::regclass::text \
           FROM pg_class s JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid \
          WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i') \
            AND d.refobjid = ANY($1::text[]::regclass[]) \
            AND CASE WHEN s.relkind = 'S' THEN NOT has_sequence_privilege(s.oid, 'USAGE') END \
          ORDER BY 2 LIMIT 1",
    )
    .bind(&tables)
    .fetch_optional(pool)
    .await
    .context("checking the database role's privileges")?;
    if let Some((user, sequence, table)) = sequence {
        bail!(
            "database role {user} lacks USAGE on sequence {sequence} (of table {table}): have the \
             schema owner run `tgingest migrate` with CONSUMER_ROLE={user}"
        );
    }
    Ok(())
}
