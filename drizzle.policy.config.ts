import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/policy/store/schema.ts',
  out: './migrations/policy',
  schemaFilter: ['policy'],
  migrations: { schema: 'drizzle', table: 'policy_migrations' },
});
