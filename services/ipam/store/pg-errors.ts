// The PostgreSQL error helpers are shared by every service's store; this keeps IPAM's imports as they are.
export { pgErrorOf, PG, type PgErrorInfo } from '../../../lib/db/pg-errors.js';
