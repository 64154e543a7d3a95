-- Planner statistics for tables that grew fast: a new database's tables fill from nothing in minutes, and plans made
-- while they were empty (prepared statements keep theirs: lib/db/database.ts, preparedPool) read whole indexes per
-- request until ANALYZE runs, which also makes every session plan them again. Autovacuum analyzes a table after
-- 50 + 10% of its rows changed, but only at its next visit (autovacuum_naptime, a minute or more on a busy server).
-- The IPAM sweeper's leader calls this every few seconds (services/ipam/sweeper.ts): it analyzes each table of the
-- schema that holds at least 50 rows and twice the rows its statistics say (never analyzed: -1), so a table filling
-- from empty is analyzed at 50, 100, 200, ... rows and a table at steady size never by this. A table being vacuumed or
-- analyzed meanwhile is skipped until the next call. It runs as the owner (the services' role may not ANALYZE tables
-- it does not own) and touches nothing but the schema's statistics.
CREATE FUNCTION "ipam"."refresh_statistics"() RETURNS text[] LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  t regclass;
  done text[] := '{}';
BEGIN
  FOR t IN
    SELECT c.oid::regclass FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
    WHERE s.schemaname = 'ipam' AND c.relkind = 'r' AND s.n_live_tup >= 50 AND s.n_live_tup >= 2 * greatest(c.reltuples, 0)
    ORDER BY c.relname
  LOOP
    EXECUTE format('ANALYZE (SKIP_LOCKED) %s', t);
    done := done || t::text;
  END LOOP;
  RETURN done;
END $$;--> statement-breakpoint
REVOKE ALL ON FUNCTION "ipam"."refresh_statistics"() FROM PUBLIC;
