import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/audit/store/schema.ts',
  out: './migrations/audit',
  schemaFilter: ['audit'],
  migrations: { schema: 'drizzle', table: 'audit_migrations' },
});
