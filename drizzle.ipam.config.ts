import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './services/ipam/store/schema.ts',
  out: './migrations/ipam',
  schemaFilter: ['ipam'],
  migrations: { schema: 'drizzle', table: 'ipam_migrations' },
});
