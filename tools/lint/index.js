// What the root eslint.config.js (and test/import-boundaries.test.ts) use, from this folder's own install
// (README.md says why it has one).
export { ESLint } from 'eslint';
export { defineConfig } from 'eslint/config';
export { default as js } from '@eslint/js';
export { default as globals } from 'globals';
export { default as tseslint } from 'typescript-eslint';
export { default as importX, createNodeResolver } from 'eslint-plugin-import-x';
export { default as prettierCompat } from 'eslint-config-prettier/flat';
