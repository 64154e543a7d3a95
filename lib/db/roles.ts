import pg from 'pg';

/**
 * The two PostgreSQL roles of Weft: the owner (runs migrations, owns every schema and table) and the services' role
 * (every request's queries). The services' role owns nothing and gets only the table privileges the services use, so
 * a query that goes wrong (or is made to) cannot ALTER, DROP or TRUNCATE a table, rewrite the audit log, or run a
 * program on the database server (COPY ... PROGRAM needs superuser or pg_execute_server_program).
 */
export const APP_ROLE = 'weft_app';

/** The schemas whose tables the services read and write (SELECT, INSERT, UPDATE, DELETE). */
export const SERVICE_SCHEMAS = ['ipam', 'routes', 'policy', 'auth'] as const;
/** Append-only schemas: the services' role may INSERT and SELECT, nothing else. */
export const APPEND_ONLY_SCHEMAS = ['audit'] as const;
/** Append-only tables in the services' schemas: a revocation, once made, cannot be undone by the services' role. */
export const APPEND_ONLY_TABLES = ['auth.certificate_revocations'] as const;
/**
 * Functions the services' role may call (EXECUTE, revoked from PUBLIC by their migrations): each runs as the owner
 * to do one thing the role may not do itself (ipam.refresh_statistics: ANALYZE the tables that grew fast).
 */
export const SERVICE_FUNCTIONS = ['ipam.refresh_statistics()'] as const;

const ident = (s: string) => pg.escapeIdentifier(s);

/**
 * Creates the services' role, or brings an existing one back to what it must be: it can log in (with `password`,
 * when given), is no superuser, cannot create databases or roles, bypass row security or replicate, inherits nothing,
 * and belongs to no role (pg_execute_server_program, pg_write_server_files, ... included). Needs CREATEROLE or
 * superuser: the embedded server's owner, or the operator's own setup for an external server (lib/db/DESIGN.md).
 */
export async function ensureAppRole(owner: pg.ClientBase, role: string, password: string | null): Promise<void> {
  const attributes = `LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS${password === null ? '' : ` PASSWORD ${owner.escapeLiteral(password)}`}`;
  const { rowCount } = await owner.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
  await owner.query(`${rowCount ? 'ALTER' : 'CREATE'} ROLE ${ident(role)} WITH ${attributes}`);
  const { rows } = await owner.query<{ name: string }>(
    `SELECT g.rolname AS name FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1`,
    [role],
  );
  for (const { name } of rows) await owner.query(`REVOKE ${ident(name)} FROM ${ident(role)}`);
}

/**
 * Grants the services' role what the services use on the current database, after migrations (so that it covers
 * tables they added): USAGE on the schemas, SELECT/INSERT/UPDATE/DELETE on the services' tables, INSERT/SELECT only on
 * the append-only ones, USAGE/SELECT on sequences. Revokes everything else it may hold there (TRUNCATE, REFERENCES,
 * TRIGGER, UPDATE/DELETE on audit). Idempotent; run by the owner at every start, in one transaction: other replicas
 * serving meanwhile see the privileges before or after, never the moment between a REVOKE and its GRANT (their
 * queries would fail "permission denied").
 */
export async function grantAppPrivileges(owner: pg.ClientBase, role: string): Promise<void> {
  await owner.query('BEGIN');
  try {
    await grantInTransaction(owner, role);
    await owner.query('COMMIT');
  } catch (err) {
    await owner.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

async function grantInTransaction(owner: pg.ClientBase, role: string): Promise<void> {
  const r = ident(role);
  const db = (await owner.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
  await owner.query(`GRANT CONNECT, TEMPORARY ON DATABASE ${ident(db)} TO ${r}`);
  for (const schema of [...SERVICE_SCHEMAS, ...APPEND_ONLY_SCHEMAS]) {
    const s = ident(schema);
    const exists = await owner.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
    if (!exists.rowCount) continue;
    await owner.query(`REVOKE ALL ON ALL TABLES IN SCHEMA ${s} FROM ${r}`);
    await owner.query(`REVOKE ALL ON SCHEMA ${s} FROM ${r}`);
    await owner.query(`GRANT USAGE ON SCHEMA ${s} TO ${r}`);
    const tables = (APPEND_ONLY_SCHEMAS as readonly string[]).includes(schema)
      ? 'SELECT, INSERT'
      : 'SELECT, INSERT, UPDATE, DELETE';
    await owner.query(`GRANT ${tables} ON ALL TABLES IN SCHEMA ${s} TO ${r}`);
    await owner.query(`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ${s} TO ${r}`);
  }
  for (const table of APPEND_ONLY_TABLES) {
    const [schema, name] = table.split('.') as [string, string];
    const exists = await owner.query('SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2', [
      schema,
      name,
    ]);
    if (exists.rowCount) await owner.query(`REVOKE UPDATE, DELETE ON ${ident(schema)}.${ident(name)} FROM ${r}`);
  }
  for (const fn of SERVICE_FUNCTIONS) {
    const exists = await owner.query('SELECT to_regprocedure($1) IS NOT NULL AS ok', [fn]);
    if (exists.rows[0]?.ok) await owner.query(`GRANT EXECUTE ON FUNCTION ${fn} TO ${r}`);
  }
}

/**
 * What is wrong with the role a pool's sessions run as, for a warning at start (empty: nothing): a superuser, a
 * member of the roles that read or write server files or run programs, or the owner of Weft's tables (then it may
 * ALTER and DROP them). With an external DATABASE_URL this is how an operator learns the URL is too powerful.
 */
export async function appRoleProblems(client: pg.ClientBase | pg.Pool): Promise<string[]> {
  const { rows } = await client.query<{
    role: string;
    superuser: boolean;
    programs: boolean;
    files: boolean;
    owns: string[];
  }>(
    `
    SELECT current_user AS role,
           (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
           pg_has_role(current_user, 'pg_execute_server_program', 'USAGE') AS programs,
           pg_has_role(current_user, 'pg_write_server_files', 'USAGE') OR pg_has_role(current_user, 'pg_read_server_files', 'USAGE') AS files,
           ARRAY(SELECT DISTINCT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE pg_has_role(current_user, c.relowner, 'USAGE') AND n.nspname = ANY($1::text[])) AS owns`,
    [[...SERVICE_SCHEMAS, ...APPEND_ONLY_SCHEMAS]],
  );
  const row = rows[0]!;
  const out: string[] = [];
  if (row.superuser) out.push(`role ${row.role} is a superuser`);
  else {
    if (row.programs) out.push(`role ${row.role} may run programs on the database server (pg_execute_server_program)`);
    if (row.files)
      out.push(`role ${row.role} may read or write the database server's files (pg_read/write_server_files)`);
  }
  if (row.owns.length > 0)
    out.push(`role ${row.role} owns the tables of ${row.owns.join(', ')} (it may ALTER and DROP them)`);
  return out;
}

/** The user name of a PostgreSQL URL. */
export function userOf(url: string): string {
  return decodeURIComponent(new URL(url).username);
}
