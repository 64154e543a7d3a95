import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/routes/store/schema.ts',
  out: './migrations/routes',
  schemaFilter: ['routes'],
  migrations: { schema: 'drizzle', table: 'routes_migrations' },
});
