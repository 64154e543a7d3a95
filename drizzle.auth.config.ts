import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/auth/store/schema.ts',
  out: './migrations/auth',
  schemaFilter: ['auth'],
  migrations: { schema: 'drizzle', table: 'auth_migrations' },
});
